"""One real local Ray instance per test session; every test works in its own directory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402

from metaorch.orchestrator.config import Config, deep_merge, from_dict  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # One logical GPU so placement can be checked on CPU-only machines. address="local": a
    # private instance even when a `ray start` cluster runs on this machine (ray.init() would join it).
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
OMNIGLOT_SMALL = ("images_background_small1", "images_background_small2")


def omniglot_root() -> Path:
    """The Omniglot small sets in ``../shared``. Missing, a test skips on a developer's machine
    but fails where ``CI`` is set: a CI run must not pass by skipping the real-data tests."""
    if not all((OMNIGLOT / f"{name}.zip").is_file() for name in OMNIGLOT_SMALL):
        message = f"Omniglot small sets not found in {OMNIGLOT} (expected {' and '.join(n + '.zip' for n in OMNIGLOT_SMALL)})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set, so this is an error, not a skip")
        pytest.skip(message)
    return OMNIGLOT


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory) -> Path:
    """One preprocessed-array cache for every Omniglot run of the session."""
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture
def no_ray_start(monkeypatch):
    """Starting or joining Ray fails the test: bad input must be refused before Ray starts.

    ``is_initialized`` reads False, so code that would reuse the session's instance calls
    ``init`` (and fails) too; checking afterwards could not see an instance already shut down.
    """
    import ray
    import ray._private.worker

    def refuse(*args, **kwargs):
        pytest.fail("Ray was started for bad input")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray._private.worker, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)


def no_ray_env(ray_tmp: Path) -> dict[str, str]:
    """Environment for a CLI subprocess under which any Ray it starts leaves ``ray_tmp/ray/session_*``."""
    return {"RAY_TMPDIR": str(ray_tmp)}


def assert_no_ray_started(ray_tmp: Path) -> None:
    """After a subprocess run with :func:`no_ray_env`: no Ray instance was started."""
    started = sorted(p.name for p in ray_tmp.glob("ray/session_*"))
    assert not started, f"Ray was started for bad input: {started}"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a fresh directory so mlflow.db and checkpoints/ never leak between tests."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_config(**sections) -> Config:
    """A few-second sinusoid job; sections override the defaults, e.g. outer={"iterations": 5}."""
    base = {
        "outer": {"iterations": 20, "meta_batch": 8},
        "workers": {"num_workers": 2, "num_cpus": 0.5, "chunk_size": 2},
        "eval": {"tasks": 20, "steps": [1, 5], "val_every": 10, "val_tasks": 10, "plot_tasks": 2},
        "checkpoint": {"every": 10},
    }
    return from_dict(deep_merge(base, sections), "(test)")


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on every interface (Ray's agents bind more than loopback)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))  # all held at once, so they differ
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def answers(url: str) -> bool:
    """Whether ``url`` answers HTTP 200 within 2 s (a server's health or version endpoint)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with its own sqlite store and proxied artifacts
    under ``root``; it can be stopped and started again on the same port (an outage)."""

    def __init__(self, root: Path, port: int | None = None, env: dict[str, str] | None = None):
        self.root, self.port = root, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        # The job runner (7 background consumer processes) is for GenAI features this project
        # never uses; without it the server starts faster and leaves the 2 CPUs to training.
        self.env = {**(os.environ if env is None else env), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc: subprocess.Popen | None = None

    def launch(self) -> None:
        """Start the process without waiting for it (to start other services alongside)."""
        here = Path(sys.executable).parent / "mlflow"
        exe = str(here) if here.is_file() else shutil.which("mlflow")
        if exe is None:
            pytest.fail("no mlflow executable next to the interpreter or on PATH")
        cmd = [exe, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts"]  # fmt: skip
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.root, env=self.env, start_new_session=True)  # fmt: skip

    def healthy(self) -> bool:
        """Whether it answers; fails the test if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {self.proc.returncode}:\n{self.log.read_text(errors='replace')[-3000:]}")
        return answers(self.url + "/health")

    def start(self, timeout_s: float = 120) -> MlflowServer:
        self.launch()
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {timeout_s:.0f}s:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None
