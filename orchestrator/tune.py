"""Hyperparameter search with Ray Tune: ``metaorch tune CONFIG --space SPACE.yaml``, or :func:`tune`.

Each trial is a whole metaorch training run (:func:`orchestrator.trainer.train`, the loop shell
of ``metaorch train``) on the config with the trial's sample applied. Its worker pool lives in
the trial's own placement group: the trial reserves one bundle for itself (the run's driver:
the learner step, validation, tracking) and one per worker, and the pool puts its actors in
those bundles (:func:`workers.slots.enclosing_group`), so Tune never starts a trial whose
workers could not be placed. The loop's ``report`` hook hands every iteration's figures that
carry the searched metric (validation, every ``eval.val_every``) to ``tune.report``, so ASHA
can stop a poor trial after its first validation.

MLflow: one parent run (named ``tune``) holds the space and the search settings; every trial
is a nested run with the full training record; at the end the parent gets the best trial's
config (``best_config.yaml``), its figures as metrics and its run id as a tag. Trials ASHA
stopped are tagged ``metaorch.tune.stopped_early`` and end KILLED.

SPACE.yaml: see :mod:`orchestrator.tune_space`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from metaorch.orchestrator import registry
from metaorch.orchestrator.config import Config
from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.preflight import check_ray_address, check_tracking_uri, redact, tracking_uri_for
from metaorch.orchestrator.tracking import Tracker
from metaorch.orchestrator.tracking_off import tracking_off
from metaorch.orchestrator.tune_space import domains, read_space, trial_config

Scheduler = Literal["asha", "fifo"]
TRIAL_CPUS = 1.0  # the trial's own bundle: its driver (learner step, validation, tracking)
STOPPED_TAG = "metaorch.tune.stopped_early"
DELIVERY_S = 60.0  # the longest a trial waits for MLflow before a report (a server that is down)


@dataclass(frozen=True)
class Trial:
    run_id: str
    iterations: int  # iterations reached: fewer than outer.iterations when ASHA stopped it
    stopped_early: bool
    value: float | None  # the searched metric's last reported value
    error: str | None = None


@dataclass(frozen=True)
class TuneResult:
    run_id: str  # the parent "tune" run
    tracking_uri: str
    metric: str
    mode: Literal["min", "max"]
    best_config: Config
    best_run_id: str
    best_metrics: dict[str, float]
    trials: list[Trial]


def default_metric(config: Config) -> str:
    """What validation logs: ``val/loss`` (regression) or ``val/accuracy`` (classification)."""
    problem = registry.task(config.task.name).problem
    if problem == "rl":
        raise UserError(f"--metric: task.name={config.task.name!r} has no validation; name a training figure, e.g. train/return_post")
    return "val/loss" if problem == "regression" else "val/accuracy"


def _check(config: Config) -> None:
    """What a trial's pool needs that ``metaorch train`` does not."""
    if config.workers.num_workers == "auto":
        raise UserError("workers.num_workers=auto: a tune trial reserves its workers' bundles up front; give a number")
    if config.learner.placement == "actor":
        raise UserError("learner.placement=actor: a tune trial runs its learner in the trial's own bundle; use driver or auto")


def bundles(config: Config) -> list[dict[str, float]]:
    """The trial's placement group: its own bundle, then one per worker (the pool's)."""
    from metaorch.workers.pool import Resources

    w = config.workers
    worker = Resources(num_cpus=w.num_cpus, num_gpus=w.num_gpus).bundle()
    count = 0 if w.transport == "inprocess" or not worker else int(w.num_workers)
    return [{"CPU": TRIAL_CPUS}] + [worker] * count


def _fits(trial: list[dict[str, float]]) -> None:
    import ray

    have = ray.cluster_resources()
    for key in ("CPU", "GPU"):
        need = sum(b.get(key, 0.0) for b in trial)
        if need > have.get(key, 0.0) + 1e-9:
            raise UserError(
                f"workers.num_workers x workers.num_{key.lower()}s: a trial needs {need:g} {key} "
                f"({TRIAL_CPUS:g} CPU for its driver and its workers' bundles); the Ray cluster has {have.get(key, 0.0):g}"
            )


# -- one trial (in its Tune actor) ------------------------------------------------------------
def _trial(sample: dict[str, Any], *, base: Config, uri: str, parent_run_id: str, metric: str) -> None:
    """A nested MLflow run, then ``train`` with a hook that reports the metric's iterations to Tune."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
    from ray import tune

    from metaorch.orchestrator.mlflow_client import client, end_if_running
    from metaorch.orchestrator.trainer import train

    config = trial_config(base, sample)
    c = client(uri)
    name = tune.get_context().get_trial_name()
    experiment_id = c.get_run(parent_run_id).info.experiment_id
    run_id = c.create_run(experiment_id, run_name=name, tags={MLFLOW_PARENT_RUN_ID: parent_run_id, "metaorch.tune.trial": name}).info.run_id

    def report(done: int, metrics: dict[str, float], tracker: Tracker) -> None:
        if metric in metrics:  # ASHA may stop the trial here, and Tune ends it without waiting for its run
            tracker.delivered(timeout=DELIVERY_S)  # so what Tune hears is in MLflow first
            tune.report({**metrics, "iteration": done, "run_id": run_id})

    try:
        train(config, tracking_uri=uri, progress=False, run_id=run_id, report=report)
    except BaseException:  # failed before train took the run over (bad data, no capacity): end it here
        end_if_running(c, run_id, "FAILED")
        raise


# -- the search --------------------------------------------------------------------------------
def tune(
    config: Config,
    space: str | Path | Mapping[str, Any],
    *,
    samples: int = 1,
    scheduler: Scheduler = "asha",
    metric: str | None = None,
    max_concurrent: int | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    progress: bool = True,
) -> TuneResult:
    """Search ``space`` around ``config``: ``samples`` draws (times every ``grid`` value), each a
    training run; ASHA (grace period: one report, halving) or FIFO on ``metric``.
    ``run_id``: the parent run, existing and empty (``metaorch submit`` creates it)."""
    from metaorch.orchestrator.runs import check_empty_run
    from metaorch.orchestrator.session import ray_session

    if samples < 1:
        raise UserError(f"--samples {samples}: expected a positive integer")
    if scheduler not in ("asha", "fifo"):
        raise UserError(f"--scheduler {scheduler!r}: expected asha or fifo")
    parsed = read_space(space, config)
    _check(config)
    metric = metric or default_metric(config)
    mode: Literal["min", "max"] = "min" if metric.endswith("loss") else "max"
    uri = tracking_uri_for(tracking_uri, config.tracking.uri)
    if tracking_off(uri):
        raise UserError("tracking URI none: metaorch tune keeps its trials as nested MLflow runs; give it a tracking store")
    address = address or os.environ.get("RAY_ADDRESS") or config.ray.address
    check_tracking_uri(uri)
    check_ray_address(address)
    if run_id is not None:
        check_empty_run(uri, run_id, None)

    with ray_session(address, config.ray.num_cpus):
        trial_bundles = bundles(config)
        _fits(trial_bundles)
        return _search(config, parsed, uri, run_id, samples, scheduler, metric, mode, max_concurrent, trial_bundles, progress)


def _search(
    config: Config, space: dict[str, tuple[str, Any]], uri: str, run_id: str | None, samples: int, scheduler: Scheduler,
    metric: str, mode: Literal["min", "max"], max_concurrent: int | None, trial_bundles: list[dict[str, float]], progress: bool,
) -> TuneResult:  # fmt: skip
    import yaml
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from metaorch.orchestrator.lineage import log_lineage
    from metaorch.orchestrator.tracking import Tracker

    t = config.tracking
    parent = Tracker.start(uri, t.experiment, run_name=t.run_name or "tune", run_id=run_id, tags={"metaorch.tune": "parent"})
    parent.log_params({"tune.samples": samples, "tune.scheduler": scheduler, "tune.metric": metric, "tune.mode": mode})
    parent.log_text(yaml.safe_dump({k: {kind: a} for k, (kind, a) in space.items()}, sort_keys=False), "space.yaml")
    parent.log_text(config.to_yaml(), "config.yaml")
    log_lineage(parent, config, "tune")
    status = "FAILED"
    try:
        # Ray Tune's default moves each trial into its own directory; relative paths in the
        # config (data.root, checkpoint.dir) mean what they mean for the pool's workers.
        os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
        trainable = rt.with_resources(
            rt.with_parameters(partial(_trial, uri=uri, parent_run_id=parent.run_id, metric=metric), base=config),
            rt.PlacementGroupFactory(trial_bundles, strategy=config.workers.placement.upper()),
        )
        sched = ASHAScheduler(max_t=config.outer.iterations, grace_period=1, reduction_factor=2) if scheduler == "asha" else FIFOScheduler()
        tuner = rt.Tuner(
            trainable,
            param_space=domains(space),
            tune_config=rt.TuneConfig(metric=metric, mode=mode, num_samples=samples, scheduler=sched, max_concurrent_trials=max_concurrent,
                                        reuse_actors=True, trial_name_creator=lambda trial: f"trial_{trial.trial_id}"),
            run_config=rt.RunConfig(
                name=f"tune-{parent.run_id[:8]}", storage_path=str(Path(config.checkpoint.dir).absolute() / "tune"), verbose=1 if progress else 0
            ),
        )
        grid = tuner.fit()
        trials = _outcomes(grid, uri, metric, config.outer.iterations)
        best = grid.get_best_result(metric=metric, mode=mode, scope="last", filter_nan_and_inf=True)
        if best.metrics is None or best.error is not None or metric not in best.metrics:
            errors = [tr.error for tr in trials if tr.error]
            raise RuntimeError(f"no trial reported {metric}" + (f"; first error: {errors[0]}" if errors else ""))
        best_config = trial_config(config, best.config)
        figures = {k: float(v) for k, v in best.metrics.items() if "/" in k and isinstance(v, (int, float))}
        parent.log_text(best_config.to_yaml(), "best_config.yaml")
        parent.log_params({f"best.{k}": v for k, v in best.config.items()})
        parent.log_metrics(figures, step=0)
        parent.set_tags({"metaorch.tune.best_run_id": best.metrics["run_id"], "metaorch.tune.trials": str(len(trials)),
                         "metaorch.tune.stopped_early": str(sum(tr.stopped_early for tr in trials))})  # fmt: skip
        status = "FINISHED"
        return TuneResult(parent.run_id, uri, metric, mode, best_config, best.metrics["run_id"], figures, trials)
    finally:
        parent.close(status=status)


def _outcomes(grid: Any, uri: str, metric: str, iterations: int) -> list[Trial]:
    """Every trial's end; runs a stopped trial's actor left RUNNING are ended here (KILLED, tagged)."""
    from metaorch.orchestrator.mlflow_client import client, end_if_running

    c = client(uri)
    out = []
    for result in grid:
        m = result.metrics or {}
        if "run_id" not in m:  # failed before its first report: its run is found by nothing we hold
            out.append(Trial("", 0, False, None, repr(result.error)))
            continue
        done = int(m["iteration"])
        stopped = result.error is None and done < iterations
        if stopped:
            c.set_tag(m["run_id"], STOPPED_TAG, "true")
        if stopped or result.error is not None:
            end_if_running(c, m["run_id"], "KILLED" if stopped else "FAILED")
        out.append(Trial(m["run_id"], done, stopped, m.get(metric), None if result.error is None else repr(result.error)))
    return out


# -- the command line ---------------------------------------------------------------------------
def add_search_arguments(p: Any, required: bool) -> None:
    """``--space`` and the search settings, for ``metaorch tune`` and ``metaorch submit``."""
    p.add_argument("--space", required=required, metavar="SPACE.yaml", help="dotted config keys -> {loguniform|uniform|randint|choice|grid: [...]}" + ("" if required else "; runs metaorch tune instead of train"))
    p.add_argument("--samples", type=int, default=1, help="draws from the space (each grid value is tried for every draw; default 1)")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha", help="asha (default): stop poor trials at their first validation; fifo: run all")
    p.add_argument("--metric", help="the figure to optimise (default: val/loss for regression, val/accuracy for classification)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the cluster holds)")


def add_parser(sub: Any) -> None:
    """``metaorch tune``'s arguments: ``train``'s that apply, and the search's."""
    u = sub.add_parser("tune", help="hyperparameter search with Ray Tune: each trial a training run, nested in one MLflow run")
    u.add_argument("config", help="YAML config file")
    add_search_arguments(u, required=True)
    u.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a field of every trial")
    u.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local instance)")
    u.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the config's)")
    u.add_argument("--run-id", help="the tune run: an existing, empty MLflow run (metaorch submit creates it)")
    u.add_argument("--quiet", action="store_true", help="no progress table")


def search_arguments(args: Any) -> list[str] | None:
    """A submitted job's ``metaorch tune`` arguments (None without ``--space``), its space checked here first."""
    from metaorch.orchestrator.config import load_config

    if args.space is None:
        return None
    read_space(args.space, load_config(args.config, args.overrides))
    out = ["--space", args.space, "--samples", str(args.samples), "--scheduler", args.scheduler]
    out += ["--metric", args.metric] if args.metric else []
    return out + (["--max-concurrent", str(args.max_concurrent)] if args.max_concurrent else [])


def run_command(args: Any) -> int:
    """``metaorch tune``: the search, then the best trial and where to look."""
    from metaorch.orchestrator.config import load_config
    from metaorch.orchestrator.mlflow_client import ui_command

    config = load_config(args.config, args.overrides)
    result = tune(
        config, args.space, samples=args.samples, scheduler=args.scheduler, metric=args.metric, max_concurrent=args.max_concurrent,
        address=args.address, tracking_uri=args.tracking_uri, run_id=args.run_id, progress=not args.quiet,
    )  # fmt: skip
    stopped = sum(t.stopped_early for t in result.trials)
    print(f"tune run {result.run_id}: {len(result.trials)} trials, {stopped} stopped early")
    best = result.best_metrics[result.metric]
    print(f"best: run {result.best_run_id}, {result.metric} = {best:.4g} (best_config.yaml in the tune run)")
    print(f"MLflow UI: {redact(ui_command(result.tracking_uri))}")
    return 0
