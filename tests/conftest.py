"""Session fixtures: one real local Ray instance, and one `ray start` head and one MLflow server
for the tests that need them; every test works in its own directory."""

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
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402

from metaorch.orchestrator.config import Config, deep_merge, from_dict  # noqa: E402


# The costliest files, costliest first (CPU seconds in a full run, bench/suite_cpu.py), then
# the rest in file order: `make test` hands each pytest process whole files in collection order
# (--dist loadfile --no-loadscope-reorder), so a long file handed out last would run alone at the end.
LONGEST_FIRST = (
    "test_omniglot_sequence_training.py",  # 640
    "test_orchestration.py",  # 340
    "test_omniglot_training.py",  # 240
    "test_faults.py",  # 210
    "test_jobs.py",  # 190
    "test_rl_training.py",  # 150
    "test_metaworld.py",  # 130
    "test_model_package.py",  # 110
    "test_placement.py",  # 110
    "test_reproducibility.py",  # 110
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise


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


@pytest.fixture(scope="module")
def omniglot_runs(ray_session, omniglot_cache, tmp_path_factory):
    """``omniglot_runs(method)``: the Omniglot learning tests' config and run of ``method``
    (tests/omniglot_learning.py), each trained once per test module."""
    from omniglot_learning import trainer

    omniglot_root()
    return trainer(tmp_path_factory.mktemp("omniglot-runs"), omniglot_cache)


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


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """An empty sqlite MLflow store with MLflow's schema migrations already applied: creating
    one costs ~2-3 CPU-s (alembic runs every migration), a copy ~0.07."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("migrated-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch, migrated_store):
    """Run in a fresh directory so mlflow.db and checkpoints/ never leak between tests. It holds
    an empty, already migrated ``mlflow.db`` (the default store); :func:`empty_workdir` does not."""
    shutil.copyfile(migrated_store, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def empty_workdir(tmp_path, monkeypatch):
    """A fresh, empty working directory: for tests that check what a run creates, or that bad
    input creates nothing."""
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


@pytest.fixture(scope="session")
def mlflow_service(tmp_path_factory) -> MlflowServer:
    """One ``mlflow server`` for every test of the session that only adds runs to it and reads them
    back (runs have their own ids; a test that stops its server starts one of its own)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-service"))
    try:
        yield server.start()
    finally:
        server.stop()


def user_pids(match) -> list[int]:
    """This user's processes, other than this one, whose command line ``match`` accepts."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid == os.getuid() and match((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")):
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return found


def stop_group(proc: subprocess.Popen, marker: str | None = None) -> None:
    """SIGTERM the process group, SIGKILL what is left; then any process naming ``marker``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if marker:  # Ray's own processes (raylet, agents, workers) that left the group
        for pid in user_pids(lambda cmd: marker in cmd):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass(frozen=True)
class RayHead:
    address: str  # the GCS, for ``--address`` / ``ray.init``
    job_api: str  # the dashboard's job API, for ``metaorch submit``
    temp_dir: Path  # its session_latest/logs hold its workers' logs
    env: dict[str, str]  # for CLI subprocesses: this environment's executables, no RAY_ADDRESS or tracking URI


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory) -> RayHead:
    """One ``ray start --head`` on 127.0.0.1 (2 CPUs, job API on, its own temp dir and free ports)
    for every test of the session that joins or submits to a running cluster; stopped at the end."""
    root = tmp_path_factory.mktemp("ray-head")
    gcs, dash, agent, client = free_ports(4)
    temp_dir = Path(f"/tmp/ray-mt-{gcs}")  # short: Ray's socket paths must fit in 107 bytes
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"  # a job's `metaorch` is this environment's
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    log = root / "head.log"
    job_api = f"http://127.0.0.1:{dash}"
    with open(log, "wb") as out:
        head = subprocess.Popen(
            [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--port={gcs}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
             f"--ray-client-server-port={client}", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ("Ray runtime started" in log.read_text(errors="replace") and answers(f"{job_api}/api/version")):
            assert head.poll() is None, f"ray start exited:\n{log.read_text(errors='replace')[-3000:]}"
            assert time.monotonic() < deadline, f"not up after 120s:\n{log.read_text(errors='replace')[-2000:]}"
            time.sleep(0.5)
        yield RayHead(f"127.0.0.1:{gcs}", job_api, temp_dir, env)
    finally:
        stop_group(head, str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
