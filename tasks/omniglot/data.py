"""Omniglot preprocessed once into a memory-mapped cache.

Decoding 32k PNGs takes seconds, so the decoded array is written once as a .npy keyed by the
archives' contents and then mapped read-only. The driver reads it and ships it to the workers
through Ray's object store (one put; :meth:`OmniglotData.__reduce__`), so worker nodes need
neither the archives nor the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from metaorch.tasks.omniglot.archives import DRAWINGS, Source, characters, find_archives
from metaorch.tasks.omniglot.images import SIZE, preprocess_png

# Part of the cache key: bump it when preprocessing changes so old caches are not reused.
CACHE_VERSION = 1


@dataclass(frozen=True)
class OmniglotData:
    images: np.ndarray  # uint8 [characters, 20, 28, 28], 0 ink, 255 paper; a read-only memmap of the cache
    alphabets: list[str]
    char_alphabet: np.ndarray  # int64 [characters]: index into ``alphabets``
    char_names: list[str]  # "Greek/character05"
    source: Source
    key: str
    path: Path | None  # the cache file; None if it could not be written, or received through Ray

    def __reduce__(self) -> tuple:
        """Pickled (one ``ray.put`` by the driver): the images as a plain array, which Ray's pickle 5 sends
        out of band and every worker of a node reads zero-copy (read-only) from its shared copy; a memmap
        would travel in band and arrive as a private copy. The cache file stays behind."""
        return OmniglotData, (np.asarray(self.images), self.alphabets, self.char_alphabet, self.char_names, self.source, self.key, None)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metaorch" / "omniglot"


def data_root(root: str | Path | None, cache_dir: str | Path | None = None) -> Path:
    """Where the archives are: ``root``, else the cache directory, where ``data.download`` puts them."""
    if root is not None:
        return Path(root).expanduser()
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def load_omniglot(root: str | Path, cache_dir: str | Path | None = None) -> OmniglotData:
    """The data under ``root``, from the cache if a valid one exists, else built and cached."""
    source, archives = find_archives(root)
    try:
        fingerprints = [[a.name, "zip" if a.is_zip else "folder", a.fingerprint()] for a in archives]
        key = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "archives": fingerprints}).encode()).hexdigest()
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        npy = cache / f"omniglot-{source}-{key[:16]}.npy"
        cached = _open_cache(npy, key)
        if cached is not None:
            return cached
        chars = characters(source, archives)
        images = np.empty((len(chars), DRAWINGS, SIZE, SIZE), dtype=np.uint8)
        for i, char in enumerate(chars):
            for j, member in enumerate(char.drawings):
                images[i, j] = preprocess_png(char.archive.read(member), name=char.archive.describe(member))
    finally:
        for a in archives:
            a.close()
    alphabets = list(dict.fromkeys(c.alphabet for c in chars))
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "source": source,
        "archives": [str(a.path) for a in archives],
        "alphabets": alphabets,
        "char_names": [c.full_name for c in chars],
        "shape": list(images.shape),
        "sha256": hashlib.sha256(memoryview(images).cast("B")).hexdigest(),
    }
    try:
        _write_cache(npy, images, meta)
    except OSError as err:
        warnings.warn(f"cannot write the Omniglot cache in {cache} ({err}); keeping it in memory", stacklevel=2)
        images.flags.writeable = False
        return _data(images, meta, None)
    reopened = _open_cache(npy, key)
    if reopened is None:  # another process replaced it with something unreadable; ours is still right
        images.flags.writeable = False
        return _data(images, meta, None)
    return reopened


def _data(images: np.ndarray, meta: dict, path: Path | None) -> OmniglotData:
    alphabets = list(meta["alphabets"])
    index = {name: i for i, name in enumerate(alphabets)}
    names = list(meta["char_names"])
    char_alphabet = np.array([index[n.split("/", 1)[0]] for n in names], dtype=np.int64)
    return OmniglotData(images, alphabets, char_alphabet, names, meta["source"], meta["key"], path)


def _open_cache(npy: Path, key: str) -> OmniglotData | None:
    """The cache if its sidecar matches the key and its array its checksum; None means rebuild."""
    sidecar = npy.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        if meta.get("key") != key or meta.get("version") != CACHE_VERSION:
            return None
        images = np.load(npy, mmap_mode="r", allow_pickle=False)
        shape = (len(meta["char_names"]), DRAWINGS, SIZE, SIZE)
        if images.dtype != np.uint8 or images.shape != shape or list(shape) != meta["shape"]:
            return None
        if hashlib.sha256(memoryview(images).cast("B")).hexdigest() != meta["sha256"]:
            return None
        return _data(images, meta, npy)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_cache(npy: Path, images: np.ndarray, meta: dict) -> None:
    """Array first, sidecar last, each via a temp file and ``os.replace``: a reader never sees
    half a file, and concurrent builders just replace identical content."""
    npy.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(npy, lambda f: np.save(f, images, allow_pickle=False))
    atomic_write(npy.with_suffix(".json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write`` into a temp file beside ``path``, then ``os.replace``: readers see the old file or the
    whole new one, and an exception in ``write`` (a failed check) leaves nothing behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
