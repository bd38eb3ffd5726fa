"""Meta-test and meta-validation: post-adaptation loss after k inner steps, with a 95% CI."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from metaorch.algorithms.base import FewShotClassifier, accuracy, map_tasks
from metaorch.algorithms.episodic import EpisodicLearner
from metaorch.algorithms.gradient_based import GradientBasedLearner
from metaorch.tasks.base import TaskDescriptor, TaskFamily


@dataclass(frozen=True)
class Estimate:
    mean: float
    ci95: float  # half-width: 1.96 standard errors
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} +/- {self.ci95:.4f}"


def estimate(values: np.ndarray) -> Estimate:
    n = len(values)
    return Estimate(float(np.mean(values)), float(1.96 * np.std(values, ddof=1) / math.sqrt(n)), n)


def adapted_losses(
    learner: GradientBasedLearner,
    family: TaskFamily,
    meta_params: torch.Tensor,
    tasks: Sequence[TaskDescriptor],
    steps: Sequence[int],
    queries: int,
    chunk_size: int = 100,
) -> np.ndarray:
    """Query loss of every task after each number of inner steps: shape [tasks, len(steps)]."""

    def per_task(mp: torch.Tensor, task: dict[str, torch.Tensor]) -> torch.Tensor:
        sx, sy = task["support_x"], task["support_y"]
        losses = [learner.loss_fn(learner.predict(learner.adapt(mp, sx, sy, s), sx, task["query_x"]), task["query_y"]) for s in steps]
        return torch.stack(losses)

    return _per_task(per_task, learner, family, meta_params, tasks, queries, chunk_size)


def _per_task(fn, learner, family: TaskFamily, meta_params: torch.Tensor, tasks: Sequence[TaskDescriptor], queries: int, chunk_size: int):
    """``fn(meta_params, task)`` over ``tasks``, built ``chunk_size`` at a time, stacked on dim 0 (numpy)."""
    device = meta_params.device
    out = []
    for start in range(0, len(tasks), chunk_size):
        batch = family.batch(list(tasks[start : start + chunk_size]), queries=queries)
        batch = {k: v.to(device) for k, v in batch.items()}
        got = map_tasks(fn, meta_params.detach(), batch, learner.vectorize)
        out.append(torch.utils._pytree.tree_map(lambda t: t.detach().cpu().numpy(), got))
    return torch.utils._pytree.tree_map(lambda *xs: np.concatenate(xs), *out)


def accuracies(
    learner: FewShotClassifier,
    family: TaskFamily,
    meta_params: torch.Tensor,
    tasks: Sequence[TaskDescriptor],
    steps: Sequence[int | None],
    queries: int,
    chunk_size: int = 25,
) -> np.ndarray:
    """Query accuracy of every episode after each number of inner steps: [tasks, len(steps)].
    ``None`` is the method's own setting (the only one for methods that do not adapt)."""

    def per_task(mp: torch.Tensor, task: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():  # MAML's inner loop takes its own gradients (algorithms.base.inner_grad)
            accs = [
                accuracy(learner.query_logits(mp, task["support_x"], task["support_y"], task["query_x"], s).detach(), task["query_y"])
                for s in steps
            ]
        return torch.stack(accs)

    return _per_task(per_task, learner, family, meta_params, tasks, queries, chunk_size)


def episode_metrics(
    learner: EpisodicLearner, family: TaskFamily, meta_params: torch.Tensor, tasks: Sequence[TaskDescriptor], queries: int
) -> dict[str, np.ndarray]:
    """The method's own per-episode metrics (MANN's accuracy by instance, Siamese verification)."""

    def per_task(mp: torch.Tensor, task: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return learner.episode_loss(mp, task)[1]

    return _per_task(per_task, learner, family, meta_params, tasks, queries, 25)


def meta_test(
    learner: GradientBasedLearner,
    family: TaskFamily,
    meta_params: torch.Tensor,
    tasks: Sequence[TaskDescriptor],
    steps: Sequence[int],
    queries: int,
) -> dict[int, Estimate]:
    losses = adapted_losses(learner, family, meta_params, tasks, steps, queries)
    return {s: estimate(losses[:, i]) for i, s in enumerate(steps)}


Estimates = dict[int | str, Estimate]  # regression: by inner steps; classification: by setting name


def setting_name(ways: int, shots: int, steps: int | None) -> str:
    return f"acc_{ways}way_{shots}shot" + ("" if steps is None else f"_step_{steps}")


def classification_test(
    config,
    learner: FewShotClassifier,
    meta_params: torch.Tensor,
    tasks: Sequence[TaskDescriptor],
    steps: Sequence[int],
) -> Estimates:
    """Accuracy at every (ways, shots[, steps]) of ``eval``, plus the method's own metrics
    (MANN's accuracy by instance) at the training setting."""
    from metaorch.orchestrator import registry
    from metaorch.orchestrator.components import build_family

    t, e = config.task, config.eval
    adapts = registry.method(config.algorithm.name).adapts
    step_list: list[int | None] = list(steps) if adapts else [None]
    out: Estimates = {}
    for ways in e.ways or [t.ways]:
        for shots in e.shots or [t.shots]:
            family = build_family(config, ways=ways, shots=shots, queries=e.queries)
            accs = accuracies(learner, family, meta_params, tasks, step_list, e.queries)
            for i, s in enumerate(step_list):
                out[setting_name(ways, shots, s)] = estimate(accs[:, i])
    if not adapts:
        family = build_family(config, queries=e.queries)
        for name, values in episode_metrics(learner, family, meta_params, tasks, e.queries).items():
            if name != "accuracy":
                out[name] = estimate(values)
    return out
