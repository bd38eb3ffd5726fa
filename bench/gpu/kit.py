"""Build ``.gpukit/``: the cp312 wheels a GPU machine without network needs to run metaorch.

The GPU machine has Python 3.12 with torch (CUDA) and torch's own dependencies, and nothing
else; at most 64 MiB of files travel to it with the working tree. So the kit holds exactly
what the tracking-off training path, the ``gpu`` tests and ``bench/gpu`` import, minus torch's
dependencies and minus MLflow (``tracking.uri: none`` never imports it, and full MLflow does
not fit beside Ray), plus a wheel of metaorch itself. ``check.sh`` installs it with
``pip install --no-index --no-deps --target``: nothing is resolved there, so the list below
is the resolution, made here; the build fails if a wheel in the kit requires something that is
neither in it, on the GPU machine, nor left out on purpose (``LEFT_OUT``).

Ray is repacked smaller, still a valid wheel (RECORD rewritten): without the Java workers'
jar, the dashboard's web client, the libraries metaorch never imports (RLlib, Data, Serve,
Tune, Train, LLM, AIR) and the symbol tables of its three native binaries. Even so the set is
74 MiB as PyPI compresses it (deflate), so the four largest wheels (ray, numpy, mujoco,
pillow) are recompressed with LZMA, a ZIP method that pip's installer reads through Python's
zipfile: 17 MiB less. The other wheels go as PyPI built them. The small Omniglot background
set travels too (``omniglot/``), for the Conv-4 bench. Over ``LIMIT`` in all, the build fails.

    python bench/gpu/kit.py [--out .gpukit]
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

LIMIT = 60 * 2**20

# name==version: the versions the test suite runs with here (.venv), so the GPU machine runs
# the same code. torch's own dependencies (filelock, typing-extensions, sympy, networkx,
# jinja2, fsspec) are already on the GPU machine; numpy is not one of them.
WHEELS = [
    # Ray core and the requirements of its wheel (ray[default]'s dashboard extras stay out)
    "ray==2.60.0", "click==8.5.1", "msgpack==1.2.4", "packaging==26.4", "protobuf==7.36.2", "pyyaml==6.0.4",
    "jsonschema==4.26.0", "attrs==26.1.0", "jsonschema-specifications==2025.9.1", "referencing==0.37.0",
    "rpds-py==2026.9.1", "requests==2.34.2", "certifi==2026.10.19.post1", "idna==3.21", "urllib3==2.8.0",
    "charset-normalizer==3.5.3",
    # metaorch's own imports on the tracking-off path
    "numpy==2.4.6", "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0",
    "typing-inspection==0.4.5", "tqdm==4.70.1",
    "pillow==13.0.0",  # Omniglot's PNGs (tasks.omniglot.images)
    "psutil==7.2.2", "nvidia-ml-py==13.615.71",  # system metrics (pynvml: the GPU's utilisation)
    # meta-RL environments: gymnasium's MuJoCo envs import mujoco, glfw and imageio; pyopengl
    # (rendering) stays out. mujoco 3.3.0 is the version metaworld pins (one wheel, no mujoco-core).
    "gymnasium==1.2.2", "cloudpickle==3.1.3", "farama-notifications==0.0.6",
    "mujoco==3.3.0", "glfw==2.11.0", "imageio==2.38.2",
    # the check itself: pytest, and the bench's baselines (higher; TorchOpt, pure Python, and optree)
    "pytest==9.2.0", "pluggy==1.7.0", "iniconfig==2.3.1", "pygments==2.21.0", "pytest-timeout==2.4.0",
    "higher==0.2.1", "torchopt==0.7.3", "optree==0.20.0", "graphviz==0.21",  # torchopt imports graphviz
]  # fmt: skip
# Requirements of the kit's wheels that it leaves out: the GPU machine's own (torch and its
# dependencies), or never imported on the check's path.
ON_MACHINE = {"torch", "filelock", "typing-extensions", "sympy", "networkx", "jinja2", "fsspec", "setuptools"}
LEFT_OUT = {
    "mlflow": "tracking.uri none imports no MLflow",
    "matplotlib": "plots are drawn only for MLflow runs' artifacts and regression previews (plot_tasks)",
    "metaworld": "imported only by the Meta-World task family, which the check does not run",
    "absl-py": "imported by MuJoCo's MJX and model tools, not by `import mujoco`",
    "etils": "imported by MuJoCo's MJX and model tools, not by `import mujoco`",
    "pyopengl": "MuJoCo's rendering",
}
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64"]
RAY_DROPPED = (
    "ray/jars/",  # ray_dist.jar, 32 MB: Java workers only
    "ray/dashboard/client/",  # the dashboard's web client
    "ray/rllib/", "ray/data/", "ray/serve/", "ray/tune/", "ray/train/", "ray/llm/", "ray/air/",
)  # fmt: skip
RAY_STRIPPED = ("ray/_raylet.so", "ray/core/src/ray/gcs/gcs_server", "ray/core/src/ray/raylet/raylet")
# wheel name prefix -> (paths dropped, binaries stripped); these are rewritten with LZMA
REPACKED = {"ray-": (RAY_DROPPED, RAY_STRIPPED), "numpy-": ((), ()), "mujoco-": ((), ()), "pillow-": ((), ())}
OMNIGLOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "omniglot"
OMNIGLOT_FILES = ("images_background_small1.zip", "LICENSE")


def download(dest: Path) -> None:
    """The pinned wheels for CPython 3.12 on x86-64 Linux, without resolving anything."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", *platforms,
           "--dest", str(dest), *WHEELS]  # fmt: skip
    subprocess.run(cmd, check=True)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _stripped(data: bytes) -> bytes:
    """The ELF file without its symbol tables (``strip --strip-unneeded``): what it runs is unchanged."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "elf"
        path.write_bytes(data)
        subprocess.run(["strip", "--strip-unneeded", str(path)], check=True)
        return path.read_bytes()


def repack(wheel: Path, out: Path, dropped: tuple[str, ...], stripped: tuple[str, ...]) -> None:
    """``wheel`` without the files under ``dropped``, ``stripped`` binaries stripped, RECORD
    rewritten, every member compressed with LZMA."""
    with zipfile.ZipFile(wheel) as src:
        record = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        rows = []
        with zipfile.ZipFile(out, "w", zipfile.ZIP_LZMA) as dst:
            for info in src.infolist():
                if info.filename == record or info.filename.startswith(dropped):
                    continue
                data = src.read(info)
                if info.filename in stripped:
                    data = _stripped(data)
                dst.writestr(info, data, compress_type=zipfile.ZIP_LZMA)
                if not info.is_dir():
                    rows.append([info.filename, _record_hash(data), str(len(data))])
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows([*rows, [record, "", ""]])
            dst.writestr(src.getinfo(record), text.getvalue(), compress_type=zipfile.ZIP_LZMA)


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def unmet(out: Path) -> list[str]:
    """Requirements of the kit's wheels (for CPython 3.12 on Linux, no extras) that neither the
    kit, the GPU machine nor ``LEFT_OUT`` accounts for: what ``pip install --no-deps`` would miss."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = default_environment() | {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
                                   "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}  # fmt: skip
    metadata = {}
    for wheel in out.glob("*.whl"):
        with zipfile.ZipFile(wheel) as z:
            text = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Name:"))
        metadata[_name(name)] = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    known = set(metadata) | ON_MACHINE | set(LEFT_OUT)
    return [f"{name} needs {req}" for name, reqs in sorted(metadata.items()) for req in map(Requirement, reqs)
            if (req.marker is None or req.marker.evaluate(env)) and _name(req.name) not in known]  # fmt: skip


def metaorch_wheel(dest: Path) -> Path:
    """A wheel of this source tree, as ``metaorch submit`` ships it."""
    from metaorch.orchestrator.packaging import source_wheel

    return source_wheel(dest)


def build(out: Path) -> int:
    """Fill ``out`` with the kit; returns its size in bytes."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        download(Path(tmp))
        for wheel in sorted(Path(tmp).glob("*.whl")):
            how = next((v for k, v in REPACKED.items() if wheel.name.startswith(k)), None)
            if how is not None:
                repack(wheel, out / wheel.name, *how)
            else:
                shutil.copy(wheel, out / wheel.name)
    metaorch_wheel(out)
    (out / "omniglot").mkdir()
    for name in OMNIGLOT_FILES:
        shutil.copy(OMNIGLOT / name, out / "omniglot" / name)
    files = sorted((f for f in out.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size, reverse=True)
    for f in files:
        print(f"{f.stat().st_size / 2**20:7.2f} MiB  {f.relative_to(out)}")
    total = sum(f.stat().st_size for f in files)
    print(f"{total / 2**20:7.2f} MiB  in all, {len(files)} files in {out} (limit {LIMIT / 2**20:.0f} MiB)")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / ".gpukit")
    out = ap.parse_args().out
    total = build(out)
    if total > LIMIT:
        sys.exit(f"the kit is {total / 2**20:.2f} MiB, over {LIMIT / 2**20:.0f} MiB")
    missing = unmet(out)
    if missing:
        sys.exit("the kit is incomplete:\n  " + "\n  ".join(missing))
    print("every requirement of the kit's wheels is in it, on the GPU machine (torch and its own), or left out on purpose:")
    for name, why in LEFT_OUT.items():
        print(f"  {name}: {why}")


if __name__ == "__main__":
    main()
