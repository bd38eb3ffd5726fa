"""metaorch: distributed meta-training on Ray, tracked in MLflow.

The project keeps its layers as top-level folders (``algorithms/``, ``tasks/``, ``workers/``,
``orchestrator/``); they install and import as subpackages of this one
(``metaorch.algorithms`` ...), so no generic top-level name lands in site-packages.
The Python API is the CLI's: ``from metaorch.orchestrator import load_config, train, evaluate``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("metaorch")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
