"""Task descriptors and the interface of a task family.

A descriptor is a few integers. Workers receive descriptors, never data, and rebuild the
task from them: a task is a pure function of (seed, split, iteration, index), so it does
not matter which worker builds it, how many there are, or whether it is built twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

# A batch of tasks, stacked on dim 0: support_x, support_y, query_x, query_y, ... (what a
# family builds and every learner consumes; tasks own it, algorithms import it from here)
TaskBatch = dict[str, torch.Tensor]
Split = Literal["train", "val", "test"]
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True, slots=True)
class TaskDescriptor:
    seed: int
    split: Split
    iteration: int
    index: int

    def rng(self) -> np.random.Generator:
        """This task's own random stream, independent of every other task's."""
        return np.random.default_rng([self.seed, _SPLIT_IDS[self.split], self.iteration, self.index])


def descriptors(seed: int, split: Split, iteration: int, count: int) -> list[TaskDescriptor]:
    return [TaskDescriptor(seed, split, iteration, i) for i in range(count)]


class TaskFamily(Protocol):
    """A distribution over tasks that builds stacked batches from descriptors."""

    input_dim: int
    output_dim: int
    loss: str  # "mse" or "cross_entropy"

    def batch(self, tasks: list[TaskDescriptor], queries: int | None = None) -> TaskBatch: ...
