"""Meta-RL meta-test: held-out tasks, return after each adaptation step or trial episode, 95% CIs.

MAML-TRPO: the mean episode return after 0, 1, ..., max(eval.steps) policy-gradient steps,
each on fresh episodes. RL²: one trial per task, the return of each of its episodes (the
hidden state carries across them). PEARL: ``eval.episodes`` episodes, the first with z from
the prior, each later one with z inferred from all the episodes before it and the mean
action. Tasks are ``eval.tasks`` fresh test descriptors, or ``eval.task_params`` as given.
The runs go through the rollout pool, so meta-test scales like training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from metaorch.algorithms.rl.maml_trpo import MAMLTestPlan
from metaorch.algorithms.rl.pearl import PEARLPlan
from metaorch.algorithms.rl.rl2 import RL2Plan, trial_episode_returns
from metaorch.orchestrator.components import build_env_family, build_policy
from metaorch.orchestrator.config import Config
from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.evaluation import Estimate, estimate
from metaorch.tasks.base import descriptors
from metaorch.workers.rollout import RolloutPool, RolloutTask


def test_tasks(config: Config, family=None) -> list[RolloutTask]:
    """The held-out tasks; explicit ``eval.task_params`` are checked here, before any training."""
    e = config.eval
    if e.task_params is None:
        return [RolloutTask(d) for d in descriptors(config.seed, "test", 0, e.tasks)]
    family = family or build_env_family(config)
    out = []
    for i, (d, params) in enumerate(zip(descriptors(config.seed, "test", 0, len(e.task_params)), e.task_params)):
        try:
            out.append(RolloutTask(d, family.check(params)))
        except ValueError as exc:
            raise UserError(f"eval.task_params[{i}]={params!r}: {exc}") from None
    return out


def curve_axis(config: Config) -> tuple[str, int, str]:
    """(key unit, first x, axis label): MAML-TRPO's curve runs over adaptation steps from 0,
    RL²'s and PEARL's over the episodes of a trial from 1."""
    return ("step", 0, "adaptation step") if config.algorithm.name == "maml_trpo" else ("episode", 1, "episode")


def curve(config: Config, estimates: dict[str, Estimate]) -> list[Estimate]:
    """The returns along the curve, in order (without the trial total and the gains)."""
    unit, _, _ = curve_axis(config)
    return [est for key, est in estimates.items() if key.startswith(f"return_{unit}_")]


def _plan(config: Config, family) -> Any:
    name = config.algorithm.name
    if name == "maml_trpo":
        return MAMLTestPlan(build_policy(config, family), config.rl.maml_trpo, max(config.eval.steps))
    if name == "rl2":
        return RL2Plan(1)
    return PEARLPlan(build_policy(config, family), prior_episodes=1, posterior_episodes=config.eval.episodes - 1, deterministic_posterior=True)


def per_task_returns(config: Config, outputs: Sequence[dict[str, Any]]) -> np.ndarray:
    """[tasks, points]: return at each adaptation step (MAML) or episode (RL², PEARL)."""
    name = config.algorithm.name
    if name == "maml_trpo":
        return np.stack([o["returns"] for o in outputs])
    if name == "rl2":
        return np.concatenate([trial_episode_returns(o["trials"], config.task.trial_episodes) for o in outputs])
    return np.stack([np.concatenate([o["prior_returns"], o["posterior_returns"]]) for o in outputs])


def rl_meta_test(config: Config, params: torch.Tensor, pool: RolloutPool, tasks: list[RolloutTask] | None = None) -> tuple[dict[str, Estimate], np.ndarray]:
    """Estimates keyed ``return_step_k`` / ``return_episode_k`` (and ``gain_*_k``: the per-task
    improvement over step 0 / episode 1), and the per-task returns."""
    family = build_env_family(config)
    tasks = tasks if tasks is not None else test_tasks(config, family)
    outputs = pool.run_plan(params.detach().cpu().float(), tasks, _plan(config, family), config.workers.chunk_size)
    returns = per_task_returns(config, outputs)
    unit, first, _ = curve_axis(config)
    estimates = {f"return_{unit}_{k + first}": estimate(returns[:, k]) for k in range(returns.shape[1])}
    if config.algorithm.name == "rl2" and returns.shape[1] > 1:
        estimates["return_trial"] = estimate(returns.sum(1))
    # paired: the same tasks before and after, so the gain's CI excludes the spread between tasks
    estimates |= {f"gain_{unit}_{k + first}": estimate(returns[:, k] - returns[:, 0]) for k in range(1, returns.shape[1])}
    return estimates, returns

