"""MLflow tracking through a background sink, so training never waits on the server.

Only the driver talks to MLflow. The run is created (or reopened) synchronously at start,
after the tracking URI was checked; from then on metrics, artifacts and the model go into
a queue that one thread drains in order, batching metrics into ``log_batch`` calls and
retrying with backoff while the server is unreachable. The client's own retries are set
low so a dead server costs seconds per attempt, not minutes.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Defaults for an impatient client; a user's own environment settings win.
_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
_MAX_BATCH = 1000
_PARENT_TAG = "mlflow.parentRunId"


def configure_client_env() -> None:
    for key, value in _CLIENT_ENV.items():
        os.environ.setdefault(key, value)


def client(uri: str):
    configure_client_env()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _transient(exc: Exception) -> bool:
    """Worth retrying: the server or store is unreachable or busy, not a rejected request."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(exc, OSError) or type(exc).__name__ == "OperationalError"


def ui_command(uri: str) -> str:
    """What to type to look at ``uri``: the ``mlflow`` next to this interpreter (the venv's)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    exe = Path(sys.executable).parent / "mlflow"
    if exe.exists():
        try:
            exe = exe.relative_to(Path.cwd())
        except ValueError:
            pass
    return f"{exe if exe.exists() else 'mlflow'} ui --backend-store-uri {uri}"


class Tracker:
    """One MLflow run. Every ``log_*`` call returns at once."""

    def __init__(self, uri: str, run_id: str, experiment_id: str, interval_s: float = 1.0):
        self.uri = uri
        self.interval_s = interval_s
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.client = client(uri)
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._wake = threading.Event()  # set by close(): cuts a retry backoff short
        self._closing = False
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._drain, name="mlflow-sink", daemon=True)
        self._thread.start()

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        uri: str,
        experiment: str,
        run_name: str | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> Tracker:
        """Create a run, or reopen ``run_id`` (resume)."""
        c = client(uri)
        if run_id is not None:
            run = c.get_run(run_id)
            c.update_run(run_id, status="RUNNING")
            return cls(uri, run_id, run.info.experiment_id)
        all_tags = dict(tags or {})
        if parent_run_id:  # a nested run lives in its parent's experiment
            all_tags[_PARENT_TAG] = parent_run_id
            experiment_id = c.get_run(parent_run_id).info.experiment_id
        else:
            exp = c.get_experiment_by_name(experiment)
            experiment_id = exp.experiment_id if exp is not None else c.create_experiment(experiment)
        run = c.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return cls(uri, run.info.run_id, experiment_id)

    # -- non-blocking logging ------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._queue.put(("call", lambda b=items[i : i + 100]: self.client.log_batch(self.run_id, params=b)))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._queue.put(("metrics", (dict(metrics), step, int(time.time() * 1000))))

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._queue.put(("call", lambda k=k, v=v: self.client.set_tag(self.run_id, k, v)))

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._queue.put(("call", lambda: self.client.log_artifact(self.run_id, path, artifact_path)))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._queue.put(("call", lambda: self.client.log_text(self.run_id, text, artifact_file)))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Uploads, then closes the matplotlib figure (pyplot keeps every open one alive)."""

        def upload() -> None:
            import matplotlib.pyplot as plt

            try:
                self.client.log_figure(self.run_id, figure, artifact_file)
            finally:
                plt.close(figure)

        self._queue.put(("call", upload))

    def log_torch_model(self, module: Any, artifact_path: str = "model") -> None:
        """An MLflow pytorch-flavour model under the run's artifacts; loads with mlflow.pytorch.load_model."""

        def upload() -> None:
            import mlflow.pytorch
            import torch

            # We choose pickle knowingly (it keeps ``adapt``); mlflow.pytorch warns about it on every save.
            logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, artifact_path)
                mlflow.pytorch.save_model(
                    module,
                    path,
                    serialization_format="pickle",  # keeps the class, so ``adapt`` survives loading
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                )
                self.client.log_artifacts(self.run_id, path, artifact_path)

        self._queue.put(("call", upload))

    # -- the sink thread -----------------------------------------------------------------
    def _send_metrics(self, batch: list[tuple[dict[str, float], int, int]]) -> None:
        """One ``log_batch`` per 1000 metrics, each retried alone so none is sent twice."""
        from mlflow.entities import Metric

        metrics = [Metric(k, float(v), ts, step) for values, step, ts in batch for k, v in values.items()]
        for i in range(0, len(metrics), _MAX_BATCH):
            part = metrics[i : i + _MAX_BATCH]
            self._with_retry(lambda p=part: self.client.log_batch(self.run_id, metrics=p), "log_batch")

    def _with_retry(self, action: Callable[[], None], what: str) -> None:
        delay = 0.5
        while True:
            try:
                action()
                return
            except Exception as exc:
                if not _transient(exc):
                    log.error("MLflow: %s failed and was dropped: %s", what, exc)
                    return
                if self._closing and time.monotonic() > self._deadline:
                    log.error("MLflow: giving up on %s at close: %s", what, exc)
                    return
                log.warning("MLflow: %s failed (%s); retrying in %.1fs", what, exc.__class__.__name__, delay)
                self._backoff(delay)
                delay = min(delay * 2, 10.0)

    def _backoff(self, delay: float) -> None:
        """Sleep ``delay`` seconds, but never past the close deadline (close() wakes the sink)."""
        end = time.monotonic() + delay
        self._wake.wait(delay)
        if self._closing:
            time.sleep(max(0.0, min(end, self._deadline) - time.monotonic()))

    def _collect(self) -> list[tuple[str, Any] | None]:
        """The next item, plus metrics arriving within ``interval_s`` (one ``log_batch`` for all)."""
        items = [self._queue.get()]
        until = time.monotonic() + self.interval_s
        while items[-1] is not None and items[-1][0] == "metrics" and not self._closing:
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            try:
                items.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        while True:  # and whatever else is already queued
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _drain(self) -> None:
        done = False
        while not done:
            metrics: list[tuple[dict[str, float], int, int]] = []
            for it in self._collect():
                if it is not None and it[0] == "metrics":
                    metrics.append(it[1])
                    continue
                if metrics:
                    self._send_metrics(metrics)
                    metrics = []
                if it is None:
                    done = True
                else:
                    self._with_retry(it[1], "call")
            if metrics:
                self._send_metrics(metrics)

    def flush(self, timeout: float = 120.0) -> None:
        """Wait until everything queued so far has been sent (or ``timeout`` passes)."""
        done = threading.Event()
        self._queue.put(("call", done.set))
        done.wait(timeout)

    def close(self, status: str = "FINISHED", timeout: float = 120.0) -> None:
        self._queue.put(("call", lambda: self.client.set_terminated(self.run_id, status=status)))
        self._deadline = time.monotonic() + timeout
        self._closing = True
        self._wake.set()
        self._queue.put(None)
        self._thread.join(timeout + 5)
