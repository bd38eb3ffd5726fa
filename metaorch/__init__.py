"""metaorch: distributed meta-training on Ray, tracked in MLflow.

The project keeps its layers as top-level folders (``algorithms/``, ``tasks/``, ``workers/``,
``orchestrator/``); they install and import as subpackages of this one
(``metaorch.algorithms`` ...), so no generic top-level name lands in site-packages.
The Python API is the CLI's: ``from metaorch.orchestrator import load_config, train, evaluate``.
"""

import importlib
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("metaorch")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A package's module ``__getattr__`` that imports ``package.<module>`` when one of the names it
    exports (name -> module) is first used: the packages stay importable without torch, so
    ``metaorch config show`` and a refused config answer without loading it."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
