"""Meta-test and meta-validation: post-adaptation loss after k inner steps, with a 95% CI."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from algorithms.base import map_tasks
from algorithms.maml import MAML
from tasks.base import TaskDescriptor, TaskFamily


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
    learner: MAML,
    family: TaskFamily,
    meta_params: torch.Tensor,
    tasks: Sequence[TaskDescriptor],
    steps: Sequence[int],
    queries: int,
    chunk_size: int = 100,
) -> np.ndarray:
    """Query loss of every task after each number of inner steps: shape [tasks, len(steps)]."""

    def per_task(mp: torch.Tensor, task: dict[str, torch.Tensor]) -> torch.Tensor:
        losses = [
            learner.loss(learner.adapt(mp, task["support_x"], task["support_y"], s), task["query_x"], task["query_y"])
            for s in steps
        ]
        return torch.stack(losses)

    device = meta_params.device
    out = []
    for start in range(0, len(tasks), chunk_size):
        batch = family.batch(list(tasks[start : start + chunk_size]), queries=queries)
        batch = {k: v.to(device) for k, v in batch.items()}
        out.append(map_tasks(per_task, meta_params.detach(), batch, learner.vectorize).detach().cpu().numpy())
    return np.concatenate(out)


def meta_test(
    learner: MAML,
    family: TaskFamily,
    meta_params: torch.Tensor,
    tasks: Sequence[TaskDescriptor],
    steps: Sequence[int],
    queries: int,
) -> dict[int, Estimate]:
    losses = adapted_losses(learner, family, meta_params, tasks, steps, queries)
    return {s: estimate(losses[:, i]) for i, s in enumerate(steps)}
