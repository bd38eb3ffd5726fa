"""One real local Ray instance per test session; every test works in its own directory."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402

from orchestrator.config import Config, from_dict  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # One logical GPU so placement can be checked on CPU-only machines. address="local": a
    # private instance even when a `ray start` cluster runs on this machine (ray.init() would join it).
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


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
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values} if isinstance(values, dict) else values
    return from_dict(base, "(test)")


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
