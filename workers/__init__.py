"""Ray worker actors and the pool that manages them."""

from workers.pool import PoolExhausted, Resources, WorkerPool, shard
from workers.worker import ChunkResult, MetaWorker, WorkItem, device_for

__all__ = ["ChunkResult", "MetaWorker", "PoolExhausted", "Resources", "WorkItem", "WorkerPool", "device_for", "shard"]
