"""MLflow tracking end to end: a real ``mlflow server``, the sqlite store, and a dead server.

The server is the session's (sqlite backend, proxied local artifact store);
every check reads back through ``MlflowClient``, exactly what a user would see in the UI.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch
from torch import nn

from conftest import free_port, tiny_config
from metaorch.orchestrator.components import build_components
from metaorch.orchestrator.tracking import Tracker
from metaorch.tasks import descriptors

@pytest.fixture
def mlflow_server(mlflow_service) -> str:
    """The session's ``mlflow server`` (tests/conftest.py): its URL."""
    return mlflow_service.url


# -- helpers -------------------------------------------------------------------------------
def _artifact_paths(c, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of the run, recursively, as paths relative to the run's root."""
    out: set[str] = set()
    for info in c.list_artifacts(run_id, path):
        if info.is_dir:
            out |= _artifact_paths(c, run_id, info.path)
        else:
            out.add(info.path)
    return out


def _steps(c, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in c.get_metric_history(run_id, key))


def _check_run(url: str, config, result, *, full: bool) -> None:
    """What ``train`` must leave in the tracking store, read back through the public client."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(url)
    run = c.get_run(result.run_id)
    n = config.outer.iterations
    assert run.info.status == "FINISHED"

    params = run.data.params
    flat = config.flat()
    for key in ("algorithm.name", "outer.meta_batch", "outer.iterations", "workers.num_workers", "eval.val_every"):
        assert params[key] == str(flat[key]), key
    assert params["algorithm.name"] == config.algorithm.name
    assert params["outer.meta_batch"] == str(config.outer.meta_batch)

    history = c.get_metric_history(result.run_id, "train/loss_post")
    assert sorted(m.step for m in history) == list(range(1, n + 1))  # one value per iteration, none twice
    val_expected = sorted({s for s in range(1, n + 1) if s % config.eval.val_every == 0} | {n})
    assert _steps(c, result.run_id, "val/loss") == val_expected
    assert _steps(c, result.run_id, "time/train_s") == [n]

    files = _artifact_paths(c, result.run_id)
    assert {"config.yaml", "checkpoints/latest.pt"} <= files, files  # the model is a LoggedModel: _check_model
    assert f"checkpoints/ckpt_{n:08d}.pt" in files
    if full:
        assert "predictions.png" in files

    # The nested meta-test run.
    assert result.test_run_id is not None
    child = c.get_run(result.test_run_id)
    assert child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == result.run_id
    assert child.info.experiment_id == run.info.experiment_id
    for s in config.eval.steps:
        assert child.data.metrics[f"test/loss_step_{s}"] == pytest.approx(result.test[s].mean)
    assert sorted(m.step for m in c.get_metric_history(result.test_run_id, "test/loss")) == sorted(config.eval.steps)
    children = c.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert [r.info.run_id for r in children] == [result.test_run_id]


def _check_model(url: str, config, result, monkeypatch) -> None:
    """The logged model (a pyfunc from code) holds an nn.Module equal to the final meta-parameters, which adapts."""
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # what runs:/ URIs resolve against
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model").unwrap_python_model().model
    assert isinstance(model, nn.Module)

    family, learner = build_components(config)
    x = torch.linspace(-5, 5, 50).unsqueeze(-1)
    with torch.no_grad():
        expected = learner.model(learner.weights(result.meta_params), x)
        got = model(x)
    torch.testing.assert_close(got, expected)

    batch = family.batch(descriptors(config.seed, "test", 7, 1))
    sx, sy = batch["support_x"][0], batch["support_y"][0]
    adapted = model.adapt(sx, sy)
    assert isinstance(adapted, nn.Module)
    # The same inner loop as the learner's: adapted weights give the learner's adapted prediction.
    want = learner.model(learner.adapt(result.meta_params, sx, sy, config.algorithm.inner_steps), x).detach()
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), want, rtol=1e-4, atol=1e-5)
    # adapt must not touch the meta-initialisation.
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


# -- the tests -----------------------------------------------------------------------------
def test_train_logs_everything_to_a_tracking_server(mlflow_server, ray_session, workdir, monkeypatch):
    from metaorch.orchestrator.trainer import train

    config = tiny_config(
        outer={"iterations": 6},
        eval={"val_every": 3, "tasks": 10, "steps": [1, 5], "val_tasks": 4, "queries": 20, "plot_tasks": 2},
        checkpoint={"every": 3},
        tracking={"experiment": "server-roundtrip"},
    )
    result = train(config, tracking_uri=mlflow_server, progress=False)
    assert result.tracking_uri == mlflow_server
    assert result.iterations == 6
    _check_run(mlflow_server, config, result, full=True)

    from mlflow.tracking import MlflowClient

    files = _artifact_paths(MlflowClient(mlflow_server), result.run_id)
    assert "checkpoints/ckpt_00000003.pt" in files  # the intermediate checkpoint too
    _check_model(mlflow_server, config, result, monkeypatch)


def test_train_round_trip_with_default_sqlite_store(ray_session, empty_workdir, monkeypatch):
    from metaorch.orchestrator.trainer import train

    config = tiny_config(
        outer={"iterations": 4},
        eval={"val_every": 2, "tasks": 6, "steps": [1, 2], "val_tasks": 4, "queries": 10, "plot_tasks": 0},
        checkpoint={"every": 100},
    )
    assert config.tracking.uri == "sqlite:///mlflow.db"
    result = train(config, progress=False)
    # anchored to the directory it was started in: MLflow caches stores by URI string
    assert result.tracking_uri == f"sqlite:///{empty_workdir / 'mlflow.db'}"
    assert (empty_workdir / "mlflow.db").is_file()
    _check_run(result.tracking_uri, config, result, full=False)
    _check_model(result.tracking_uri, config, result, monkeypatch)


def test_evaluate_logs_a_nested_run_under_the_training_run(mlflow_server, ray_session, workdir):
    """``metaorch eval RUN_ID`` as an API call: fresh tasks, any step counts, a child run."""
    from mlflow.tracking import MlflowClient

    from metaorch.orchestrator.trainer import evaluate, train

    config = tiny_config(outer={"iterations": 6}, eval={"at_end": False, "plot_tasks": 0})
    trained = train(config, tracking_uri=mlflow_server, progress=False)
    result = evaluate(trained.run_id, tasks=30, steps=[0, 1, 3], tracking_uri=mlflow_server)
    assert sorted(result.estimates) == [0, 1, 3]
    assert all(e.n == 30 and e.ci95 > 0 for e in result.estimates.values())
    assert result.estimates[3].mean < result.estimates[0].mean  # adapting helps

    child = MlflowClient(mlflow_server).get_run(result.run_id)
    assert child.data.tags["mlflow.parentRunId"] == trained.run_id
    assert child.data.metrics["test/loss_step_1"] == pytest.approx(result.estimates[1].mean)
    assert child.data.params["tasks"] == "30"
    # the checkpoint file gives the same answer: the test tasks depend only on the seed
    again = evaluate(str(trained.checkpoint), tasks=30, steps=[1], tracking_uri=mlflow_server)
    assert again.estimates[1] == result.estimates[1]


def test_sink_never_blocks_training(workdir):
    """Training's ``log_*`` calls return while the sink is stuck in a slow upload.

    The proof is causal, not a stopwatch: the sink thread is held inside ``savefig`` of a
    real matplotlib figure until the test releases it, so any call that waited for the
    writer would hang the test (and nothing can have been written meanwhile).
    """
    import threading

    from matplotlib.figure import Figure
    from mlflow.tracking import MlflowClient

    release, uploading = threading.Event(), threading.Event()

    class SlowFigure(Figure):
        def savefig(self, *args, **kwargs):
            uploading.set()
            assert release.wait(120), "the test never released the upload"
            return super().savefig(*args, **kwargs)

    uri = f"sqlite:///{workdir / 'sink.db'}"
    tracker = Tracker.start(uri, "sink")
    tracker.log_figure(SlowFigure(), "slow.png")
    assert uploading.wait(60), "the sink never started the upload"
    n = 10_000
    for step in range(n):
        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    c = MlflowClient(uri)
    assert c.get_metric_history(tracker.run_id, "loss") == []  # all n calls returned, none written
    assert not tracker.delivered(timeout=0.5)  # a Tune trial's wait before it reports: bounded
    release.set()
    assert tracker.delivered(timeout=60)  # everything logged before it is in the store, run still open
    assert sorted(m.step for m in c.get_metric_history(tracker.run_id, "loss")) == list(range(n))
    tracker.close(timeout=60)
    assert not tracker._thread.is_alive()

    history = c.get_metric_history(tracker.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(n))
    assert {m.step: m.value for m in history}[9] == pytest.approx(0.1)
    assert "slow.png" in [a.path for a in c.list_artifacts(tracker.run_id)]
    assert c.get_run(tracker.run_id).info.status == "FINISHED"


def test_dead_server_never_blocks_logging_and_close_is_bounded(caplog, tmp_path):
    import mlflow.tracking  # noqa: F401  (time the client, not the first import of mlflow)

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    tracker = Tracker(url, run_id="0" * 32, experiment_id="0", spill_dir=tmp_path / "spill")  # not /tmp's own
    assert time.perf_counter() - t0 < 2.0  # building the client does not talk to the server

    t0 = time.perf_counter()
    tracker.log_params({"a": 1, "b": "two"})
    tracker.set_tags({"k": "v"})
    tracker.log_text("hello", "notes.txt")
    for step in range(5_000):
        tracker.log_metrics({"loss": float(step), "acc": 0.5}, step=step)
    elapsed = time.perf_counter() - t0
    # A caller that waited for the sink would sit through its backoff (0.5 + 1 + 2 + 4 s) on
    # the first call alone; 2 s leaves room for a loaded CI machine (5,000 puts take ~0.1 s).
    assert elapsed < 2.0, f"logging against a dead server took {elapsed:.3f}s"

    # Let the sink get into a long backoff (0.5, 1, 2, then 4 s) before closing.
    deadline = time.monotonic() + 30
    while not any("retrying in 4.0s" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the sink never retried against the dead server"
        time.sleep(0.05)
    t0 = time.perf_counter()
    tracker.close(timeout=2)
    closed_in = time.perf_counter() - t0
    # close() cuts the backoff short: timeout plus one failed attempt, not the rest of the sleep.
    assert closed_in < 3.5, f"close(timeout=2) took {closed_in:.1f}s"
    assert not tracker._thread.is_alive(), "the sink thread outlived close()"
    assert any("giving up" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "spill" / "undelivered.jsonl").is_file()  # kept for the user to replay


class SilencingProxy:
    """A TCP proxy on 127.0.0.1 to ``port``; after ``silence()`` it still accepts connections,
    and reads what it is sent, but never answers again (a hung server, not a dead one)."""

    def __init__(self, port: int):
        self.target = port
        self.silent = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            self.sockets.append(conn)
            if self.silent.is_set():
                threading.Thread(target=self._pipe, args=(conn, None), daemon=True).start()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.sockets.append(upstream)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket | None) -> None:
        try:
            while data := src.recv(65536):
                if dst is not None and not self.silent.is_set():
                    dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()
        for s in self.sockets:
            s.close()


def test_a_server_that_stops_answering_does_not_stall_training(mlflow_server, ray_session, workdir, monkeypatch):
    """The server hangs (connections accepted, no reply) once the first checkpoint is written:
    training goes on at its own pace, the run ends within ``CLOSE_TIMEOUT_S`` of its last
    iteration, and what never arrived is left in the spill directory."""
    from metaorch.orchestrator import tracking
    from metaorch.orchestrator.trainer import train

    close_s = 5.0
    monkeypatch.setattr(tracking, "CLOSE_TIMEOUT_S", close_s)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")  # a hung request gives up sooner (default here: 10 s)
    proxy = SilencingProxy(int(mlflow_server.rsplit(":", 1)[1]))
    n, every = 40, 10

    def silence_at_first_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while not list(workdir.glob(f"checkpoints/*/ckpt_{every:08d}.pt")) and time.monotonic() < deadline:
            time.sleep(0.05)
        proxy.silence_at = time.monotonic()
        proxy.silent.set()

    watcher = threading.Thread(target=silence_at_first_checkpoint, daemon=True)
    watcher.start()
    config = tiny_config(outer={"iterations": n}, eval={"at_end": False, "plot_tasks": 0, "val_every": 5}, checkpoint={"every": every})
    try:
        result = train(config, tracking_uri=proxy.url, progress=False)
        returned_at = time.monotonic()
    finally:
        proxy.close()
    watcher.join(5)
    assert proxy.silent.is_set() and result.iterations == n
    # Each of the ~30 silent iterations logs; a caller that waited for the server would sit
    # through the request timeout each time. Close gives up after close_s (+5 s join).
    assert returned_at - proxy.silence_at < close_s + 5 + 30, f"{returned_at - proxy.silence_at:.0f}s after the server hung"
    undelivered = workdir / "checkpoints" / result.run_id / "tracking-spill" / "undelivered.jsonl"
    deadline = time.monotonic() + 60  # written once the sink's hung request times out
    while not undelivered.exists():
        assert time.monotonic() < deadline, "what never reached the server was not kept on disk"
        time.sleep(0.2)
    time.sleep(0.5)
    steps = {int(line.split(",")[-2]) for line in undelivered.read_text().splitlines() if line.strip()}
    assert n in steps, sorted(steps)[-5:]
