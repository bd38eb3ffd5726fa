"""How parameters and shards reach the workers, once per iteration each; three ways.

- :class:`Calls` (default): one ``ray.put`` of the parameters, one actor call per shard,
  scheduled by :class:`~metaorch.workers.scheduler.ShardScheduler` (re-runs, timeouts).
- :class:`Compiled`: a Ray Compiled Graph over the same actors; the input is written once
  to shared-memory channels, saving ~2-3 ms per iteration (bench/maml_iteration.py). It is
  an alpha Ray API, bound to the actors it was compiled with: after a failure, or when the
  working actors change, that iteration goes by calls and the graph is compiled again. It
  has no per-shard timeout (config validation refuses ``shard_timeout_s`` with it).
- :class:`InProcess`: one plain worker in the driver's own process, as garage's
  LocalSampler and RLlib with zero env runners: no Ray round trip, no serialisation.

All three return the same chunk results, bit for bit: a chunk's result depends only on its
tasks and the parameters (tests/test_orchestration.py, tests/test_faults.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError, RayChannelError

from metaorch.workers.actor import process_info
from metaorch.workers.scheduler import ShardScheduler
from metaorch.workers.slots import ActorSlots, Resources
from metaorch.workers.worker import device_for

Transport = Literal["calls", "compiled", "inprocess"]


class Calls:
    def __init__(self, scheduler: ShardScheduler):
        self.scheduler = scheduler

    def run(self, params: np.ndarray, items: Sequence[Any]) -> list[Any]:
        ref = ray.put(params)
        return self.scheduler.run(lambda actor, shard: actor.run.remote(ref, shard), items)

    def close(self) -> None:
        pass


class Compiled:
    def __init__(self, slots: ActorSlots, fallback: Calls):
        self.slots, self.fallback = slots, fallback
        self._graph: Any = None
        self._generation = -1  # the slots' generation the graph was compiled for

    def run(self, params: np.ndarray, items: Sequence[Any]) -> list[Any]:
        self.slots.admit(block=not self.slots.actors)
        try:
            return self._run(params, items)
        except (RayActorError, RayChannelError):
            self.close()
            self.slots.replace_dead()
            return self.fallback.run(params, items)

    def _run(self, params: np.ndarray, items: Sequence[Any]) -> list[Any]:
        if self._graph is not None and self._generation != self.slots.generation:
            self.close()
        if self._graph is None:
            from ray.dag import InputNode, MultiOutputNode

            actors = self.slots.actors
            with InputNode() as inp:
                dag = MultiOutputNode([a.run_shard.bind(inp, slot, len(actors)) for slot, a in enumerate(actors)])
            self._graph, self._generation = dag.experimental_compile(), self.slots.generation
        outputs = ray.get(self._graph.execute((params, list(items))))
        return [r for out in outputs for r in out]

    def close(self) -> None:
        graph, self._graph = self._graph, None
        if graph is not None:
            try:
                graph.teardown()
            except Exception:  # already torn down by the failure that brought us here
                pass


class InProcess:
    """One worker in the driver; it is its own slot manager (one slot, never replaced).

    The driver computes a chunk with ``resources.threads`` torch threads, as an actor would, and
    everything else with its own: neither a chunk's arithmetic nor the driver's (the meta-test,
    thread-count dependent in its convolutions) may depend on the transport.
    """

    restarts = 0
    size = 1

    def __init__(self, worker_cls: type, build: Any, resources: Resources):
        self._threads = resources.threads
        self.device = device_for(resources.num_gpus)
        with self._worker_threads():
            self.worker = worker_cls(build, self.device)
        self.actors = [self.worker]

    @contextlib.contextmanager
    def _worker_threads(self) -> Iterator[None]:
        driver = torch.get_num_threads()
        torch.set_num_threads(self._threads)
        try:
            yield
        finally:
            torch.set_num_threads(driver)

    def run(self, params: np.ndarray, items: Sequence[Any]) -> list[Any]:
        with self._worker_threads():
            return self.worker.run(params, items)

    def grow(self, target: int) -> None:
        """Nothing to grow: one worker, in this process."""

    def info(self) -> list[dict[str, object]]:
        return [process_info(self.device)]

    def close(self) -> None:
        """Nothing to close: the driver has its threads back after every call."""

    def shutdown(self) -> None:
        """No actors to stop."""
