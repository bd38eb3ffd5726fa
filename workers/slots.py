"""Actor slots and their lifecycle: placement groups, starting, replacing and adding actors.

In the spirit of RLlib's FaultTolerantActorManager, and like it blind to the work: each
slot holds one actor in one placement-group bundle; a slot whose actor died or hung gets a
fresh actor in the same bundle (:meth:`ActorSlots.replace`). What the actors compute, and
when an actor counts as hung, is the scheduler's and the transports' business.

Placement: the bundles form placement groups, SPREAD across nodes by default (``PACK`` as
an option); both are best effort, so when a node dies Ray reschedules its bundles onto the
nodes left (if they have room) and the replacement actors follow. A new actor only counts
as working once its ``info`` call returned (:meth:`ActorSlots.admit`), so a bundle waiting
for room never stalls an iteration. :meth:`ActorSlots.grow` adds slots (a new placement
group) when the cluster gains nodes, without blocking either. ``generation`` changes
whenever the set of working actors does: a compiled graph bound to them is stale then.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, get_current_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

Placement = Literal["spread", "pack"]

log = logging.getLogger(__name__)
NAME_PREFIX = "metaorch-worker-"
START_TIMEOUT_S = 600.0  # placing and starting the first actors; an autoscaler may need minutes


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    threads: int = 1

    def bundle(self) -> dict[str, float]:
        return {k: v for k, v in (("CPU", self.num_cpus), ("GPU", self.num_gpus)) if v > 0}


class PoolExhausted(RuntimeError):
    """More worker deaths than ``max_restarts`` allows, or no worker could be started."""


def enclosing_group(count: int) -> PlacementGroup | None:
    """The placement group this process runs in when it holds ``count`` bundles after its own first
    one: a Ray Tune trial (``metaorch tune``) reserves its workers' bundles so. The workers go
    there; a group of their own would wait for the resources the trial already holds."""
    group = get_current_placement_group()
    return group if group is not None and len(group.bundle_specs) == count + 1 else None


@dataclass
class Slot:
    group: PlacementGroup | None
    bundle: int
    actor: Any
    joining: ray.ObjectRef | None  # the new actor's ``info`` call until it answered; None once it works
    warm: bool = False  # has finished a call (a first call also warms torch up)


class ActorSlots:
    """``count`` actors of ``actor_cls(*args)``, kept alive up to ``max_restarts`` replacements."""

    def __init__(
        self,
        actor_cls: type,
        args: tuple[Any, ...],
        count: int,
        resources: Resources,
        placement: Placement = "spread",
        max_restarts: int = 10,
        start_timeout_s: float = START_TIMEOUT_S,
    ):
        self.resources, self.placement, self.max_restarts = resources, placement, max_restarts
        self.restarts = 0  # actors replaced, for any reason
        self.generation = 0
        self._args = args
        self._remote = ray.remote(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus)(actor_cls)
        self._prefix = f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}"
        self._groups: list[PlacementGroup] = []
        self._pending_group: PlacementGroup | None = None
        self.slots: list[Slot] = []
        inside = enclosing_group(count) if resources.bundle() else None
        group = inside or self._new_group(count)
        if group is not None and not group.wait(start_timeout_s):
            self.shutdown()
            raise PoolExhausted(f"{count} worker bundles {resources.bundle()} not placed within {start_timeout_s:.0f}s")
        self._add(group, count, first=1 if inside else 0)
        try:
            ray.get([s.joining for s in self.slots], timeout=start_timeout_s)
        except Exception:
            self.shutdown()
            raise
        for s in self.slots:
            s.joining = None

    # -- who is up ---------------------------------------------------------------------------
    @property
    def actors(self) -> list[Any]:
        """The actors that are up and take work."""
        return [s.actor for s in self.slots if s.joining is None]

    def working(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s.joining is None]

    def joining(self) -> dict[ray.ObjectRef, int]:
        """Starting actors' ``info`` calls -> their slots."""
        return {s.joining: i for i, s in enumerate(self.slots) if s.joining is not None}

    @property
    def size(self) -> int:
        """Slots, working or (re)starting."""
        return len(self.slots)

    def info(self) -> list[dict[str, object]]:
        """Every slot's actor (waiting for starting ones): pid, node, device, GPUs."""
        return ray.get([s.actor.info.remote() for s in self.slots])

    # -- starting and replacing ------------------------------------------------------------
    def _new_group(self, count: int) -> PlacementGroup | None:
        """One bundle per actor; None when an actor asks for no resources (nothing to reserve)."""
        bundle = self.resources.bundle()
        if not bundle:
            return None
        group = placement_group([bundle] * count, strategy=self.placement.upper())
        self._groups.append(group)
        return group

    def _add(self, group: PlacementGroup | None, count: int, first: int = 0) -> None:
        for bundle in range(first, first + count):
            self.slots.append(Slot(group, bundle, None, None))
            self._start(len(self.slots) - 1)

    def _start(self, index: int) -> None:
        """Named ``metaorch-worker-<pool>-<slot>-<restart>`` so the dashboard shows who is who."""
        slot = self.slots[index]
        options: dict[str, Any] = {"name": f"{self._prefix}-{index}-{self.restarts}"}
        if slot.group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(slot.group, slot.bundle)
        slot.actor = self._remote.options(**options).remote(*self._args)
        slot.joining = slot.actor.info.remote()
        slot.warm = False

    def replace(self, index: int, why: str) -> None:
        """A fresh actor in slot ``index``'s bundle; PoolExhausted past ``max_restarts``."""
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise PoolExhausted(f"{self.restarts} worker failures exceed workers.max_restarts={self.max_restarts} (last: {why})")
        log.warning("worker in slot %d %s; starting a replacement (restart %d)", index, why, self.restarts)
        self.generation += 1
        try:
            ray.kill(self.slots[index].actor)  # a hung actor holds its bundle until it is gone
        except Exception:  # already gone
            pass
        self._start(index)

    def started(self, index: int, ref: ray.ObjectRef) -> bool:
        """A starting actor answered: it works from now on, or it failed and is replaced."""
        try:
            ray.get(ref)
        except RayActorError as exc:
            self.replace(index, f"failed to start ({exc.__class__.__name__})")
            return False
        self.slots[index].joining = None
        self.generation += 1
        return True

    def admit(self, block: bool, timeout_s: float = START_TIMEOUT_S) -> None:
        """Put started actors to work; with ``block``, wait until at least one works."""
        deadline = time.monotonic() + timeout_s
        while True:
            joining = self.joining()
            if not joining:
                return
            wait = block and not self.actors
            remaining = max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(list(joining), num_returns=1 if wait else len(joining), timeout=remaining if wait else 0)
            for ref in ready:
                self.started(joining[ref], ref)
            if not block or self.actors:
                return
            if time.monotonic() >= deadline:
                raise PoolExhausted(f"no worker could be started within {timeout_s:.0f}s")

    def replace_dead(self, timeout_s: float = 60.0) -> None:
        """Probe every working actor; replace those that died or do not answer."""
        for index in self.working():
            try:
                ray.get(self.slots[index].actor.info.remote(), timeout=timeout_s)
            except (RayActorError, GetTimeoutError):
                self.replace(index, "died")

    def grow(self, target: int) -> None:
        """Add slots up to ``target`` once the cluster has room for them; never waits."""
        group = self._pending_group
        if group is not None:
            ready, _ = ray.wait([group.ready()], timeout=0)
            if ready:
                self._pending_group = None
                self._add(group, group.bundle_count)
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
                self._add(None, extra)
            else:
                self._pending_group = group

    def shutdown(self) -> None:
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
