"""Fetching the Omniglot archives from the original repository, as torchvision and learn2learn do.

``data.download: true`` puts the small background sets into the data directory when they are
missing. A download is trusted only if its SHA-256 equals a digest recorded here; it is
written to a temp file beside its final name, checked, and renamed into place, so a failed or
refused download leaves nothing behind and a present file is never fetched again.

The digests are those of the files published in brendenlake/omniglot (``python/``), whose git
blobs match the copies these digests were computed from. The full set (images_background.zip,
images_evaluation.zip) has no digest here: no copy of it was at hand to compute one, and a
file whose digest is not recorded is refused rather than trusted. Put the full set into the
data directory by hand; it is used whenever both of its archives are there.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request
from pathlib import Path
from typing import BinaryIO

from metaorch.tasks.omniglot.archives import FULL, SMALL
from metaorch.tasks.omniglot.data import atomic_write
from metaorch.tasks.omniglot.errors import DatasetError

BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
URL_ENV = "METAORCH_OMNIGLOT_URL"  # a mirror for air-gapped machines (``data.url`` wins over it)
SHA256 = {
    "images_background_small1.zip": "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    "images_background_small2.zip": "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
}
TIMEOUT_S = 60.0


def base_url(url: str | None = None) -> str:
    """``url``, else ``$METAORCH_OMNIGLOT_URL``, else the original repository's."""
    return (url or os.environ.get(URL_ENV) or BASE_URL).rstrip("/")


def _present(root: Path, name: str) -> bool:
    return (root / f"{name}.zip").is_file() or (root / name).is_dir()


def ensure_archives(root: str | Path, url: str | None = None) -> list[Path]:
    """Downloads the small sets missing from ``root`` (nothing when the full set is there); the new files."""
    root = Path(root).expanduser()
    if all(_present(root, name) for name in FULL):
        return []
    missing = [name for name in SMALL if not _present(root, name)]
    if missing:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DatasetError(f"cannot create {root} for the Omniglot download ({err})") from err
    return [fetch(f"{name}.zip", root, url) for name in missing]


def fetch(filename: str, root: Path, url: str | None = None) -> Path:
    """``<base url>/<filename>`` into ``root/filename``, only if its SHA-256 is the recorded one."""
    want = SHA256.get(filename)
    source = f"{base_url(url)}/{filename}"
    if want is None:
        raise DatasetError(f"no SHA-256 is recorded for {filename}, so it is not downloaded from {source}; "
                           f"put it into {root} by hand (downloadable: {', '.join(sorted(SHA256))})")
    target = root / filename

    def write(out: BinaryIO) -> None:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(source, timeout=TIMEOUT_S) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError; ValueError: a malformed URL
            raise DatasetError(f"cannot download {source} ({err}); nothing written to {root}") from err
        if digest.hexdigest() != want:
            raise DatasetError(f"{source} has SHA-256 {digest.hexdigest()}, not the recorded {want}: refused, "
                               f"nothing written to {root}")

    try:
        atomic_write(target, write)
    except OSError as err:
        raise DatasetError(f"cannot write {target} ({err})") from err
    return target
