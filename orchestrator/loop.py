"""The loop shell every runner trains in: tracking, checkpoints, SIGTERM, ``outer.max_minutes``
and pool growth. What one iteration does is the runner's (:mod:`orchestrator.runner`)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from metaorch.orchestrator import checkpoint as ckpt_io
from metaorch.orchestrator.config import Config, OuterConfig
from metaorch.orchestrator.console import Progress
from metaorch.orchestrator.evaluation import Estimates
from metaorch.orchestrator.lineage import log_lineage
from metaorch.orchestrator.runner import Runner
from metaorch.orchestrator.session import target_workers
from metaorch.orchestrator.suites import log_nested
from metaorch.orchestrator.tracking import Tracker
from metaorch.workers import PoolExhausted
from metaorch.workers.pool import WorkerPool

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str
    tracking_uri: str
    meta_params: torch.Tensor
    iterations: int
    checkpoint: Path
    restarts: int
    train_seconds: float
    test: Estimates | None = None
    test_run_id: str | None = None


def save(config: Config, tracker: Tracker, done: int, runner: Runner) -> Path:
    """Checkpoint ``done`` iterations to disk and to the run's artifacts."""
    ckpt_dir = Path(config.checkpoint.dir) / tracker.run_id
    ckpt = ckpt_io.Checkpoint(done, runner.worker_params(), runner.state_dict(), torch.get_rng_state(), tracker.run_id, config.to_yaml())
    path = ckpt_io.save(ckpt, ckpt_dir)
    tracker.log_artifact(str(path), "checkpoints")
    tracker.log_artifact(str(ckpt_dir / ckpt_io.LATEST), "checkpoints")
    return path


def out_of_time(outer: OuterConfig, elapsed_s: float, next_s: float) -> bool:
    """Whether another pass of the loop, forecast to take ``next_s``, would end past
    ``outer.max_minutes``: a budget the run stays inside, not one it passes by an iteration."""
    return outer.max_minutes is not None and elapsed_s + next_s > 60 * outer.max_minutes


def _logged_after(tracker: Tracker, step: int) -> set[tuple[str, int]]:
    """(metric, step) pairs already in the run from ``step`` on: what a killed driver logged after its
    last checkpoint. The resumed run recomputes those steps and must not log them a second time."""
    c = tracker.client
    if c is None:  # tracking off: no store holds earlier steps
        return set()
    try:
        keys = list(c.get_run(tracker.run_id).data.metrics)
        return {(k, m.step) for k in keys for m in c.get_metric_history(tracker.run_id, k) if m.step >= step}
    except Exception as exc:  # tracking unreachable: log everything rather than stop training
        log.warning("could not read the metric history of run %s (%s); steps after %d may be logged twice", tracker.run_id, exc, step)
        return set()


def _start_logging(config: Config, tracker: Tracker, first: int) -> set[tuple[str, int]]:
    """Params (or the resume tag), config.yaml and lineage; returns the (metric, step) pairs already logged."""
    log_lineage(tracker, config, "train")
    if first == 0:
        tracker.log_params(config.flat())
    else:
        tracker.set_tags({"metaorch.resumed_at_iteration": str(first)})
    tracker.log_text(config.to_yaml(), "config.yaml")
    return _logged_after(tracker, first)


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (``ray job stop``, a scheduler) raises SystemExit, so the loop saves a checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except SystemExit as exc:
        # A signal that lands while the driver blocks in ray.wait/ray.get comes back from Ray as
        # SystemExit(1) (it reports the wait as interrupted), not as this handler's exit
        if received and exc.code != 128 + received[0]:
            raise SystemExit(128 + received[0]) from exc
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


_WORKER_METRICS = {"workers/restarts": 0, "workers/stragglers": 0, "workers/active": -1}  # as last logged, at the start


def run_loop(
    config: Config, runner: Runner, pool: WorkerPool, tracker: Tracker, first: int, progress: bool,
    report: Callable[[int, dict[str, float], Tracker], None] | None = None,
) -> RunResult:  # fmt: skip
    """Iterations ``first`` .. ``outer.iterations``, then the final checkpoint, the meta-test
    (a nested run) and the runner's artifacts. Interrupted, or the pool out of restarts: a
    checkpoint of the iterations done, and the run ends KILLED (FAILED for the pool).
    ``report(done, metrics, tracker)`` hears every iteration's metrics, after they were handed to
    the tracker (a Ray Tune trial's hook, which may end the process: see ``Tracker.delivered``)."""
    o, w = config.outer, config.workers
    logged = _start_logging(config, tracker, first)
    bar = Progress(o.iterations, initial=first, enabled=progress)
    done, last_saved, last_path = first, first, None
    next_grow = time.monotonic() + w.grow_every_s
    workers_logged: dict[str, float] = {}
    # outer.max_minutes: the next pass is forecast as the last one (iteration, validation, logging)
    # plus, when one is due, a checkpoint as long as the last checkpoint took
    pass_s = save_s = 0.0

    def checkpoint_due(n: int) -> bool:  # a periodic checkpoint after iteration n (the last one has its own)
        return n % config.checkpoint.every == 0 and n < o.iterations

    started = time.perf_counter()
    try:
        for it in range(first, o.iterations):
            due_s = save_s if checkpoint_due(it + 1) else 0.0
            if it > first and out_of_time(o, time.perf_counter() - started, pass_s + due_s):
                break
            if (w.num_workers == "auto" or pool.size < w.num_workers) and time.monotonic() >= next_grow:
                pool.grow(target_workers(w, runner.reserved_gpus))  # new nodes: more workers, without waiting for them
                next_grow = time.monotonic() + w.grow_every_s
            t0 = time.perf_counter()
            metrics = runner.iteration(pool, it)
            done = it + 1
            metrics["time/iteration_s"] = time.perf_counter() - t0
            workers_now = {"workers/restarts": pool.restarts, "workers/stragglers": pool.stragglers, "workers/active": len(pool.actors)}
            changed = {k: v for k, v in workers_now.items() if workers_logged.get(k, _WORKER_METRICS[k]) != v}
            metrics.update(changed)  # logged when they change: restarts, timed-out shards, working actors
            validation = runner.validate(done)
            metrics.update(validation)
            if done % config.tracking.log_every == 0 or done == o.iterations or validation or changed:
                workers_logged.update(changed)
                tracker.log_metrics({k: v for k, v in metrics.items() if (k, done) not in logged}, step=done)
            if report is not None:
                report(done, metrics, tracker)
            bar.update(done, runner.shown(metrics))
            pass_s = time.perf_counter() - t0
            if checkpoint_due(done):
                t1 = time.perf_counter()
                last_path, last_saved = save(config, tracker, done, runner), done
                save_s = time.perf_counter() - t1
    except BaseException as exc:
        bar.close()
        if done > last_saved:
            last_path = save(config, tracker, done, runner)
        if last_path is not None:  # where to --resume from (a signal may land just after a periodic save)
            print(f"[metaorch] interrupted; checkpoint at iteration {done}: {last_path}", flush=True)
        else:  # stopped inside the first iteration of this process: nothing trained here to keep
            since = f"the checkpoint it resumed from (iteration {first}) is the latest" if first else "no checkpoint written"
            print(f"[metaorch] interrupted during iteration {first + 1}; {since}", flush=True)
        tracker.close(status="FAILED" if isinstance(exc, PoolExhausted) else "KILLED")
        raise
    bar.close()
    train_seconds = time.perf_counter() - started
    final = last_path if last_saved == done and last_path is not None else save(config, tracker, done, runner)
    try:
        if ("time/train_s", done) not in logged:
            tracker.log_metrics({"time/train_s": train_seconds}, step=done)
        params = runner.worker_params()
        result = RunResult(tracker.run_id, tracker.uri, params.clone(), done, final, pool.restarts, train_seconds)
        if config.eval.at_end:
            estimates = runner.meta_test(config, params, pool if runner.test_on_pool else None)
            result.test = estimates
            result.test_run_id = log_nested(config, tracker.uri, tracker.run_id, "meta-test", lambda t: runner.log_meta_test(t, config, estimates))
        runner.finish(params, tracker)
        tracker.log_model(config, params, done, result.test_run_id, result.test)
    except BaseException as exc:
        tracker.close(status="FAILED" if isinstance(exc, PoolExhausted) else "KILLED")
        raise
    tracker.close()
    return result

