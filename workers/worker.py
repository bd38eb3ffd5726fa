"""The worker: rebuilds tasks from descriptors and runs the inner loop for them.

A plain class, so tests call it without Ray; :mod:`workers.actor` turns it into an actor.
It is built from a picklable ``build`` callable (garage's WorkerFactory idea), so this
package never imports the driver's configuration.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from metaorch.algorithms.base import MetaLearner
from metaorch.tasks.base import TaskDescriptor, TaskFamily

Build = Callable[[], tuple[TaskFamily, MetaLearner]]


@dataclass(frozen=True)
class WorkItem:
    """A chunk of tasks: the unit of computation and of reduction order."""

    index: int
    tasks: tuple[TaskDescriptor, ...]


@dataclass
class ChunkResult:
    index: int
    direction: np.ndarray  # summed over the chunk's tasks
    pre_loss: np.ndarray  # per task
    post_loss: np.ndarray  # per task
    metrics: dict[str, np.ndarray] = field(default_factory=dict)  # per task, e.g. query accuracy


def device_for(num_gpus: float) -> torch.device:
    """A worker that was given (a fraction of) a GPU computes on it; Ray sets CUDA_VISIBLE_DEVICES."""
    if num_gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(max_bytes: int = 1 << 30) -> bool:
    """Let glibc's malloc keep up to ``max_bytes`` of freed memory instead of returning it.

    A Conv-4 MAML chunk allocates and frees the same ~15 MB activations dozens of times per
    outer update. By default glibc hands freed heap tops back to the OS, and every reuse
    then page-faults its memory in again (~40,000 faults per 8-task chunk here). Keeping
    it makes a chunk ~10% faster. A no-op (False) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    # 32 MB is glibc's largest mmap threshold; larger blocks are still mapped and unmapped
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, max_bytes))


class MetaWorker:
    """Outer-update contributions of task chunks: descriptors in, :class:`ChunkResult` out.

    Plain: no Ray, no threads or process settings (the actor shell, :mod:`workers.actor`,
    owns those), so the in-process transport and tests run it as it is.
    """

    def __init__(self, build: Build, device: torch.device = torch.device("cpu")):
        self.device = device
        self.family, self.learner = build()
        self.learner.model.to(self.device)

    def run(self, params: np.ndarray, items: Sequence[WorkItem]) -> list[ChunkResult]:
        """Outer-update contributions of each chunk, computed at ``params``."""
        meta_params = torch.as_tensor(np.array(params, copy=True), device=self.device)
        results = []
        for item in items:
            batch = {k: v.to(self.device) for k, v in self.family.batch(list(item.tasks)).items()}
            update = self.learner.outer_update(meta_params, batch)
            results.append(
                ChunkResult(
                    index=item.index,
                    direction=update.direction.cpu().numpy(),
                    pre_loss=update.pre_loss.cpu().numpy(),
                    post_loss=update.post_loss.cpu().numpy(),
                    metrics={k: v.cpu().numpy() for k, v in update.metrics.items()},
                )
            )
        return results
