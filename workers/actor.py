"""The one Ray actor class: a plain worker inside, the process's Ray plumbing around it.

garage's split: a plain ``Worker`` built by a picklable factory does the work; a thin Ray
actor (its ``SamplerWorker``) hosts it. Here the factory is ``(worker_cls, build)`` and
:class:`WorkerActor` hosts any class with ``worker_cls(build, device)`` and
``run(params, items) -> results``: :class:`~metaorch.workers.worker.MetaWorker` and
:class:`~metaorch.workers.rollout.RolloutWorker`. The shell owns what belongs to the process
(torch threads, malloc, the device Ray gave it, ``info``) and the compiled graph's entry point.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from metaorch.workers.chunks import shard
from metaorch.workers.worker import device_for, keep_freed_memory


def process_info(device: torch.device) -> dict[str, object]:
    """Where a worker computes: pid, Ray node, device, GPUs (the driver's when Ray is not up)."""
    import ray

    up = ray.is_initialized()
    return {
        "pid": os.getpid(),
        "node_id": ray.get_runtime_context().get_node_id() if up else None,
        "device": str(device),
        "gpu_ids": ray.get_gpu_ids() if up else [],
    }


class WorkerActor:
    """``ray.remote(WorkerActor)`` is every pool's actor; it holds one plain worker."""

    def __init__(self, worker_cls: type, build: Any, threads: int = 1, num_gpus: float = 0.0):
        torch.set_num_threads(threads)
        keep_freed_memory()
        self.device = device_for(num_gpus)
        self.worker = worker_cls(build, self.device)

    def run(self, params: Any, items: Sequence[Any]) -> list[Any]:
        return self.worker.run(params, items)

    def run_shard(self, inputs: tuple[Any, Sequence[Any]], slot: int, parts: int) -> list[Any]:
        """Shard ``slot`` of ``parts``: the compiled graph's entry point, where every actor reads one input."""
        params, items = inputs
        shards = shard(items, parts)
        return self.run(params, shards[slot]) if slot < len(shards) else []

    def info(self) -> dict[str, object]:
        return process_info(self.device)
