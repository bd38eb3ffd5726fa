"""Workers: plain worker classes, the one Ray actor shell around them, and the pool
(actor slots, shard scheduler, transports) that runs them."""

from metaorch.workers.chunks import chunk, in_order, shard
from metaorch.workers.pool import PoolExhausted, Resources, Transport, WorkerPool
from metaorch.workers.rollout import RolloutItem, RolloutPool, RolloutResult, RolloutTask, RolloutWorker
from metaorch.workers.worker import ChunkResult, MetaWorker, WorkItem, device_for

__all__ = [
    "ChunkResult",
    "MetaWorker",
    "PoolExhausted",
    "Resources",
    "RolloutItem",
    "RolloutPool",
    "RolloutResult",
    "RolloutTask",
    "RolloutWorker",
    "Transport",
    "WorkItem",
    "WorkerPool",
    "chunk",
    "device_for",
    "in_order",
    "shard",
]
