"""Reduction of worker results into one outer step.

Chunks are added in task-index order with one fixed-shape sum, so the outer step is
bitwise the same whichever worker computed a chunk, how many workers there were, and
whether a chunk was computed twice after a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from metaorch.tasks.base import TaskDescriptor
from metaorch.workers.chunks import chunk as chunk_tasks, in_order
from metaorch.workers.worker import ChunkResult, WorkItem


def chunk(tasks: Sequence[TaskDescriptor], chunk_size: int) -> list[WorkItem]:
    """A meta-batch's work items (the workers' one chunking, :func:`workers.chunks.chunk`)."""
    return chunk_tasks(tasks, chunk_size, WorkItem)


@dataclass
class Reduced:
    direction: torch.Tensor  # mean over tasks
    pre_loss: np.ndarray  # per task, in task order
    post_loss: np.ndarray
    metrics: dict[str, np.ndarray]  # per task, in task order


def reduce_in_order(results: Sequence[ChunkResult], num_chunks: int, num_tasks: int) -> Reduced:
    ordered = in_order(results, num_chunks)
    total = torch.from_numpy(np.stack([r.direction for r in ordered])).sum(0)
    return Reduced(
        direction=total / num_tasks,
        pre_loss=np.concatenate([r.pre_loss for r in ordered]),
        post_loss=np.concatenate([r.post_loss for r in ordered]),
        metrics={k: np.concatenate([r.metrics[k] for r in ordered]) for k in ordered[0].metrics},
    )
