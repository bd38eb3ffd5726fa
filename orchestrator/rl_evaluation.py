"""Meta-RL meta-test: held-out tasks, return after each adaptation step or trial episode, 95% CIs.

What a point of the curve is comes from the method's runner (:mod:`orchestrator.rl_training`):
MAML-TRPO, the mean episode return after 0, 1, ..., max(eval.steps) policy-gradient steps,
each on fresh episodes; RL², one trial per task, the return of each of its episodes (the
hidden state carries across them); PEARL, ``eval.episodes`` episodes, the first with z from
the prior, each later one with z inferred from all the episodes before it and the mean
action. Tasks are ``eval.tasks`` fresh test descriptors, or ``eval.task_params`` as given.
The runs go through the rollout pool, so meta-test scales like training. Families that
report success (Meta-World) add its rates per test class and overall (:mod:`orchestrator.success`);
MAML-TRPO then runs Meta-World's protocol (:mod:`algorithms.rl.protocol`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from metaorch.orchestrator import registry
from metaorch.orchestrator.components import build_env_family
from metaorch.orchestrator.config import Config
from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.evaluation import Estimate, estimate
from metaorch.orchestrator.success import meta_test_estimates
from metaorch.tasks.base import descriptors
from metaorch.workers.rollout import RolloutPool, RolloutTask

if TYPE_CHECKING:
    from metaorch.orchestrator.rl_training import RLRunner


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


def curve(runner: type[RLRunner], estimates: dict[str, Estimate]) -> list[Estimate]:
    """The returns along the curve, in order (without the trial total and the gains)."""
    unit, _, _ = runner.curve_axis
    return [est for key, est in estimates.items() if key.startswith(f"return_{unit}_")]


def rl_meta_test(runner: type[RLRunner], config: Config, params: torch.Tensor, pool: RolloutPool) -> tuple[dict[str, Estimate], np.ndarray]:
    """Estimates keyed ``return_step_k`` / ``return_episode_k`` (and ``gain_*_k``: the per-task
    improvement over step 0 / episode 1), and the per-task returns."""
    family = build_env_family(config)
    tasks = test_tasks(config, family)
    outputs = pool.run_plan(params.detach().cpu().float(), tasks, runner.test_plan(config, family), config.workers.chunk_size)
    returns = runner.test_returns(config, outputs)
    unit, first, _ = runner.curve_axis
    estimates = {f"return_{unit}_{k + first}": estimate(returns[:, k]) for k in range(returns.shape[1])}
    if runner.trial_total and returns.shape[1] > 1:
        estimates["return_trial"] = estimate(returns.sum(1))
    # paired: the same tasks before and after, so the gain's CI excludes the spread between tasks
    estimates |= {f"gain_{unit}_{k + first}": estimate(returns[:, k] - returns[:, 0]) for k in range(1, returns.shape[1])}
    if registry.task(config.task.name).success:  # Meta-World's protocol: success of the evaluation episodes
        labels = [family.label(family.task(t.descriptor) if t.params is None else t.params) for t in tasks]
        estimates |= meta_test_estimates(*runner.test_success(config, outputs), labels, runner.test_success_unadapted(outputs))
    return estimates, returns
