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

import numpy as np
import torch
import yaml

from algorithms.base import MetaLearner
from orchestrator import checkpoint as ckpt_io
from orchestrator.aggregation import chunk, reduce_in_order
from orchestrator.components import build_components, prepare_data
from orchestrator.config import ANY_WAYS, Config, from_dict
from orchestrator.console import Progress
from orchestrator.errors import UserError
from orchestrator.evaluation import Estimates, accuracies, classification_test, estimate, meta_test
from orchestrator.learner import Learner
from orchestrator.plots import regression_predictions
from orchestrator.preflight import check_ray_address, check_tracking_uri, resolve_tracking_uri, sqlite_path
from orchestrator.session import check_capacity, ray_session
from orchestrator.tracking import Tracker, client
from tasks.base import TaskFamily, descriptors
from workers.pool import Resources, WorkerPool

log = logging.getLogger(__name__)
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


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
    if local.is_file():
        return ckpt_io.load(local)
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        raise UserError(f"run {source} not found: tracking store {tracking_uri} does not exist")  # and do not create it
    c = client(tracking_uri)
    try:
        c.get_run(source)
    except Exception:
        raise UserError(f"run {source} not found in tracking store {tracking_uri}") from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            got = c.download_artifacts(source, f"checkpoints/{ckpt_io.LATEST}", tmp)
        except Exception:
            raise UserError(f"run {source} has no checkpoint (checkpoints/{ckpt_io.LATEST}) in {tracking_uri}") from None
        return ckpt_io.load(got)


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
) -> RunResult:
    """Meta-train as ``config`` says; returns the run with its final meta-parameters."""
    uri = resolve_tracking_uri(tracking_uri or config.tracking.uri)
    address = address or os.environ.get("RAY_ADDRESS") or config.ray.address
    check_tracking_uri(uri)
    check_ray_address(address)
    start = resolve_checkpoint(resume, uri, config.checkpoint.dir) if resume else None
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
    learner = Learner(meta_params, config.outer)
    if start is not None:
        learner.load_state_dict(start.optimizer)
        torch.set_rng_state(start.torch_rng)

    with ray_session(address, config.ray.num_cpus):
        check_capacity(config.workers)
        w = config.workers
        pool = WorkerPool(
            partial(build_components, config),
            w.num_workers,
            Resources(num_cpus=w.num_cpus, num_gpus=w.num_gpus, threads=w.threads),
            max_restarts=w.max_restarts,
            transport=w.transport,
        )
        try:
            tracker = Tracker.start(
                uri,
                config.tracking.experiment,
                run_name=config.tracking.run_name,
                run_id=start.run_id if start else None,
            )
            with _sigterm_as_exit():
                return _loop(config, family, learner_fn, learner, pool, tracker, start.iteration if start else 0, progress)
        finally:
            pool.shutdown()


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
    learner: Learner,
    pool: WorkerPool,
    tracker: Tracker,
    first: int,
    progress: bool,
) -> RunResult:
    """Iterations ``first`` .. ``outer.iterations``, then the final checkpoint, meta-test, plot and model."""
    o, e = config.outer, config.eval
    ckpt_dir = Path(config.checkpoint.dir) / tracker.run_id
    if first == 0:
        tracker.log_params(config.flat())
    else:
        tracker.set_tags({"metaorch.resumed_at_iteration": str(first)})
    tracker.log_text(config.to_yaml(), "config.yaml")
    val_tasks = descriptors(config.seed, "val", 0, e.val_tasks)
    bar = Progress(o.iterations, initial=first, enabled=progress)

    def save(done: int) -> Path:
        state = ckpt_io.Checkpoint(done, learner.params, learner.state_dict(), torch.get_rng_state(), tracker.run_id, config.to_yaml())
        path = ckpt_io.save(state, ckpt_dir)
        tracker.log_artifact(str(path), "checkpoints")
        tracker.log_artifact(str(ckpt_dir / ckpt_io.LATEST), "checkpoints")
        return path

    done, last_saved, restarts_logged = first, first, pool.restarts
    started = time.perf_counter()
    try:
        for it in range(first, o.iterations):
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
            if pool.restarts != restarts_logged:
                restarts_logged = pool.restarts
                metrics["workers/restarts"] = pool.restarts
            validating = done % e.val_every == 0 or done == o.iterations
            if validating:
                metrics.update(_validate(config, local_learner, family, learner.params.detach(), val_tasks))
            if done % config.tracking.log_every == 0 or validating:
                tracker.log_metrics(metrics, step=done)
            shown = {"post": metrics["train/loss_post"], "tasks/s": metrics["time/tasks_per_s"]}
            if "train/accuracy" in metrics:
                shown["acc"] = metrics["train/accuracy"]
            elif "train/loss_pre" in metrics:
                shown = {"pre": metrics["train/loss_pre"]} | shown
            bar.update(done, shown | {k.removeprefix("val/"): v for k, v in metrics.items() if k.startswith("val/")})
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
    tracker.log_metrics({"time/train_s": train_seconds}, step=done)

    result = RunResult(tracker.run_id, tracker.uri, learner.params.detach().clone(), done, final, pool.restarts, train_seconds)
    final_params = learner.params.detach()
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
    uri = resolve_tracking_uri(tracking_uri or Config().tracking.uri)
    check_tracking_uri(uri)
    ckpt = resolve_checkpoint(source, uri, checkpoint_dir)
    config = from_dict(yaml.safe_load(ckpt.config_yaml), f"in checkpoint {source}")
    tasks = tasks or config.eval.tasks
    steps = steps or config.eval.steps
    parent = ckpt.run_id
    if parent is not None:
        try:
            client(uri).get_run(parent)
        except Exception:
            log.warning("training run %s is not in %s; the evaluation is not logged", parent, uri)
            parent = None
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
    from tasks.omniglot import DatasetError, read_runs

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
    for key, est in estimates.items():
        if isinstance(key, int):
            print(f"meta-test MSE after {key} inner step(s): {est} (95% CI, {est.n} tasks)")
        else:
            print(f"meta-test {key}: {est} (95% CI, {est.n} episodes)")


__all__ = ["EvalResult", "RunResult", "evaluate", "print_estimates", "train"]
