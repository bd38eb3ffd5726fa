"""The worker: rebuilds tasks from descriptors and runs the inner loop for them.

A plain class, so tests call it without Ray; :mod:`workers.pool` turns it into an actor.
It is built from a picklable ``build`` callable (garage's WorkerFactory idea), so this
package never imports the driver's configuration.
"""

from __future__ import annotations

import ctypes
import os
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


def shard(items: Sequence[WorkItem], parts: int) -> list[list[WorkItem]]:
    """Contiguous, near-equal shards; empty ones are dropped."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        end = start + size + (1 if p < extra else 0)
        if end > start:
            out.append(list(items[start:end]))
        start = end
    return out


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
    def __init__(self, build: Build, threads: int = 1, num_gpus: float = 0.0):
        torch.set_num_threads(threads)
        keep_freed_memory()
        self.device = device_for(num_gpus)
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

    def run_shard(self, inputs: tuple[np.ndarray, Sequence[WorkItem]], slot: int, parts: int) -> list[ChunkResult]:
        """Shard ``slot`` of ``parts``: the compiled-graph entry point, where every worker reads one input."""
        params, items = inputs
        shards = shard(items, parts)
        return self.run(params, shards[slot]) if slot < len(shards) else []

    def info(self) -> dict[str, object]:
        import ray

        ctx = ray.get_runtime_context()
        return {"pid": os.getpid(), "node_id": ctx.get_node_id(), "device": str(self.device), "gpu_ids": ray.get_gpu_ids()}
