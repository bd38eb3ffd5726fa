"""Omniglot: few-shot classification episodes and the one-shot runs of Lake et al.

Works from any directory holding the Omniglot archives (full or small background sets,
zipped or extracted), or downloads the small sets (``download``); the decoded images are
cached once, memory-mapped by the driver and shipped to workers through Ray's object store.
"""

from __future__ import annotations

from metaorch.tasks.omniglot.data import OmniglotData, data_root, default_cache_dir, load_omniglot
from metaorch.tasks.omniglot.download import ensure_archives
from metaorch.tasks.omniglot.episodes import Episode, OmniglotTasks
from metaorch.tasks.omniglot.errors import DatasetError
from metaorch.tasks.omniglot.images import preprocess_png, to_float
from metaorch.tasks.omniglot.runs import OneShotRun, read_runs, write_runs
from metaorch.tasks.omniglot.splits import SplitSpec, split_alphabets, split_characters

__all__ = [
    "DatasetError",
    "Episode",
    "OmniglotData",
    "OmniglotTasks",
    "OneShotRun",
    "SplitSpec",
    "data_root",
    "default_cache_dir",
    "ensure_archives",
    "load_omniglot",
    "preprocess_png",
    "read_runs",
    "split_alphabets",
    "split_characters",
    "to_float",
    "write_runs",
]
