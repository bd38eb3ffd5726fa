"""A pool of worker actors that survives their deaths, hangs and the loss of whole nodes.

In the spirit of RLlib's FaultTolerantActorManager: each slot holds one actor in one
placement-group bundle. A slot whose actor dies mid-call, or exceeds the per-shard
timeout (a straggler), gets a fresh actor in the same bundle, and its shard runs again
on whichever actor is free first. Because a shard's result depends only on its task
descriptors and the parameters, a re-run returns exactly what the lost actor would have,
and a result that arrives for a shard already done is discarded.

Placement: the workers' bundles form placement groups, SPREAD across nodes by default
(``PACK`` as an option); both are best effort, so when a node dies Ray reschedules its
bundles onto the nodes left (if they have room) and the replacement actors follow. A
replacement is only given work once it is up (its ``info`` call returned), so a bundle
waiting for room never stalls an iteration: the pool runs on the actors it has. ``grow``
adds slots (a new placement group) when the cluster gains nodes, without blocking either.

Two transports carry the parameters and shards, both once per iteration:

- ``calls`` (default): one ``ray.put`` of the parameters, one actor call per shard.
- ``compiled``: a Ray Compiled Graph over the same actors; the input is written once to
  shared-memory channels, saving ~2-3 ms per iteration (bench/maml_iteration.py). It is an
  alpha Ray API and is bound to the actors it was compiled with, so after a failure, or
  when actors join, the pool falls back to calls for that iteration and recompiles. It
  has no per-shard timeout.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayChannelError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from metaorch.workers.worker import Build, ChunkResult, MetaWorker, WorkItem, shard

Transport = Literal["calls", "compiled"]
Placement = Literal["spread", "pack"]

log = logging.getLogger(__name__)
NAME_PREFIX = "metaorch-worker-"
START_TIMEOUT_S = 600.0  # placing and starting the first actors; an autoscaler may need minutes
FIRST_CALL_FACTOR = 4  # an actor's first call also imports and warms up torch: its shard timeout is longer


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    threads: int = 1

    def bundle(self) -> dict[str, float]:
        return {k: v for k, v in (("CPU", self.num_cpus), ("GPU", self.num_gpus)) if v > 0}


class PoolExhausted(RuntimeError):
    """More worker deaths than ``max_restarts`` allows, or no worker could be started."""


@dataclass
class _Slot:
    group: PlacementGroup | None
    bundle: int
    actor: Any
    joining: ray.ObjectRef | None  # the new actor's ``info`` call until it answered; None once it works
    warm: bool = False  # has finished a call (a first call also warms torch up: it gets longer)


class WorkerPool:
    worker_cls: type = MetaWorker  # the actor's class: any with ``run``, ``run_shard`` and ``info`` (workers/rollout.py)

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
        self.build = build
        self.resources = resources
        self.max_restarts = max_restarts
        self.transport = transport
        self.placement = placement
        self.shard_timeout_s = shard_timeout_s
        self.restarts = 0  # actors replaced, for any reason
        self.stragglers = 0  # of those, replaced for exceeding shard_timeout_s
        self.discarded = 0  # results that came back for a shard already done
        self._graph = None
        self._actor_cls = ray.remote(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus)(self.worker_cls)
        self._prefix = f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}"
        self._groups: list[PlacementGroup] = []
        self._pending_group: PlacementGroup | None = None
        self.slots: list[_Slot] = []
        group = self._new_group(num_workers)
        if group is not None and not group.wait(start_timeout_s):
            self.shutdown()
            raise PoolExhausted(f"{num_workers} worker bundles {resources.bundle()} not placed within {start_timeout_s:.0f}s")
        self._add_slots(group, num_workers)
        try:
            ray.get([s.joining for s in self.slots], timeout=start_timeout_s)
        except Exception:
            self.shutdown()
            raise
        for s in self.slots:
            s.joining = None

    # -- actors and bundles --------------------------------------------------------------
    def _new_group(self, count: int) -> PlacementGroup | None:
        """One bundle per worker; None when a worker asks for no resources (nothing to reserve)."""
        bundle = self.resources.bundle()
        if not bundle:
            return None
        group = placement_group([bundle] * count, strategy=self.placement.upper())
        self._groups.append(group)
        return group

    def _add_slots(self, group: PlacementGroup | None, count: int) -> None:
        for bundle in range(count):
            slot = _Slot(group, bundle, None, None)
            self.slots.append(slot)
            self._start(len(self.slots) - 1)

    def _start(self, index: int) -> None:
        """Named ``metaorch-worker-<pool>-<slot>-<restart>`` so the dashboard shows who is who."""
        slot, r = self.slots[index], self.resources
        options: dict[str, Any] = {"name": f"{self._prefix}-{index}-{self.restarts}"}
        if slot.group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(slot.group, slot.bundle)
        slot.actor = self._actor_cls.options(**options).remote(self.build, r.threads, r.num_gpus)
        slot.joining = slot.actor.info.remote()
        slot.warm = False

    def _replace(self, index: int, why: str) -> None:
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise PoolExhausted(f"{self.restarts} worker failures exceed workers.max_restarts={self.max_restarts} (last: {why})")
        log.warning("worker in slot %d %s; starting a replacement (restart %d)", index, why, self.restarts)
        self._drop_graph()
        try:
            ray.kill(self.slots[index].actor)  # a straggler holds its bundle until it is gone
        except Exception:  # already gone
            pass
        self._start(index)

    def _admit(self, block: bool, timeout_s: float = START_TIMEOUT_S) -> None:
        """Put started replacements and new actors to work; with ``block``, wait until one works."""
        deadline = time.monotonic() + timeout_s
        while True:
            joining = {s.joining: i for i, s in enumerate(self.slots) if s.joining is not None}
            if not joining:
                return
            wait = block and not self.actors
            remaining = max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(list(joining), num_returns=1 if wait else len(joining), timeout=remaining if wait else 0)
            for ref in ready:
                self._started(joining[ref], ref)
            if not block or self.actors:
                return
            if time.monotonic() >= deadline:
                raise PoolExhausted(f"no worker could be started within {timeout_s:.0f}s")

    def _started(self, index: int, ref: ray.ObjectRef) -> bool:
        """A starting actor answered: it works from now on, or it failed and is replaced."""
        try:
            ray.get(ref)
        except RayActorError as exc:
            self._replace(index, f"failed to start ({exc.__class__.__name__})")
            return False
        self.slots[index].joining = None
        self._drop_graph()
        return True

    @property
    def actors(self) -> list[Any]:
        """The actors that are up and take work."""
        return [s.actor for s in self.slots if s.joining is None]

    @property
    def size(self) -> int:
        """Slots, working or (re)starting."""
        return len(self.slots)

    def grow(self, target: int) -> None:
        """Add slots up to ``target`` once the cluster has room for them; never waits."""
        group = self._pending_group
        if group is not None:
            ready, _ = ray.wait([group.ready()], timeout=0)
            if ready:
                self._pending_group = None
                self._add_slots(group, group.bundle_count)
                log.info("pool grows to %d workers", len(self.slots))
            elif group.bundle_count != target - len(self.slots):  # the room it waited for changed
                self._pending_group = None
                self._groups.remove(group)
                remove_placement_group(group)
            return
        extra = target - len(self.slots)
        if extra > 0:
            group = self._new_group(extra)
            if group is None:
                self._add_slots(None, extra)
            else:
                self._pending_group = group

    def info(self) -> list[dict[str, object]]:
        """Every slot's actor (waiting for starting ones): pid, node, device, GPUs."""
        return ray.get([s.actor.info.remote() for s in self.slots])

    # -- one iteration -------------------------------------------------------------------
    def run(self, params: np.ndarray, items: Sequence[WorkItem]) -> list[ChunkResult]:
        """Send ``params`` once, run every item once; results come back sorted by item index."""
        self._admit(block=not self.actors)
        if self.transport == "compiled":
            try:
                return self._run_compiled(params, items)
            except (RayActorError, RayChannelError):
                self._drop_graph()
                self._replace_dead()
                self._admit(block=True)
        return self._run_calls(ray.put(params), items)

    def _run_compiled(self, params: np.ndarray, items: Sequence[WorkItem]) -> list[ChunkResult]:
        if self._graph is None:
            from ray.dag import InputNode, MultiOutputNode

            actors = self.actors
            with InputNode() as inp:
                dag = MultiOutputNode([a.run_shard.bind(inp, slot, len(actors)) for slot, a in enumerate(actors)])
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
        for index, slot in enumerate(self.slots):
            if slot.joining is not None:
                continue
            try:
                ray.get(slot.actor.info.remote(), timeout=timeout_s)
            except (RayActorError, GetTimeoutError):
                self._replace(index, "died")

    def _run_calls(self, params: ray.ObjectRef, items: Sequence[WorkItem]) -> list[ChunkResult]:
        """Shards go to idle actors; a lost or late shard goes to the next idle one.

        ``running`` maps each call to (shard, slot, deadline). A call past its deadline
        is marked late and its shard queued again: whichever copy finishes first counts,
        the other's result is discarded. Actors still busy with a late call when the
        iteration is done (hung, or far slower than the rest) are replaced.
        """
        working = [i for i, s in enumerate(self.slots) if s.joining is None]
        shards = shard(items, len(working))
        todo: deque[int] = deque(range(len(shards)))
        idle: deque[int] = deque(working)
        done: dict[int, list[ChunkResult]] = {}
        running: dict[ray.ObjectRef, tuple[int, int, float]] = {}  # call -> (shard, slot, deadline)
        late: set[ray.ObjectRef] = set()

        def queue_again(sid: int) -> None:
            if sid not in done and sid not in todo and all(s != sid for r, (s, _, _) in running.items() if r not in late):
                todo.appendleft(sid)

        while len(done) < len(shards):
            while todo and idle:
                sid, index = todo.popleft(), idle.popleft()
                running[self.slots[index].actor.run.remote(params, shards[sid])] = (sid, index, self._deadline(index))
            joining = {s.joining: i for i, s in enumerate(self.slots) if s.joining is not None}
            if todo and not joining and running.keys() <= late:  # only stragglers left: replace the hung ones
                for ref in self._hung(running, late):
                    late.discard(ref)
                    self._replace(running.pop(ref)[1], f"still running one workers.shard_timeout_s={self.shard_timeout_s:g} after its deadline")
                joining = {s.joining: i for i, s in enumerate(self.slots) if s.joining is not None}
            waits = list(running) + (list(joining) if todo else [])  # a queued shard takes an actor that starts
            if not waits:
                raise PoolExhausted("no worker left to run the remaining shards")
            ready, _ = ray.wait(waits, num_returns=1, timeout=self._next_deadline(running, late))
            for ref in ready:
                if ref in joining:
                    if self._started(joining[ref], ref):
                        idle.append(joining[ref])
                    continue
                sid, index, _ = running.pop(ref)
                late.discard(ref)
                try:
                    result = ray.get(ref)
                except RayActorError as exc:
                    self._replace(index, f"died ({exc.__class__.__name__})")
                    queue_again(sid)
                    continue
                idle.append(index)
                self.slots[index].warm = True
                if sid in done:
                    self.discarded += 1  # the slower copy of a re-run shard
                else:
                    done[sid] = result
            if self.shard_timeout_s is not None:
                now = time.monotonic()
                for ref, (sid, _, deadline) in list(running.items()):
                    if ref not in late and now >= deadline:
                        late.add(ref)
                        self.stragglers += 1
                        log.warning("shard %d exceeded workers.shard_timeout_s=%g; running it again", sid, self.shard_timeout_s)
                        queue_again(sid)
        for ref in late & running.keys():
            self._replace(running[ref][1], f"exceeded workers.shard_timeout_s={self.shard_timeout_s:g}")
        self.discarded += len(running.keys() - late)  # copies still computing a shard already done
        return sorted((r for sid in done for r in done[sid]), key=lambda r: r.index)

    def _deadline(self, index: int) -> float:
        """When a call sent now becomes late: ``shard_timeout_s``, four times that for an actor's first call."""
        if self.shard_timeout_s is None:
            return float("inf")
        return time.monotonic() + self.shard_timeout_s * (1 if self.slots[index].warm else FIRST_CALL_FACTOR)

    def _hung(self, running: dict[ray.ObjectRef, tuple[int, int, float]], late: set[ray.ObjectRef]) -> list[ray.ObjectRef]:
        """Late calls one more timeout past their deadline: a slow call may still finish and free its actor."""
        now = time.monotonic()
        return [ref for ref in late if now >= running[ref][2] + self.shard_timeout_s]

    def _next_deadline(self, running: dict[ray.ObjectRef, tuple[int, int, float]], late: set[ray.ObjectRef]) -> float | None:
        """When the next call becomes late, or a late one hung."""
        if self.shard_timeout_s is None or not running:
            return None
        first = min(deadline + (self.shard_timeout_s if ref in late else 0) for ref, (_, _, deadline) in running.items())
        return max(0.0, first - time.monotonic())

    def shutdown(self) -> None:
        self._drop_graph()
        for s in self.slots:
            try:
                ray.kill(s.actor)
            except Exception:
                pass
        self.slots = []
        for group in self._groups:
            try:
                remove_placement_group(group)
            except Exception:
                pass
        self._groups, self._pending_group = [], None
