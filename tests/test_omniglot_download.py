"""``data.download``: the small Omniglot archives from a real HTTP server on 127.0.0.1 (a mirror of
the original repository's ``python/`` folder), checked against the SHA-256 digests in the code."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import OMNIGLOT_SMALL, omniglot_root
from metaorch.orchestrator import cli
from metaorch.tasks import descriptors
from metaorch.tasks.omniglot import DatasetError, OmniglotTasks
from metaorch.tasks.omniglot.download import SHA256, URL_ENV, ensure_archives, fetch

ZIPS = [f"{name}.zip" for name in OMNIGLOT_SMALL]


class Mirror:
    """``good/`` holds the two small archives as published; ``corrupt/`` the same with one byte of
    the second flipped. ``requests`` lists every path asked for."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, format: str, *args) -> None:
                requests.append(self.path)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    shared = omniglot_root()
    root = tmp_path_factory.mktemp("mirror")
    for folder in ("good", "corrupt"):
        (root / folder).mkdir()
        for name in ZIPS:
            shutil.copy(shared / name, root / folder / name)
    bad = root / "corrupt" / ZIPS[1]
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    served = Mirror(root)
    yield served
    served.server.shutdown()
    served.server.server_close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_recorded_digests_are_the_shared_archives():
    shared = omniglot_root()
    assert {name: sha256(shared / name) for name in ZIPS} == SHA256


def test_downloads_verified_archives_once_and_trains_on_them(mirror, tmp_path, monkeypatch, omniglot_cache):
    """From the mirror named by the environment variable; the episodes equal those of ../shared."""
    monkeypatch.setenv(URL_ENV, f"{mirror.url}/good")
    before = len(mirror.requests)
    root = tmp_path / "data"
    family = OmniglotTasks(root, ways=5, shots=1, queries=2, download=True, cache_dir=omniglot_cache)
    tasks = descriptors(0, "train", 0, 3)
    got = family.batch(tasks)
    assert sorted(mirror.requests[before:]) == [f"/good/{name}" for name in ZIPS]
    assert sorted(p.name for p in root.iterdir()) == ZIPS  # no temp file left
    assert {name: sha256(root / name) for name in ZIPS} == SHA256
    want = OmniglotTasks(omniglot_root(), ways=5, shots=1, queries=2, cache_dir=omniglot_cache).batch(tasks)
    for key in want:
        assert np.array_equal(got[key].numpy(), want[key].numpy()), key

    assert ensure_archives(root) == [] and OmniglotTasks(root, download=True, cache_dir=omniglot_cache).data is not None
    (root / ZIPS[0]).rename(root / "kept.zip")
    assert ensure_archives(root) == [root / ZIPS[0]]  # only the missing one
    assert len(mirror.requests) == before + 3


def test_root_defaults_to_the_cache_directory(tmp_path):
    assert OmniglotTasks(cache_dir=tmp_path / "c", download=True).root == tmp_path / "c"


def test_present_full_set_or_unrecorded_digest_fetches_nothing(mirror, tmp_path):
    for name in ("images_background", "images_evaluation"):
        (tmp_path / name).mkdir()
    before = len(mirror.requests)
    assert ensure_archives(tmp_path, f"{mirror.url}/good") == []
    with pytest.raises(DatasetError, match="no SHA-256 is recorded for images_background.zip"):
        fetch("images_background.zip", tmp_path, f"{mirror.url}/good")
    assert len(mirror.requests) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images_background", "images_evaluation"]


def test_corrupt_download_is_refused_by_the_cli(mirror, tmp_path, monkeypatch, capsys):
    """``metaorch train``: exit 2 and one line naming the URL and the digest; the good archive is
    kept whole, the corrupt one leaves nothing (not even a temp file) behind."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    config = {
        "task": {"name": "omniglot", "ways": 5, "shots": 1, "queries": 2},
        "algorithm": {"name": "protonet"},
        "data": {"download": True, "url": f"{mirror.url}/corrupt/", "cache_dir": str(data)},
        "eval": {"queries": 2},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "job.yaml"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("metaorch: error: data.download:"), err
    assert f"{mirror.url}/corrupt/{ZIPS[1]} has SHA-256" in err and SHA256[ZIPS[1]] in err and "refused" in err, err
    assert sorted(p.name for p in data.iterdir()) == [ZIPS[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "job.yaml"]  # no mlflow.db, no checkpoints
