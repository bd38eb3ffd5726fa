"""MLflow tracking through a background sink, so training never waits on the server.

Only the driver talks to MLflow. The run is created (or reopened) synchronously at start,
after the tracking URI was checked; from then on metrics, artifacts and the model go into
a queue that one thread drains in order, batching metrics into ``log_batch`` calls and
retrying with backoff while the server is unreachable. The client's own retries are set
low so a dead server costs seconds per attempt, not minutes.

While the server is down the sink keeps taking items off the queue into its own ordered
buffer; past ``buffer_max`` metric steps in memory it writes runs of them to JSON-lines
files (``spill_dir``) and reads them back, in order, once the server answers again. A
retried ``log_batch`` is harmless: a metric keeps the timestamp of its ``log_metrics``
call, and the store ignores a (key, step, timestamp, value) it already has. What is still
undelivered when ``close`` gives up is left in ``spill_dir/undelivered.jsonl``.
"""

from __future__ import annotations

import json
import logging
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metaorch.orchestrator.mlflow_client import client, experiment_for

log = logging.getLogger(__name__)

_MAX_BATCH = 1000
# How long ``close`` goes on delivering to an unreachable or silent server before it leaves the
# rest on disk: the longest a run's end waits on tracking.
CLOSE_TIMEOUT_S = 120.0
_PARENT_TAG = "mlflow.parentRunId"


def _transient(exc: Exception) -> bool:
    """Worth retrying: the server or store is unreachable or busy, not a rejected request."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(exc, OSError) or type(exc).__name__ == "OperationalError"


class Tracker:
    """One MLflow run. Every ``log_*`` call returns at once."""

    def __init__(
        self,
        uri: str,
        run_id: str,
        experiment_id: str,
        interval_s: float = 1.0,
        buffer_max: int = 10_000,
        spill_dir: str | Path | None = None,
    ):
        self.uri = uri
        self.interval_s = interval_s
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.client = client(uri)
        self.buffer_max = buffer_max
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.spilled = 0  # metric steps that went through disk
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        # The sink's own ordered buffer: ("metrics", record), ("call", fn), ("spilled", (path, n)), None (end).
        self._pending: deque[tuple[str, Any] | None] = deque()
        self._held = 0  # metric records in _pending, in memory
        self._spill_files = 0
        self._abandoned = False
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
        buffer_max: int = 10_000,
        spill_root: str | Path | None = None,
    ) -> Tracker:
        """Create a run, or reopen ``run_id`` (resume). Spills go to ``spill_root/<run id>/tracking-spill``."""
        c = client(uri)

        def make(rid: str, experiment_id: str) -> Tracker:
            spill = Path(spill_root) / rid / "tracking-spill" if spill_root is not None else None
            return cls(uri, rid, experiment_id, buffer_max=buffer_max, spill_dir=spill)

        if run_id is not None:
            run = c.get_run(run_id)
            c.update_run(run_id, status="RUNNING")
            return make(run_id, run.info.experiment_id)
        all_tags = dict(tags or {})
        if parent_run_id:  # a nested run lives in its parent's experiment
            all_tags[_PARENT_TAG] = parent_run_id
            experiment_id = c.get_run(parent_run_id).info.experiment_id
        else:
            experiment_id = experiment_for(c, experiment)
        run = c.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return make(run.info.run_id, experiment_id)

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

    def delivered(self, timeout: float) -> bool:
        """Wait until everything logged so far is in MLflow (True) or ``timeout`` passes (False).
        Only for a hand-off after which this process may end at once: Ray Tune ends a trial it
        stops without waiting for its run to close, so a trial waits here before it reports."""
        done = threading.Event()
        self._queue.put(("call", done.set))
        return done.wait(timeout)

    def log_inputs(self, datasets: list[Any], context: str) -> None:
        """``mlflow.data`` datasets as the run's dataset inputs, used in ``context`` (e.g. training)."""
        from mlflow.entities import DatasetInput, InputTag

        inputs = [DatasetInput(d._to_mlflow_entity(), [InputTag("mlflow.data.context", context)]) for d in datasets]
        self._queue.put(("call", lambda: self.client.log_inputs(self.run_id, datasets=inputs)))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Uploads, then closes the matplotlib figure (pyplot keeps every open one alive)."""

        def upload() -> None:
            import matplotlib.pyplot as plt

            try:
                self.client.log_figure(self.run_id, figure, artifact_file)
            finally:
                plt.close(figure)

        self._queue.put(("call", upload))

    def log_model(self, config: Any, meta_params: Any, step: int, test_run_id: str | None, estimates: Any) -> None:
        """The run's final model as a LoggedModel, linked to the meta-test run, and registered when
        ``tracking.register_as`` names a model (:class:`orchestrator.model_registry.Publication`)."""
        from metaorch.orchestrator.model_registry import Publication

        publication = Publication(self.run_id, self.experiment_id, config, meta_params, step, test_run_id, estimates)
        self._queue.put(("call", lambda: publication(self.client)))

    # -- the sink thread -----------------------------------------------------------------
    def _send_metrics(self, batch: list[tuple[dict[str, float], int, int]]) -> None:
        """One ``log_batch`` per 1000 metrics, each retried alone until it is in."""
        from mlflow.entities import Metric

        if self._abandoned:
            self._abandon(batch)
            return
        metrics = [Metric(k, float(v), ts, step) for values, step, ts in batch for k, v in values.items()]
        for i in range(0, len(metrics), _MAX_BATCH):
            part = metrics[i : i + _MAX_BATCH]
            if not self._with_retry(lambda p=part: self.client.log_batch(self.run_id, metrics=p), "log_batch"):
                self._abandon([({m.key: m.value}, m.step, m.timestamp) for m in metrics[i:]])
                return

    def _with_retry(self, action: Callable[[], None], what: str) -> bool:
        """False only when the server was still unreachable at the close deadline (nothing more will go)."""
        if self._abandoned:
            return False
        delay = 0.5
        while True:
            try:
                action()
                return True
            except Exception as exc:
                if not _transient(exc):
                    log.error("MLflow: %s failed and was dropped: %s", what, exc)
                    return True  # rejected, not retried; what follows still goes
                if self._closing and time.monotonic() > self._deadline:
                    log.error("MLflow: giving up on %s at close: %s", what, exc)
                    self._abandoned = True
                    return False
                log.warning("MLflow: %s failed (%s); retrying in %.1fs", what, exc.__class__.__name__, delay)
                self._backoff(delay)
                delay = min(delay * 2, 10.0)

    def _backoff(self, delay: float) -> None:
        """Wait ``delay`` seconds taking new items into the buffer, but never past the close deadline."""
        end = time.monotonic() + delay
        while not self._closing:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            try:
                self._append(self._queue.get(timeout=remaining))
            except queue.Empty:
                return
            self._take_queued()
        time.sleep(max(0.0, min(end, self._deadline) - time.monotonic()))

    # -- the sink's buffer ---------------------------------------------------------------
    def _append(self, item: tuple[str, Any] | None) -> None:
        self._pending.append(item)
        if item is not None and item[0] == "metrics":
            self._held += 1
            if self._held > self.buffer_max:
                self._spill()

    def _take_queued(self) -> None:
        while True:
            try:
                self._append(self._queue.get_nowait())
            except queue.Empty:
                return

    def _pull(self) -> None:
        """Wait for the next item, plus metrics arriving within ``interval_s`` (one ``log_batch`` for all)."""
        self._append(self._queue.get())
        until = time.monotonic() + self.interval_s
        while self._pending[-1] is not None and self._pending[-1][0] == "metrics" and not self._closing:
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            try:
                self._append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        self._take_queued()

    def _spill(self) -> None:
        """Every run of in-memory metric records becomes one file; calls keep their places."""
        out: deque[tuple[str, Any] | None] = deque()
        run: list[tuple[dict[str, float], int, int]] = []
        for item in self._pending:
            if item is not None and item[0] == "metrics":
                run.append(item[1])
                continue
            if run:
                out.append(("spilled", self._write(run)))
                run = []
            out.append(item)
        if run:
            out.append(("spilled", self._write(run)))
        self._pending, self._held = out, 0

    def _write(self, records: list[tuple[dict[str, float], int, int]], name: str | None = None) -> tuple[Path, int]:
        if self.spill_dir is None:
            self.spill_dir = Path(tempfile.mkdtemp(prefix=f"metaorch-spill-{self.run_id[:8]}-"))
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        if name is None:
            self._spill_files += 1
            name = f"{self._spill_files:08d}.jsonl"
            self.spilled += len(records)
            log.warning("MLflow unreachable: %d metric steps written to %s until it is back", len(records), self.spill_dir)
        path = self.spill_dir / name
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        return path, len(records)

    def _next_metrics(self) -> list[tuple[dict[str, float], int, int]]:
        """Metric records from the front of the buffer, in order, up to ``buffer_max`` plus one file."""
        records: list[tuple[dict[str, float], int, int]] = []
        while self._pending and len(records) < self.buffer_max:
            item = self._pending[0]
            if item is None or item[0] not in ("metrics", "spilled"):
                break
            self._pending.popleft()
            if item[0] == "metrics":
                self._held -= 1
                records.append(item[1])
            else:
                path, _ = item[1]
                with open(path) as f:
                    records.extend((values, step, ts) for values, step, ts in map(json.loads, f))
                path.unlink()
        return records

    def _abandon(self, records: list[tuple[dict[str, float], int, int]]) -> None:
        """At close with the server still down: keep what never arrived (and all after it) on disk, say where."""
        records = list(records)
        while self._pending:
            item = self._pending.popleft()
            if item is None:
                self._pending.append(None)
                break
            if item[0] == "metrics":
                records.append(item[1])
            elif item[0] == "spilled":
                path, _ = item[1]
                with open(path) as f:
                    records.extend(tuple(r) for r in map(json.loads, f))
                path.unlink()
        if records:
            path, n = self._write(records, "undelivered.jsonl")
            log.error("MLflow: %d metric records never reached %s; they are in %s", n, self.uri, path)

    def _drain(self) -> None:
        while True:
            if not self._pending:
                self._pull()
            item = self._pending[0]
            if item is None:
                return
            if item[0] == "call":
                self._pending.popleft()
                self._with_retry(item[1], "call")
            else:
                self._send_metrics(self._next_metrics())
            self._take_queued()

    def close(self, status: str = "FINISHED", timeout: float | None = None) -> None:
        """Deliver what is queued, then end the run; after ``timeout`` (default ``CLOSE_TIMEOUT_S``)
        give up and return, even while a request hangs on a server that never answers."""
        timeout = CLOSE_TIMEOUT_S if timeout is None else timeout
        self._queue.put(("call", lambda: self.client.set_terminated(self.run_id, status=status)))
        self._deadline = time.monotonic() + timeout
        self._closing = True
        self._queue.put(None)
        self._thread.join(timeout + 5)
