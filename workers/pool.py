"""The pool: actor slots, a shard scheduler and a transport, behind one small interface.

``WorkerPool(build, size, Resources(...), transport=...)`` then ``run(params, items)`` once
per iteration: parameters go out once, every item (a chunk of tasks) is computed once, and
the results come back in item order (:func:`~metaorch.workers.chunks.in_order`), so they
do not depend on the number of workers, on deaths, re-runs or the transport. The parts:

- :mod:`workers.slots`: actors in placement-group bundles, replaced when they die or hang,
  added when nodes join (RLlib's FaultTolerantActorManager); blind to the work.
- :mod:`workers.scheduler`: shards to idle actors, straggler re-runs, late results dropped.
- :mod:`workers.transports`: ``calls``, ``compiled`` (a Ray Compiled Graph) or
  ``inprocess`` (one worker in the driver, no Ray round trip).
- :mod:`workers.actor`: the one Ray actor class around the plain workers
  (:class:`~metaorch.workers.worker.MetaWorker`, :class:`~metaorch.workers.rollout.RolloutWorker`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from metaorch.workers.actor import WorkerActor
from metaorch.workers.chunks import in_order
from metaorch.workers.scheduler import ShardScheduler
from metaorch.workers.slots import NAME_PREFIX, START_TIMEOUT_S, ActorSlots, Placement, PoolExhausted, Resources
from metaorch.workers.transports import Calls, Compiled, InProcess, Transport
from metaorch.workers.worker import Build, ChunkResult, MetaWorker, WorkItem

__all__ = ["NAME_PREFIX", "PoolExhausted", "Resources", "Transport", "WorkerPool"]


class WorkerPool:
    worker_cls: type = MetaWorker  # the plain worker: ``worker_cls(build, device)`` with ``run(params, items)``

    def __init__(
        self,
        build: Build,
        num_workers: int,
        resources: Resources,
        max_restarts: int = 10,
        transport: Transport = "calls",
        placement: Placement = "spread",
        shard_timeout_s: float | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ):
        """``inprocess`` computes one worker in this process: ``num_workers``, ``placement``,
        ``max_restarts`` and the actors' ``num_cpus`` do not apply to it."""
        if transport != "calls" and shard_timeout_s is not None:
            raise ValueError(f"shard_timeout_s needs the calls transport; {transport} has no per-shard timeout")
        self.transport = transport
        self._scheduler: ShardScheduler | None = None
        self.slots: ActorSlots | InProcess
        if transport == "inprocess":
            self.slots = self._transport = InProcess(self.worker_cls, build, resources)
            return
        args = (self.worker_cls, build, resources.threads, resources.num_gpus)
        self.slots = ActorSlots(WorkerActor, args, num_workers, resources, placement, max_restarts, start_timeout_s)
        self._scheduler = ShardScheduler(self.slots, shard_timeout_s)
        calls = Calls(self._scheduler)
        self._transport = Compiled(self.slots, calls) if transport == "compiled" else calls

    def run(self, params: np.ndarray, items: Sequence[WorkItem]) -> list[ChunkResult]:
        """Send ``params`` once, run every item once; results come back sorted by item index."""
        return in_order(self._transport.run(params, items), len(items))

    @property
    def restarts(self) -> int:
        """Actors replaced, for any reason."""
        return self.slots.restarts

    @property
    def stragglers(self) -> int:
        """Shards that ran past ``shard_timeout_s`` and ran again."""
        return 0 if self._scheduler is None else self._scheduler.stragglers

    @property
    def actors(self) -> list[Any]:
        """The workers that are up and take work."""
        return self.slots.actors

    @property
    def size(self) -> int:
        """Slots, working or (re)starting."""
        return self.slots.size

    def grow(self, target: int) -> None:
        """Add workers up to ``target`` once the cluster has room for them; never waits."""
        self.slots.grow(target)

    def info(self) -> list[dict[str, object]]:
        """Every worker's pid, node, device and GPUs (waits for starting ones)."""
        return self.slots.info()

    def shutdown(self) -> None:
        self._transport.close()
        self.slots.shutdown()
