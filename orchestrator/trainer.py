"""The meta-training loop and meta-test entry points: the typed API behind the CLI.

Each meta-iteration: the flat parameters travel once (the pool's ``ray.put`` or compiled
graph), each worker computes its shard of task chunks, the driver reduces in task-index
order and takes one outer step on the learner.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaorch.algorithms.base import MetaLearner
from metaorch.orchestrator import checkpoint as ckpt_io
from metaorch.orchestrator.aggregation import chunk, reduce_in_order
from metaorch.orchestrator.components import build_components, build_env_family, build_rl, prepare_data
from metaorch.orchestrator.config import ANY_WAYS, Config, OuterConfig
from metaorch.orchestrator.console import Progress
from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.evaluation import Estimates, accuracies, classification_test, estimate, meta_test
from metaorch.orchestrator.learner import Learner, RemoteLearner
from metaorch.orchestrator.plots import adaptation_curve, regression_predictions
from metaorch.orchestrator.rl_evaluation import curve, curve_axis, rl_meta_test, test_tasks as rl_test_tasks
from metaorch.orchestrator.rl_training import RLRunner, build_runner, initial_params
from metaorch.orchestrator.preflight import check_ray_address, check_tracking_uri, sqlite_path, tracking_uri_for
from metaorch.orchestrator.session import check_capacity, learner_in_actor, ray_session, target_workers
from metaorch.orchestrator.tracking import Tracker, client
from metaorch.tasks.base import TaskFamily, descriptors
from metaorch.workers.pool import Resources, WorkerPool
from metaorch.workers.rollout import RolloutPool

log = logging.getLogger(__name__)
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_CKPT_FILE = re.compile(r"^ckpt_\d+\.pt$")


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


@dataclass
class EvalResult:
    estimates: Estimates
    run_id: str | None = None  # the nested MLflow run, if one was logged
    parent_run_id: str | None = None
    per_run: dict[str, float] | None = None  # omniglot-runs: error rate of each run


def resolve_checkpoint(source: str, tracking_uri: str, checkpoint_dir: str) -> ckpt_io.Checkpoint:
    """A checkpoint file, a run's checkpoint directory, or an MLflow run id."""
    path = Path(source)
    if path.is_file():
        return ckpt_io.load(path)
    if path.is_dir():
        return ckpt_io.load(path / ckpt_io.LATEST)
    if not _RUN_ID.match(source):
        raise UserError(f"{source}: no such checkpoint file or directory, and not an MLflow run id")
    local = Path(checkpoint_dir) / source / ckpt_io.LATEST
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        if local.is_file():
            return ckpt_io.load(local)
        raise UserError(f"run {source} not found: tracking store {tracking_uri} does not exist")  # and do not create it
    c = client(tracking_uri)
    try:
        c.get_run(source)
    except Exception:
        if local.is_file():
            return ckpt_io.load(local)
        raise UserError(f"run {source} not found in tracking store {tracking_uri}") from None
    uploaded = _newest_uploaded_checkpoint(c, source, Path(checkpoint_dir) / source)
    if uploaded is not None:
        return uploaded
    if local.is_file():
        return ckpt_io.load(local)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            got = c.download_artifacts(source, f"checkpoints/{ckpt_io.LATEST}", tmp)
        except Exception:
            raise UserError(f"run {source} has no checkpoint (checkpoints/{ckpt_io.LATEST}) in {tracking_uri}") from None
        return ckpt_io.load(got)


def _newest_uploaded_checkpoint(c, run_id: str, local_dir: Path) -> ckpt_io.Checkpoint | None:
    """The run's newest checkpoint in the tracking store (its local copy when there is one).

    The sink uploads a checkpoint after every metric logged before it, so all steps up to it
    are in MLflow. A newer local file may be ahead of what reached MLflow before the driver
    was killed; resuming from it would lose the steps in between.
    """
    try:
        names = [a.path.rpartition("/")[2] for a in c.list_artifacts(run_id, "checkpoints")]
    except Exception:
        return None
    saved = sorted(n for n in names if _CKPT_FILE.match(n))
    if not saved:
        return None
    if (local_dir / saved[-1]).is_file():
        return ckpt_io.load(local_dir / saved[-1])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return ckpt_io.load(c.download_artifacts(run_id, f"checkpoints/{saved[-1]}", tmp))
        except UserError:
            raise
        except Exception:
            return None


def _check_empty_run(uri: str, run_id: str, resume: str | None) -> None:
    if resume:
        raise UserError(f"--run-id {run_id} and --resume {resume}: give one (--resume continues its own run)")
    if not _RUN_ID.match(run_id):
        raise UserError(f"--run-id {run_id!r}: not an MLflow run id (32 hexadecimal digits)")
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UserError(f"--run-id {run_id}: tracking store {uri} does not exist")  # and do not create it
    try:
        run = client(uri).get_run(run_id)
    except Exception:
        raise UserError(f"--run-id {run_id}: no such run in tracking store {uri}") from None
    if run.data.metrics:
        raise UserError(f"--run-id {run_id}: the run already has metrics; continue it with --resume {run_id}")


def _logged_after(tracker: Tracker, step: int) -> set[tuple[str, int]]:
    """(metric, step) pairs already in the run from ``step`` on: what a killed driver logged after its
    last checkpoint. The resumed run recomputes those steps and must not log them a second time."""
    c = tracker.client
    try:
        keys = list(c.get_run(tracker.run_id).data.metrics)
        return {(k, m.step) for k in keys for m in c.get_metric_history(tracker.run_id, k) if m.step >= step}
    except Exception as exc:  # tracking unreachable: log everything rather than stop training
        log.warning("could not read the metric history of run %s (%s); steps after %d may be logged twice", tracker.run_id, exc, step)
        return set()


def _log_meta_test(tracker: Tracker, estimates: Estimates, tasks: int) -> None:
    tracker.log_params({"tasks": tasks, "settings": ",".join(map(str, estimates))})
    for key, est in estimates.items():
        if isinstance(key, int):  # regression: loss by inner steps, also as a curve over steps
            tracker.log_metrics({"test/loss": est.mean, "test/loss_ci95": est.ci95}, step=key)
            key = f"loss_step_{key}"
        tracker.log_metrics({f"test/{key}": est.mean, f"test/{key}_ci95": est.ci95}, step=0)


def _meta_test_run(config: Config, meta_params: torch.Tensor, uri: str, parent_run_id: str | None, tasks: int, steps: list[int]):
    """Meta-test on fresh tasks; logged as a nested run of ``parent_run_id`` when there is one."""
    family, learner = build_components(config)
    test_tasks = descriptors(config.seed, "test", 0, tasks)
    if family.loss == "mse":
        estimates: Estimates = dict(meta_test(learner, family, meta_params, test_tasks, steps, config.eval.queries))
    else:
        estimates = classification_test(config, learner, meta_params, test_tasks, steps)
    run_id = _log_nested(config, uri, parent_run_id, "meta-test", lambda t: _log_meta_test(t, estimates, tasks))
    return estimates, run_id


def _log_nested(config: Config, uri: str, parent_run_id: str | None, name: str, log_fn) -> str | None:
    """A nested run under the training run; evaluation results are kept even if tracking is gone."""
    if parent_run_id is None:
        return None
    try:
        child = Tracker.start(uri, config.tracking.experiment, run_name=name, parent_run_id=parent_run_id)
    except Exception as exc:  # tracking went away after training: keep the numbers, say so
        log.warning("%s not logged to %s: %s", name, uri, exc)
        return None
    log_fn(child)
    child.close()
    return child.run_id


def train(
    config: Config,
    *,
    resume: str | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    run_id: str | None = None,
) -> RunResult:
    """Meta-train as ``config`` says; returns the run with its final meta-parameters.

    ``run_id``: log into this existing, still empty run (``metaorch submit`` creates the run
    so that it can print its URL before the job starts).
    """
    uri = tracking_uri_for(tracking_uri, config.tracking.uri)
    address = address or os.environ.get("RAY_ADDRESS") or config.ray.address
    check_tracking_uri(uri)
    check_ray_address(address)
    if run_id is not None:
        _check_empty_run(uri, run_id, resume)
    start = resolve_checkpoint(resume, uri, config.checkpoint.dir) if resume else None
    if config.is_rl():
        if config.learner.placement == "actor":
            raise UserError("learner.placement='actor': meta-RL learners run in the driver (on its GPU when it has one)")
        family: Any = build_env_family(config)
        rl_test_tasks(config, family)  # explicit meta-test tasks are checked before training, not after
        learner_fn = None
        meta_params = initial_params(config, family)
    else:
        prepare_data(config)
        family, learner_fn = build_components(config)
        meta_params = learner_fn.init_meta_params(config.seed)
    if start is not None:
        if start.meta_params.shape != meta_params.shape:
            raise UserError(
                f"--resume {resume}: checkpoint has {start.meta_params.numel()} meta-parameters, "
                f"the config's model/algorithm has {meta_params.numel()}"
            )
        if start.iteration > config.outer.iterations:
            raise UserError(
                f"--resume {resume}: checkpoint is at iteration {start.iteration}, beyond "
                f"outer.iterations={config.outer.iterations}"
            )
        meta_params = start.meta_params

    with ray_session(address, config.ray.num_cpus):
        w = config.workers
        remote = learner_fn is not None and learner_in_actor(config.learner, w)
        size = check_capacity(w, reserved_gpus=config.learner.num_gpus if remote else 0.0)
        if learner_fn is None:
            learner: Any = build_runner(config, family, meta_params)
        else:
            learner = RemoteLearner(meta_params, config.outer, config.learner.num_gpus) if remote else Learner(meta_params, config.outer)
        if start is not None:
            learner.load_state_dict(start.optimizer)
            torch.set_rng_state(start.torch_rng)
        pool = _pool(config, size)
        try:
            tracker = Tracker.start(
                uri,
                config.tracking.experiment,
                run_name=config.tracking.run_name,
                run_id=start.run_id if start else run_id,
                buffer_max=config.tracking.buffer_max,
                spill_root=config.checkpoint.dir,
            )
            with _sigterm_as_exit():
                if learner_fn is None:
                    return _rl_loop(config, learner, pool, tracker, start.iteration if start else 0, progress)
                return _loop(config, family, learner_fn, learner, pool, tracker, start.iteration if start else 0, progress)
        finally:
            pool.shutdown()
            if learner_fn is not None:
                learner.close()


def _pool(config: Config, size: int) -> WorkerPool:
    """Rollout workers for meta-RL, meta-learning workers otherwise; same placement and faults."""
    w = config.workers
    cls, build = (RolloutPool, partial(build_rl, config)) if config.is_rl() else (WorkerPool, partial(build_components, config))
    return cls(
        build,
        size,
        Resources(num_cpus=w.num_cpus, num_gpus=w.num_gpus, threads=w.threads),
        max_restarts=w.max_restarts,
        transport=w.transport,
        placement=w.placement,
        shard_timeout_s=w.shard_timeout_s,
    )


def _save(config: Config, tracker: Tracker, done: int, params: torch.Tensor, state: dict[str, Any]) -> Path:
    """Checkpoint ``done`` iterations to disk and to the run's artifacts."""
    ckpt_dir = Path(config.checkpoint.dir) / tracker.run_id
    ckpt = ckpt_io.Checkpoint(done, params, state, torch.get_rng_state(), tracker.run_id, config.to_yaml())
    path = ckpt_io.save(ckpt, ckpt_dir)
    tracker.log_artifact(str(path), "checkpoints")
    tracker.log_artifact(str(ckpt_dir / ckpt_io.LATEST), "checkpoints")
    return path


def _out_of_time(outer: OuterConfig, elapsed_s: float, last_s: float) -> bool:
    """Whether another iteration, as long as the last one, would end past ``outer.max_minutes``:
    a budget the run stays inside, not one it passes by an iteration."""
    return outer.max_minutes is not None and elapsed_s + last_s > 60 * outer.max_minutes


def _start_logging(config: Config, tracker: Tracker, first: int) -> set[tuple[str, int]]:
    """Params (or the resume tag) and config.yaml; returns the (metric, step) pairs already logged."""
    if first == 0:
        tracker.log_params(config.flat())
    else:
        tracker.set_tags({"metaorch.resumed_at_iteration": str(first)})
    tracker.log_text(config.to_yaml(), "config.yaml")
    return _logged_after(tracker, first)


def _rl_loop(config: Config, runner: RLRunner, pool: RolloutPool, tracker: Tracker, first: int, progress: bool) -> RunResult:
    """Meta-RL iterations ``first`` .. ``outer.iterations``, then the checkpoint and the meta-test."""
    o, w = config.outer, config.workers
    logged = _start_logging(config, tracker, first)
    bar = Progress(o.iterations, initial=first, enabled=progress)
    done, last_saved = first, first
    next_grow = time.monotonic() + w.grow_every_s
    started = time.perf_counter()
    try:
        for it in range(first, o.iterations):
            if w.num_workers == "auto" and time.monotonic() >= next_grow:
                pool.grow(target_workers(w))
                next_grow = time.monotonic() + w.grow_every_s
            t0 = time.perf_counter()
            metrics = runner.iteration(pool, it)
            done = it + 1
            metrics["time/iteration_s"] = time.perf_counter() - t0
            metrics["workers/restarts"] = pool.restarts
            if done % config.tracking.log_every == 0 or done == o.iterations:
                tracker.log_metrics({k: v for k, v in metrics.items() if (k, done) not in logged}, step=done)
            bar.update(done, {k.removeprefix("train/"): v for k, v in metrics.items() if k.startswith("train/")})
            if _out_of_time(o, time.perf_counter() - started, time.perf_counter() - t0):
                break
            if done % config.checkpoint.every == 0 and done < o.iterations:
                _save(config, tracker, done, runner.worker_params(), runner.state_dict())
                last_saved = done
    except BaseException:
        bar.close()
        if done > last_saved:
            path = _save(config, tracker, done, runner.worker_params(), runner.state_dict())
            print(f"[metaorch] interrupted; saved checkpoint at iteration {done}: {path}", flush=True)
        tracker.close(status="KILLED")
        raise
    bar.close()
    train_seconds = time.perf_counter() - started
    final = _save(config, tracker, done, runner.worker_params(), runner.state_dict())
    if ("time/train_s", done) not in logged:
        tracker.log_metrics({"time/train_s": train_seconds}, step=done)
    params = runner.worker_params()
    result = RunResult(tracker.run_id, tracker.uri, params.clone(), done, final, pool.restarts, train_seconds)
    if config.eval.at_end:
        estimates, _ = rl_meta_test(config, params, pool)
        result.test = estimates
        result.test_run_id = _log_nested(config, tracker.uri, tracker.run_id, "meta-test", lambda t: _log_rl_meta_test(t, config, estimates))
    tracker.close()
    return result


def _log_rl_meta_test(tracker: Tracker, config: Config, estimates: Estimates) -> None:
    """Per-step (or per-episode) returns as metrics, also as one curve over steps, and its PNG."""
    tasks = len(config.eval.task_params) if config.eval.task_params is not None else config.eval.tasks
    _, first, label = curve_axis(config)
    points = curve(config, estimates)
    tracker.log_params({"tasks": tasks, "curve": label})
    for k, est in enumerate(points):
        tracker.log_metrics({"test/return": est.mean, "test/return_ci95": est.ci95}, step=k + first)
    tracker.log_metrics({f"test/{key}": est.mean for key, est in estimates.items()} | {f"test/{key}_ci95": est.ci95 for key, est in estimates.items()}, step=0)
    title = f"{config.algorithm.name} on {config.task.name}: {tasks} held-out tasks"
    tracker.log_figure(adaptation_curve({config.algorithm.name: points}, label, first, title), "adaptation_curve.png")


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (``ray job stop``, a scheduler) raises SystemExit, so the loop saves a checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _loop(
    config: Config,
    family: TaskFamily,
    local_learner: MetaLearner,
    learner: Learner | RemoteLearner,
    pool: WorkerPool,
    tracker: Tracker,
    first: int,
    progress: bool,
) -> RunResult:
    """Iterations ``first`` .. ``outer.iterations``, then the final checkpoint, meta-test, plot and model."""
    o, e = config.outer, config.eval
    logged = _start_logging(config, tracker, first)
    val_tasks = descriptors(config.seed, "val", 0, e.val_tasks)
    bar = Progress(o.iterations, initial=first, enabled=progress)

    def save(done: int) -> Path:
        return _save(config, tracker, done, learner.cpu_params(), learner.state_dict())

    done, last_saved = first, first
    w = config.workers
    reserved_gpus = config.learner.num_gpus if isinstance(learner, RemoteLearner) else 0.0
    next_grow = time.monotonic() + w.grow_every_s
    workers_logged: dict[str, float] = {}
    started = time.perf_counter()
    try:
        for it in range(first, o.iterations):
            if w.num_workers == "auto" and time.monotonic() >= next_grow:
                pool.grow(target_workers(w, reserved_gpus))  # new nodes: more workers, without waiting for them
                next_grow = time.monotonic() + w.grow_every_s
            t0 = time.perf_counter()
            items = chunk(descriptors(config.seed, "train", it, o.meta_batch), config.workers.chunk_size)
            reduced = reduce_in_order(pool.run(learner.snapshot(), items), len(items), o.meta_batch)
            lr = learner.step(reduced.direction, it)
            done = it + 1
            dt = time.perf_counter() - t0
            metrics = {
                "train/loss_pre": float(reduced.pre_loss.mean()),  # nan when algorithm.track_pre is off
                "train/loss_post": float(reduced.post_loss.mean()),
                "time/iteration_s": dt,
                "time/tasks_per_s": o.meta_batch / dt,
                "outer/lr": lr,
            } | {f"train/{k}": float(v.mean()) for k, v in reduced.metrics.items()}
            if not np.isfinite(metrics["train/loss_pre"]):
                del metrics["train/loss_pre"]
            workers_now = {"workers/restarts": pool.restarts, "workers/stragglers": pool.stragglers, "workers/active": len(pool.actors)}
            changed = {k: v for k, v in workers_now.items() if workers_logged.get(k, 0 if k != "workers/active" else -1) != v}
            metrics.update(changed)  # logged when they change: restarts, timed-out shards, working actors
            validating = done % e.val_every == 0 or done == o.iterations
            if validating:
                metrics.update(_validate(config, local_learner, family, learner.cpu_params(), val_tasks))
            if done % config.tracking.log_every == 0 or validating or changed:
                workers_logged.update(changed)
                tracker.log_metrics({k: v for k, v in metrics.items() if (k, done) not in logged}, step=done)
            shown = {"post": metrics["train/loss_post"], "tasks/s": metrics["time/tasks_per_s"]}
            if "train/accuracy" in metrics:
                shown["acc"] = metrics["train/accuracy"]
            elif "train/loss_pre" in metrics:
                shown = {"pre": metrics["train/loss_pre"]} | shown
            bar.update(done, shown | {k.removeprefix("val/"): v for k, v in metrics.items() if k.startswith("val/")})
            if _out_of_time(o, time.perf_counter() - started, time.perf_counter() - t0):
                break
            if done % config.checkpoint.every == 0 and done < o.iterations:
                save(done)
                last_saved = done
    except BaseException:
        bar.close()
        if done > last_saved:
            path = save(done)
            print(f"[metaorch] interrupted; saved checkpoint at iteration {done}: {path}", flush=True)
        tracker.close(status="KILLED")
        raise
    bar.close()
    train_seconds = time.perf_counter() - started
    final = save(done)
    if ("time/train_s", done) not in logged:
        tracker.log_metrics({"time/train_s": train_seconds}, step=done)

    final_params = learner.cpu_params()
    result = RunResult(tracker.run_id, tracker.uri, final_params.clone(), done, final, pool.restarts, train_seconds)
    if e.at_end:
        result.test, result.test_run_id = _meta_test_run(config, final_params, tracker.uri, tracker.run_id, e.tasks, e.steps)
    if e.plot_tasks and family.loss == "mse":
        plot_tasks = descriptors(config.seed, "test", 1, e.plot_tasks)
        fig = regression_predictions(local_learner, family, final_params, plot_tasks, config.algorithm.inner_steps)
        tracker.log_figure(fig, "predictions.png")
    tracker.log_torch_model(local_learner.export(final_params))
    tracker.close()
    return result


def _validate(config: Config, learner: MetaLearner, family: TaskFamily, meta_params: torch.Tensor, tasks: list) -> dict[str, float]:
    """Meta-validation at the training setting: query loss (regression) or accuracy."""
    e = config.eval
    if family.loss == "mse":
        steps = config.algorithm.inner_steps
        return {"val/loss": meta_test(learner, family, meta_params, tasks, [steps], e.queries)[steps].mean}
    return {"val/accuracy": float(accuracies(learner, family, meta_params, tasks, [None], family.queries).mean())}


def evaluate(
    source: str,
    *,
    tasks: int | None = None,
    steps: list[int] | None = None,
    tracking_uri: str | None = None,
    checkpoint_dir: str = "checkpoints",
    suite: str = "meta-test",
    runs: str | None = None,
) -> EvalResult:
    """Meta-test a run or checkpoint, logged as a nested run of its training run.

    ``suite="meta-test"``: fresh tasks from the config's task family. ``"omniglot-runs"``:
    the one-shot runs at ``runs`` (a folder or zip in the original Omniglot format).
    """
    if suite not in SUITES:
        raise UserError(f"--suite {suite!r}: expected one of {', '.join(SUITES)}")
    if suite == "omniglot-runs" and not runs:
        raise UserError("--suite omniglot-runs needs --runs DIR_OR_ZIP")
    uri = tracking_uri_for(tracking_uri, Config().tracking.uri)
    check_tracking_uri(uri)
    ckpt = resolve_checkpoint(source, uri, checkpoint_dir)
    config = ckpt.config(source)
    tasks = tasks or config.eval.tasks
    steps = steps or config.eval.steps
    parent = ckpt.run_id
    if parent is not None:
        try:
            client(uri).get_run(parent)
        except Exception:
            log.warning("training run %s is not in %s; the evaluation is not logged", parent, uri)
            parent = None
    if suite == "meta-test" and config.is_rl():
        config = config.model_copy(update={"eval": config.eval.model_copy(update={"tasks": tasks, "steps": steps})})
        rl_tasks = rl_test_tasks(config)
        with ray_session(os.environ.get("RAY_ADDRESS") or config.ray.address, config.ray.num_cpus):
            pool = _pool(config, check_capacity(config.workers))
            try:
                estimates, _ = rl_meta_test(config, ckpt.meta_params, pool, rl_tasks)
            finally:
                pool.shutdown()
        run_id = _log_nested(config, uri, parent, "meta-test", lambda t: _log_rl_meta_test(t, config, estimates))
        return EvalResult(estimates, run_id, parent)
    if suite == "meta-test":
        estimates, run_id = _meta_test_run(config, ckpt.meta_params, uri, parent, tasks, steps)
        return EvalResult(estimates, run_id, parent)
    errors = _omniglot_runs(config, ckpt.meta_params, runs, steps)
    estimates = {"runs_error_rate": estimate(np.array(list(errors.values())))}

    def log_runs(t: Tracker) -> None:
        t.log_params({"runs": str(runs), "steps": ",".join(map(str, steps))})
        t.log_metrics({f"runs/error_rate_{name}": e for name, e in errors.items()}, step=0)
        t.log_metrics({"runs/error_rate": estimates["runs_error_rate"].mean, "runs/error_rate_ci95": estimates["runs_error_rate"].ci95}, step=0)

    return EvalResult(estimates, _log_nested(config, uri, parent, "omniglot-runs", log_runs), parent, errors)


SUITES = ("meta-test", "omniglot-runs")


def _omniglot_runs(config: Config, meta_params: torch.Tensor, runs: str, steps: list[int]) -> dict[str, float]:
    """Error rate of every one-shot run; adapting methods use the last of ``steps``, others ignore it."""
    from metaorch.tasks.omniglot import DatasetError, read_runs

    if config.task.name != "omniglot":
        raise UserError(f"--suite omniglot-runs: the checkpoint was trained on task.name={config.task.name!r}, not omniglot")
    try:
        loaded = read_runs(runs)
    except DatasetError as exc:
        raise UserError(f"--runs {runs}: {exc}") from None
    _, learner = build_components(config)
    errors = {}
    for run in loaded:
        ways = run.support_x.shape[0]
        if config.algorithm.name not in ANY_WAYS and ways != config.task.ways:
            raise UserError(
                f"--runs {runs}: {run.name} is {ways}-way, but {config.algorithm.name} was trained "
                f"{config.task.ways}-way (task.ways) and has an output layer of that size"
            )
        episode = {k: v[0] for k, v in run.to_batch().items()}
        logits = learner.query_logits(meta_params, episode["support_x"], episode["support_y"], episode["query_x"], steps[-1])
        errors[run.name] = float((logits.argmax(-1) != episode["query_y"]).float().mean())
    return errors


def print_estimates(estimates: Estimates) -> None:
    if len(estimates) > 12:  # an RL² bandit trial has one entry per pull: the first and last few tell the story
        keys = list(estimates)
        shown = keys[:3] + keys[-4:]
        print_estimates({k: estimates[k] for k in shown[:3]})
        print(f"... {len(keys) - len(shown)} more in the MLflow run ...")
        print_estimates({k: estimates[k] for k in shown[3:]})
        return
    for key, est in estimates.items():
        if isinstance(key, int):
            print(f"meta-test MSE after {key} inner step(s): {est} (95% CI, {est.n} tasks)")
        elif key.startswith(("return", "gain")):
            print(f"meta-test {key}: {est.mean:.3f} +/- {est.ci95:.3f} (95% CI, {est.n} tasks)")
        else:
            print(f"meta-test {key}: {est} (95% CI, {est.n} episodes)")


__all__ = ["EvalResult", "RunResult", "evaluate", "print_estimates", "train"]
