"""metaorch as a package to hand on: to a Ray job (the submitter's code, not the cluster's)
and to a fresh environment that loads a logged model (``metaorch==<version>`` from a wheel)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from metaorch.orchestrator.errors import UserError


def code_package(build_dir: str | Path) -> Path:
    """The metaorch package this process runs, as a directory for the job's ``py_modules``.

    The job must run the submitter's code, not whatever version the cluster's image holds.
    From a source tree (an editable install: the layers live in top-level folders) a wheel is
    built and unpacked into ``build_dir``, so the package travels laid out as it installs;
    an installed package is already laid out and travels as it is. It goes as a directory,
    not as the wheel: Ray installs a wheel with pip and would pull in all of its dependencies.
    """
    import metaorch
    import metaorch.algorithms

    package = Path(metaorch.__file__).parent
    if Path(metaorch.algorithms.__file__).parent.parent == package:
        return package
    unpacked = Path(build_dir) / "code"
    with zipfile.ZipFile(source_wheel(Path(build_dir) / "wheel")) as whl:
        whl.extractall(unpacked)
    return unpacked / "metaorch"


def source_wheel(wheel_dir: str | Path) -> Path:
    """A wheel of the source tree this process imports metaorch from (an editable install)."""
    import metaorch

    root = Path(metaorch.__file__).parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "--wheel-dir", str(wheel_dir), str(root)],
        capture_output=True, text=True,
    )  # fmt: skip
    built = sorted(Path(wheel_dir).glob(f"metaorch-{metaorch.__version__}-*.whl"))
    if proc.returncode != 0 or not built:
        raise UserError(f"building a wheel of {root} to ship with the job failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return built[-1]
