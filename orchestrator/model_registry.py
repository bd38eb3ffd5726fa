"""The MLflow model registry: a run's model as a new version of a registered model, and the
alias ``champion`` on the best version by its headline meta-test figure.

``tracking.register_as: NAME`` registers each training run's model after its meta-test;
``metaorch eval RUN --register NAME`` registers the run's model with that evaluation's
figures. Every figure becomes a version tag (``test/<key>``); the alias moves to the new
version only when its headline figure beats the holder's. The headline is one figure per
problem, what the meta-test reports at the trained setting after the most adaptation:
regression, the MSE after the most of ``eval.steps`` (lower wins); classification, the
accuracy at ``task.ways``-way ``task.shots``-shot after the most steps (higher wins); meta-RL,
the return at the end of the adaptation curve, RL²'s whole trial (higher wins). Versions
whose headlines are different figures (other steps or settings) are not compared: the alias
stays, and a warning says why. (Not to be confused with :mod:`orchestrator.registry`, the
table of methods and task families.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from metaorch.orchestrator import registry
from metaorch.orchestrator.config import Config
from metaorch.orchestrator.evaluation import TRANSDUCTIVE, Estimates, setting_name
from metaorch.orchestrator.model_logging import link_metrics, log_model

log = logging.getLogger(__name__)

ALIAS = "champion"
_KEY, _VALUE, _GOAL = "metaorch.headline", "metaorch.headline_value", "metaorch.headline_goal"


@dataclass(frozen=True)
class Headline:
    key: str  # the meta-test metric, e.g. test/loss_step_10
    value: float
    higher_is_better: bool

    def beats(self, other: Headline) -> bool:
        return self.value > other.value if self.higher_is_better else self.value < other.value


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    champion: str | None  # the version the alias names now
    headline: Headline | None

    def __str__(self) -> str:
        figure = f" ({self.headline.key} = {self.headline.value:.4g})" if self.headline else " (no meta-test figures)"
        return f"registered model {self.name} version {self.version}{figure}; alias {ALIAS} -> version {self.champion or 'none'}"


def headline(config: Config, estimates: Estimates) -> Headline:
    """The one figure versions are compared by (see the module docstring)."""
    problem = registry.task(config.task.name).problem
    if problem == "regression":
        step = max(k for k in estimates if isinstance(k, int))
        return Headline(f"test/loss_step_{step}", estimates[step].mean, False)
    if problem == "classification":
        steps = max(config.eval.steps) if registry.method(config.algorithm.name).adapts else None
        key = setting_name(config.task.ways, config.task.shots, steps)
        if key not in estimates:  # eval.ways / eval.shots leave out the trained setting
            key = [k for k in estimates if str(k).startswith("acc_") and not str(k).endswith(TRANSDUCTIVE)][-1]
        return Headline(f"test/{key}", estimates[key].mean, True)
    key = "return_trial" if "return_trial" in estimates else [k for k in estimates if str(k).startswith("return_")][-1]
    return Headline(f"test/{key}", estimates[key].mean, True)


def _holder(client: Any, name: str) -> Any | None:
    """The version the alias names, or None (read from the model's aliases: a store answers a
    missing alias with a 400 "not found", which is no different from a bad request)."""
    version = client.get_registered_model(name).aliases.get(ALIAS)
    return client.get_model_version(name, version) if version is not None else None


def _headline_of(version: Any) -> Headline | None:
    tags = version.tags
    if _KEY not in tags:
        return None
    return Headline(tags[_KEY], float(tags[_VALUE]), tags[_GOAL] == "max")


def register(client: Any, name: str, model_id: str, run_id: str, config: Config, estimates: Estimates | None) -> Registration:
    """A new version of ``name`` from the logged model ``model_id``; the alias moves if it wins."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    tags = {"metaorch.run_id": run_id}
    new = headline(config, estimates) if estimates else None
    if new is not None:
        tags |= {_KEY: new.key, _VALUE: repr(new.value), _GOAL: "max" if new.higher_is_better else "min"}
        for key, est in estimates.items():
            key = f"loss_step_{key}" if isinstance(key, int) else key
            tags |= {f"test/{key}": f"{est.mean:.6g}", f"test/{key}_ci95": f"{est.ci95:.6g}"}
    # the model's storage location, not models:/<id>: a local store resolves that through the
    # process-wide tracking URI (MLflow's own TODO in its registry stores), which may be another
    source = client.get_logged_model(model_id).artifact_location
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags, model_id=model_id)
    holder = _holder(client, name)
    held = _headline_of(holder) if holder is not None else None
    champion = holder.version if holder is not None else None
    if new is not None and held is not None and held.key != new.key:
        log.warning("%s version %s: %s is not comparable with version %s's %s; alias %s stays", name, version.version, new.key, champion, held.key, ALIAS)
    elif new is not None and (held is None or new.beats(held)):
        client.set_registered_model_alias(name, ALIAS, version.version)
        champion = version.version
    return Registration(name, version.version, champion, new)


@dataclass
class Publication:
    """A training run's end, as one call the tracker's sink retries until it is through: log the
    model, link it to the meta-test run's figures, and register it when ``tracking.register_as``
    names a registered model. A step that is done is not done again on a retry."""

    run_id: str
    experiment_id: str
    config: Config
    meta_params: torch.Tensor
    step: int
    test_run_id: str | None
    estimates: Estimates | None
    model_id: str | None = None
    linked: bool = False

    def __call__(self, client: Any) -> None:
        if self.model_id is None:
            self.model_id = log_model(client, self.run_id, self.experiment_id, self.config, self.meta_params, self.step)
        if self.test_run_id is not None and not self.linked:
            link_metrics(client, self.model_id, self.test_run_id)
            self.linked = True
        if self.config.tracking.register_as:
            log.info("%s", register(client, self.config.tracking.register_as, self.model_id, self.run_id, self.config, self.estimates))
