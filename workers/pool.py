"""A fixed-size pool of worker actors that survives their deaths.

In the spirit of RLlib's FaultTolerantActorManager: each slot holds one actor; when an
actor dies mid-call, the slot gets a fresh actor and the same shard runs again. Because a
shard's result depends only on its task descriptors and the parameters, a re-run returns
exactly what the dead actor would have.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import ray
from ray.exceptions import RayActorError

from workers.worker import Build, ChunkResult, MetaWorker, WorkItem

log = logging.getLogger(__name__)
NAME_PREFIX = "metaorch-worker-"


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    threads: int = 1


class PoolExhausted(RuntimeError):
    """More worker deaths than ``max_restarts`` allows."""


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


class WorkerPool:
    def __init__(self, build: Build, num_workers: int, resources: Resources, max_restarts: int = 10):
        self.build = build
        self.resources = resources
        self.max_restarts = max_restarts
        self.restarts = 0
        self._actor_cls = ray.remote(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus)(MetaWorker)
        self._prefix = f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}"
        self.actors = [self._spawn(slot) for slot in range(num_workers)]

    def _spawn(self, slot: int):
        """Named ``metaorch-worker-<pool>-<slot>-<restart>`` so the dashboard shows who is who."""
        r = self.resources
        name = f"{self._prefix}-{slot}-{self.restarts}"
        return self._actor_cls.options(name=name).remote(self.build, r.threads, r.num_gpus)

    def _replace(self, slot: int) -> None:
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise PoolExhausted(f"{self.restarts} worker failures exceed workers.max_restarts={self.max_restarts}")
        log.warning("worker in slot %d died; starting a replacement (restart %d)", slot, self.restarts)
        try:
            ray.kill(self.actors[slot])
        except Exception:  # already gone
            pass
        self.actors[slot] = self._spawn(slot)

    def info(self) -> list[dict[str, object]]:
        return ray.get([a.info.remote() for a in self.actors])

    def run(self, params: ray.ObjectRef, items: Sequence[WorkItem]) -> list[ChunkResult]:
        """Run every item once; results come back sorted by item index."""
        shards = shard(items, len(self.actors))
        pending = {self.actors[s].run.remote(params, sh): s for s, sh in enumerate(shards)}
        results: list[ChunkResult] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            slot = pending.pop(ready[0])
            try:
                results.extend(ray.get(ready[0]))
            except RayActorError:
                self._replace(slot)
                pending[self.actors[slot].run.remote(params, shards[slot])] = slot
        results.sort(key=lambda r: r.index)
        return results

    def shutdown(self) -> None:
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:
                pass
        self.actors = []
