"""Ray worker actors and the pool that manages them."""

from metaorch.workers.pool import PoolExhausted, Resources, Transport, WorkerPool
from metaorch.workers.rollout import MLPBuild, RolloutItem, RolloutPool, RolloutResult, RolloutTask, RolloutWorker, SamplePlan
from metaorch.workers.worker import ChunkResult, MetaWorker, WorkItem, device_for, shard

__all__ = [
    "ChunkResult",
    "MLPBuild",
    "MetaWorker",
    "PoolExhausted",
    "Resources",
    "RolloutItem",
    "RolloutPool",
    "RolloutResult",
    "RolloutTask",
    "RolloutWorker",
    "SamplePlan",
    "Transport",
    "WorkItem",
    "WorkerPool",
    "device_for",
    "shard",
]
