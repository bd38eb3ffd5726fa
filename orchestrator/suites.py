"""Evaluation suites of a trained run or checkpoint, each logged as a nested MLflow run.

``meta-test``: fresh tasks from the config's task family, the method's runner's meta-test.
Suites a task family offers beside it (registry ``TaskFamily.suites``): ``omniglot-runs``,
the one-shot runs of Lake et al. in their original format.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from metaorch.orchestrator import registry
from metaorch.orchestrator.config import Config
from metaorch.orchestrator.config_sections import MODEL_NAME
from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.evaluation import Estimates, estimate, evaluation_modes
from metaorch.orchestrator.preflight import check_tracking_uri, tracking_uri_for
from metaorch.orchestrator.runs import resolve_checkpoint
from metaorch.orchestrator.mlflow_client import client
from metaorch.orchestrator.tracking import Tracker
from metaorch.orchestrator.tracking_off import start_tracker

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    estimates: Estimates
    run_id: str | None = None  # the nested MLflow run, if one was logged
    parent_run_id: str | None = None
    per_run: dict[str, float] | None = None  # omniglot-runs: error rate of each run
    registered: str | None = None  # --register: the new version and where the alias is


def log_nested(config: Config, uri: str, parent_run_id: str | None, name: str, log_fn: Callable[[Tracker], None]) -> str | None:
    """A nested run under the training run; evaluation results are kept even if tracking is gone."""
    if parent_run_id is None:
        return None
    try:
        child = start_tracker(uri, config.tracking.experiment, run_name=name, parent_run_id=parent_run_id)
    except Exception as exc:  # tracking went away after training: keep the numbers, say so
        log.warning("%s not logged to %s: %s", name, uri, exc)
        return None
    log_fn(child)
    child.close()
    return child.run_id


def _meta_test(config: Config, meta_params: torch.Tensor, uri: str, parent: str | None) -> EvalResult:
    """The method's runner's meta-test: on a pool of workers (meta-RL) or in this process."""
    runner = registry.method(config.algorithm.name).runner_class()
    runner.check(config)  # before Ray starts
    if runner.test_on_pool:
        from metaorch.orchestrator.session import check_capacity, ray_session

        with ray_session(os.environ.get("RAY_ADDRESS") or config.ray.address, config.ray.num_cpus):
            pool = runner.make_pool(config, check_capacity(config.workers))
            try:
                estimates = runner.meta_test(config, meta_params, pool)
            finally:
                pool.shutdown()
    else:
        estimates = runner.meta_test(config, meta_params, None)
    return EvalResult(estimates, log_nested(config, uri, parent, "meta-test", lambda t: runner.log_meta_test(t, config, estimates)), parent)


def _omniglot_runs(config: Config, meta_params: torch.Tensor, uri: str, parent: str | None, runs: str) -> EvalResult:
    """Error rate of every one-shot run; adapting methods use the last of ``eval.steps``, others ignore it."""
    from metaorch.orchestrator.components import build_components
    from metaorch.tasks.omniglot import DatasetError, read_runs

    try:
        loaded = read_runs(runs)
    except DatasetError as exc:
        raise UserError(f"--runs {runs}: {exc}") from None
    _, learner = build_components(config)
    steps, any_ways = config.eval.steps, registry.method(config.algorithm.name).any_ways
    for run in loaded:
        ways = run.support_x.shape[0]
        if not any_ways and ways != config.task.ways:
            raise UserError(
                f"--runs {runs}: {run.name} is {ways}-way, but {config.algorithm.name} was trained "
                f"{config.task.ways}-way (task.ways) and has an output layer of that size"
            )
    by_mode = {}  # episodic methods: without transduction (the headline), then as trained (evaluation_modes)
    for suffix, tested in evaluation_modes(config, learner):
        by_mode[suffix] = {}
        for run in loaded:
            episode = {k: v[0] for k, v in run.to_batch().items()}
            logits = tested.query_logits(meta_params, episode["support_x"], episode["support_y"], episode["query_x"], steps[-1])
            by_mode[suffix][run.name] = float((logits.argmax(-1) != episode["query_y"]).float().mean())
    errors = by_mode[""]
    estimates: Estimates = {f"runs_error_rate{suffix}": estimate(np.array(list(e.values()))) for suffix, e in by_mode.items()}

    def log_runs(t: Tracker) -> None:
        t.log_params({"runs": str(runs), "steps": ",".join(map(str, steps))})
        t.log_metrics({f"runs/error_rate_{name}": e for name, e in errors.items()}, step=0)
        for key, est in estimates.items():
            name = key.removeprefix("runs_")
            t.log_metrics({f"runs/{name}": est.mean, f"runs/{name}_ci95": est.ci95}, step=0)

    return EvalResult(estimates, log_nested(config, uri, parent, "omniglot-runs", log_runs), parent, errors)


def _register(uri: str, name: str, run_id: str, result: EvalResult, config: Config, ckpt) -> object:
    """The run's logged model (logged now from the checkpoint if it has none), linked to this
    evaluation's figures, as a new version of ``name``."""
    from metaorch.orchestrator.model_logging import find_model, link_metrics, log_model
    from metaorch.orchestrator.model_registry import register

    c = client(uri)
    model_id = find_model(c, run_id) or log_model(c, run_id, c.get_run(run_id).info.experiment_id, config, ckpt.meta_params, ckpt.iteration)
    if result.run_id is not None:
        link_metrics(c, model_id, result.run_id)
    return register(c, name, model_id, run_id, config, result.estimates)


_FAMILY_SUITES = {"omniglot-runs": _omniglot_runs}
SUITES = ("meta-test", *_FAMILY_SUITES)


def evaluate(
    source: str,
    *,
    tasks: int | None = None,
    steps: list[int] | None = None,
    tracking_uri: str | None = None,
    checkpoint_dir: str = "checkpoints",
    suite: str = "meta-test",
    runs: str | None = None,
    register: str | None = None,
) -> EvalResult:
    """Meta-test a run or checkpoint, logged as a nested run of its training run.

    ``suite="meta-test"``: fresh tasks from the config's task family. ``"omniglot-runs"``:
    the one-shot runs at ``runs`` (a folder or zip in the original Omniglot format).
    ``register``: the run's model becomes a new version of this registered model, with these figures
    (:func:`orchestrator.model_registry.register`).
    """
    if suite not in SUITES:
        raise UserError(f"--suite {suite!r}: expected one of {', '.join(SUITES)}")
    if suite != "meta-test" and not runs:
        raise UserError(f"--suite {suite} needs --runs DIR_OR_ZIP")
    if register is not None and (suite != "meta-test" or not re.match(MODEL_NAME, register)):
        raise UserError(f"--register {register!r}: a registered model's name (not blank, no / or :), with --suite meta-test")
    uri = tracking_uri_for(tracking_uri, Config().tracking.uri)
    check_tracking_uri(uri)
    ckpt = resolve_checkpoint(source, uri, checkpoint_dir)
    config = ckpt.config(source)
    if suite != "meta-test" and suite not in registry.task(config.task.name).suites:
        raise UserError(f"--suite {suite}: the checkpoint was trained on task.name={config.task.name!r}, which has no such suite")
    e = config.eval
    config = config.model_copy(update={"eval": e.model_copy(update={"tasks": tasks or e.tasks, "steps": steps or e.steps})})
    parent = ckpt.run_id
    if parent is not None:
        try:
            client(uri).get_run(parent)
        except Exception:
            log.warning("training run %s is not in %s; the evaluation is not logged", parent, uri)
            parent = None
    if register is not None and parent is None:
        raise UserError(f"--register {register}: the training run of {source} is not in the tracking store {uri}; nothing to register")
    if suite == "meta-test":
        result = _meta_test(config, ckpt.meta_params, uri, parent)
        if register is not None:
            result.registered = str(_register(uri, register, parent, result, config, ckpt))
        return result
    return _FAMILY_SUITES[suite](config, ckpt.meta_params, uri, parent, runs)
