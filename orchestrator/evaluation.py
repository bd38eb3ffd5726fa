"""Meta-test and meta-validation: post-adaptation loss after k inner steps, with a 95% CI.

The episodic methods (Prototypical, Matching, Siamese, MANN, SNAIL) are meta-tested without
transduction: Conv-4's batch norm takes its statistics from the support set, so no query
influences another's prediction, as Snell et al. and Vinyals et al. test (their batch norm
uses running statistics at test time; ours keeps none). That is the headline figure; a run
trained with ``model.transductive=true`` also gets the transductive one beside it, under the
same key with ``_transductive`` appended. The gradient-based methods keep their config's
setting (transductive, as Finn et al. test MAML).
"""

from __future__ import annotations

import copy
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


TRANSDUCTIVE = "_transductive"  # the suffix of the transductive figures beside the headline ones


def evaluation_modes(config, learner: FewShotClassifier) -> list[tuple[str, FewShotClassifier]]:
    """(key suffix, learner) of each way a classifier is meta-tested: episodic methods without
    transduction first (the headline), then as trained if that was transductive; others as trained."""
    from metaorch.orchestrator import registry

    if not isinstance(learner, EpisodicLearner) or not learner.transductive:
        return [("", learner)]
    inductive = copy.copy(learner)  # shares the model; only the batch-norm switch differs
    inductive.transductive = False
    return [("", inductive), (TRANSDUCTIVE, learner)] if registry.task(config.task.name).batch_norm else [("", learner)]


def classification_test(
    config,
    learner: FewShotClassifier,
    meta_params: torch.Tensor,
    tasks: Sequence[TaskDescriptor],
    steps: Sequence[int],
) -> Estimates:
    """Accuracy at every (ways, shots[, steps]) of ``eval``, plus the method's own metrics
    (MANN's accuracy by instance) at the training setting, in each of :func:`evaluation_modes`."""
    from metaorch.orchestrator import registry
    from metaorch.orchestrator.components import build_family

    t, e = config.task, config.eval
    adapts = registry.method(config.algorithm.name).adapts
    step_list: list[int | None] = list(steps) if adapts else [None]
    out: Estimates = {}
    for suffix, tested in evaluation_modes(config, learner):
        for ways in e.ways or [t.ways]:
            for shots in e.shots or [t.shots]:
                family = build_family(config, ways=ways, shots=shots, queries=e.queries)
                accs = accuracies(tested, family, meta_params, tasks, step_list, e.queries)
                for i, s in enumerate(step_list):
                    out[setting_name(ways, shots, s) + suffix] = estimate(accs[:, i])
        if not adapts:
            family = build_family(config, queries=e.queries)
            for name, values in episode_metrics(tested, family, meta_params, tasks, e.queries).items():
                if name != "accuracy":
                    out[name + suffix] = estimate(values)
    return out
