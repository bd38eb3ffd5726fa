"""Ray worker actors and the pool that manages them."""

from workers.pool import PoolExhausted, Resources, Transport, WorkerPool
from workers.worker import ChunkResult, MetaWorker, WorkItem, device_for, shard

__all__ = [
    "ChunkResult",
    "MetaWorker",
    "PoolExhausted",
    "Resources",
    "Transport",
    "WorkItem",
    "WorkerPool",
    "device_for",
    "shard",
]
