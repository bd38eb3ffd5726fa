"""A fixed-size pool of worker actors that survives their deaths.

In the spirit of RLlib's FaultTolerantActorManager: each slot holds one actor; when an
actor dies mid-call, the slot gets a fresh actor and the same shard runs again. Because a
shard's result depends only on its task descriptors and the parameters, a re-run returns
exactly what the dead actor would have.

Two transports carry the parameters and shards, both once per iteration:

- ``calls`` (default): one ``ray.put`` of the parameters, one actor call per shard.
- ``compiled``: a Ray Compiled Graph over the same actors; the input is written once to
  shared-memory channels, saving ~2-3 ms per iteration (bench/maml_iteration.py). It is an
  alpha Ray API and is bound to the actors it was compiled with, so after a failure the pool
  falls back to calls for that iteration and recompiles.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayChannelError

from workers.worker import Build, ChunkResult, MetaWorker, WorkItem, shard

Transport = Literal["calls", "compiled"]

log = logging.getLogger(__name__)
NAME_PREFIX = "metaorch-worker-"


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    threads: int = 1


class PoolExhausted(RuntimeError):
    """More worker deaths than ``max_restarts`` allows."""


class WorkerPool:
    def __init__(
        self,
        build: Build,
        num_workers: int,
        resources: Resources,
        max_restarts: int = 10,
        transport: Transport = "calls",
    ):
        self.build = build
        self.resources = resources
        self.max_restarts = max_restarts
        self.transport = transport
        self.restarts = 0
        self._graph = None
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
        self._drop_graph()
        try:
            ray.kill(self.actors[slot])
        except Exception:  # already gone
            pass
        self.actors[slot] = self._spawn(slot)

    def info(self) -> list[dict[str, object]]:
        return ray.get([a.info.remote() for a in self.actors])

    def run(self, params: np.ndarray, items: Sequence[WorkItem]) -> list[ChunkResult]:
        """Send ``params`` once, run every item once; results come back sorted by item index."""
        if self.transport == "compiled":
            try:
                return self._run_compiled(params, items)
            except (RayActorError, RayChannelError):
                self._drop_graph()
                self._replace_dead()
        return self._run_calls(ray.put(params), items)

    def _run_compiled(self, params: np.ndarray, items: Sequence[WorkItem]) -> list[ChunkResult]:
        if self._graph is None:
            from ray.dag import InputNode, MultiOutputNode

            parts = len(self.actors)
            with InputNode() as inp:
                dag = MultiOutputNode([a.run_shard.bind(inp, slot, parts) for slot, a in enumerate(self.actors)])
            self._graph = dag.experimental_compile()
        outputs = ray.get(self._graph.execute((params, list(items))))
        return sorted((r for out in outputs for r in out), key=lambda r: r.index)

    def _drop_graph(self) -> None:
        graph, self._graph = self._graph, None
        if graph is not None:
            try:
                graph.teardown()
            except Exception:  # already torn down by the failure that brought us here
                pass

    def _replace_dead(self, timeout_s: float = 60.0) -> None:
        for slot, actor in enumerate(self.actors):
            try:
                ray.get(actor.info.remote(), timeout=timeout_s)
            except (RayActorError, GetTimeoutError):
                self._replace(slot)

    def _run_calls(self, params: ray.ObjectRef, items: Sequence[WorkItem]) -> list[ChunkResult]:
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
        self._drop_graph()
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:
                pass
        self.actors = []
