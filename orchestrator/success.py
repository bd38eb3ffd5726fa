"""Success rates beside returns, for the task families that define success (Meta-World).

An episode succeeds if the environment's ``info["success"]`` was 1 at some step (rollout
workers record it into :attr:`Trajectories.success`). Training logs, per iteration, each
point the runner names (MAML-TRPO: ``pre`` / ``post`` adaptation; RL²: the trial's
``first`` / ``last`` episode; PEARL: ``prior`` / ``posterior``) as ``train/success_<point>``,
and per task class as ``train_class/success_<point>/<class>``. The meta-test reports the
success rate of the evaluation episodes per test class and overall, each with a 95% CI over
tasks; overall is the mean over classes (metaworld's ``mean_success_rate``), equal to the
mean over tasks when the classes have equally many tasks (``eval.tasks`` a multiple of them).
Where the runner also evaluates the unadapted policy the same way (MAML-TRPO), ``success_pre``
and the paired per-task gain ``gain_success`` sit beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from metaorch.algorithms.rl.trajectories import Trajectories
from metaorch.orchestrator.evaluation import Estimate, estimate


def trial_episode_success(trials: Trajectories, episodes: int) -> np.ndarray:
    """[trials, episodes]: 1.0 where an RL² trial's inner episode succeeded, split at the done
    flag the trial wrapper puts last in the observation after an episode's end (as
    ``rl2.trial_episode_returns`` splits returns)."""
    flags = trials.observations[..., -1] * trials.mask
    episode = np.minimum(np.cumsum(flags, axis=0).astype(np.int64), episodes - 1)
    solved = ((trials.success * trials.mask) > 0).astype(np.float64)
    out = np.zeros((trials.episodes, episodes))
    for n in range(trials.episodes):
        np.maximum.at(out[n], episode[:, n], solved[:, n])
    return out


def by_class(labels: Sequence[str | None], values: Sequence[float]) -> dict[str, list[float]]:
    """Each class's values in task order; tasks without a class are left out."""
    out: dict[str, list[float]] = {}
    for label, value in zip(labels, values):
        if label is not None:
            out.setdefault(label, []).append(float(value))
    return out


def training_metrics(points: Mapping[str, Sequence[np.ndarray]], labels: Sequence[str | None]) -> dict[str, float]:
    """``points``: name -> per task, the success (0/1) of each of its episodes. Every episode
    weighs the same in the overall rate; a class's rate is over its tasks' episodes."""
    out: dict[str, float] = {}
    for name, per_task in points.items():
        out[f"train/success_{name}"] = float(np.mean(np.concatenate([np.ravel(s) for s in per_task])))
        for cls, rates in by_class(labels, [float(np.mean(s)) for s in per_task]).items():
            out[f"train_class/success_{name}/{cls}"] = float(np.mean(rates))
    return out


def class_mean(per_task: np.ndarray, labels: Sequence[str | None]) -> Estimate:
    """Mean over classes of their tasks' means (over tasks where no task has a class); CI over tasks."""
    classes = by_class(labels, per_task)
    overall = estimate(per_task)
    if classes:
        overall = Estimate(float(np.mean([np.mean(v) for v in classes.values()])), overall.ci95, overall.n)
    return overall


def meta_test_estimates(
    success: np.ndarray, returns: np.ndarray, labels: Sequence[str | None], unadapted: np.ndarray | None = None
) -> dict[str, Estimate]:
    """``success`` and ``returns``: [tasks, evaluation episodes]. Keys ``success`` (mean over
    classes, CI over tasks), ``success/<class>``, ``return_evaluation``; with ``unadapted``
    (the same episodes' success before adaptation) also ``success_pre`` and ``gain_success``."""
    per_task = success.mean(1)
    out = {"success": class_mean(per_task, labels), "return_evaluation": estimate(returns.mean(1))}
    if unadapted is not None:
        pre = unadapted.mean(1)
        out |= {"success_pre": class_mean(pre, labels), "gain_success": estimate(per_task - pre)}
    return out | {f"success/{cls}": estimate(np.asarray(v)) for cls, v in sorted(by_class(labels, per_task).items())}
