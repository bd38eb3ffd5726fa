"""The shard scheduler: which actor computes which shard, straggler re-runs, late results dropped.

Shards go to idle working actors; a shard whose actor died, or that runs past
``shard_timeout_s`` (a straggler), runs again on whichever actor is free first. A shard's
result depends only on its task descriptors and the parameters, so a re-run returns
exactly what the lost actor would have; whichever copy finishes first counts and a result
that arrives for a shard already done is dropped. Actors still busy with a late call when
the iteration is done (hung, or far slower than the rest) are replaced.

The scheduler sends nothing itself: a transport hands it ``call(actor, shard) -> ObjectRef``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError

from metaorch.workers.chunks import shard
from metaorch.workers.slots import ActorSlots, PoolExhausted

log = logging.getLogger(__name__)
FIRST_CALL_FACTOR = 4  # an actor's first call also imports and warms up torch: its shard timeout is longer
Call = Callable[[Any, list[Any]], ray.ObjectRef]
Running = dict[ray.ObjectRef, tuple[int, int, float]]  # call -> (shard, slot, deadline)


class ShardScheduler:
    def __init__(self, slots: ActorSlots, shard_timeout_s: float | None = None):
        self.slots = slots
        self.shard_timeout_s = shard_timeout_s
        self.stragglers = 0  # shards that ran past shard_timeout_s and were run again

    def run(self, call: Call, items: Sequence[Any]) -> list[Any]:
        """Every item once, sharded over the working actors; the results of all shards, unordered.

        ``running`` maps each call to (shard, slot, deadline). A call past its deadline is
        marked late and its shard queued again.
        """
        slots = self.slots
        slots.admit(block=not slots.actors)
        working = slots.working()
        shards = shard(items, len(working))
        todo: deque[int] = deque(range(len(shards)))
        idle: deque[int] = deque(working)
        done: dict[int, list[Any]] = {}
        running: Running = {}
        late: set[ray.ObjectRef] = set()

        def queue_again(sid: int) -> None:
            if sid not in done and sid not in todo and all(s != sid for r, (s, _, _) in running.items() if r not in late):
                todo.appendleft(sid)

        while len(done) < len(shards):
            while todo and idle:
                sid, index = todo.popleft(), idle.popleft()
                running[call(slots.slots[index].actor, shards[sid])] = (sid, index, self._deadline(index))
            joining = slots.joining()
            if todo and not joining and running.keys() <= late:  # only stragglers left: replace the hung ones
                for ref in self._hung(running, late):
                    late.discard(ref)
                    slots.replace(running.pop(ref)[1], f"still running one workers.shard_timeout_s={self.shard_timeout_s:g} after its deadline")
                joining = slots.joining()
            waits = list(running) + (list(joining) if todo else [])  # a queued shard takes an actor that starts
            if not waits:
                raise PoolExhausted("no worker left to run the remaining shards")
            ready, _ = ray.wait(waits, num_returns=1, timeout=self._next_deadline(running, late))
            for ref in ready:
                if ref in joining:
                    if slots.started(joining[ref], ref):
                        idle.append(joining[ref])
                    continue
                sid, index, _ = running.pop(ref)
                late.discard(ref)
                try:
                    result = ray.get(ref)
                except RayActorError as exc:
                    slots.replace(index, f"died ({exc.__class__.__name__})")
                    queue_again(sid)
                    continue
                idle.append(index)
                slots.slots[index].warm = True
                done.setdefault(sid, result)  # the slower copy of a re-run shard is dropped
            self._mark_late(running, late, queue_again)
        for ref in late & running.keys():
            slots.replace(running[ref][1], f"exceeded workers.shard_timeout_s={self.shard_timeout_s:g}")
        return [r for sid in done for r in done[sid]]

    def _mark_late(self, running: Running, late: set[ray.ObjectRef], queue_again: Callable[[int], None]) -> None:
        if self.shard_timeout_s is None:
            return
        now = time.monotonic()
        for ref, (sid, _, deadline) in list(running.items()):
            if ref not in late and now >= deadline:
                late.add(ref)
                self.stragglers += 1
                log.warning("shard %d exceeded workers.shard_timeout_s=%g; running it again", sid, self.shard_timeout_s)
                queue_again(sid)

    def _deadline(self, index: int) -> float:
        """When a call sent now becomes late: ``shard_timeout_s``, four times that for an actor's first call."""
        if self.shard_timeout_s is None:
            return float("inf")
        return time.monotonic() + self.shard_timeout_s * (1 if self.slots.slots[index].warm else FIRST_CALL_FACTOR)

    def _hung(self, running: Running, late: set[ray.ObjectRef]) -> list[ray.ObjectRef]:
        """Late calls one more timeout past their deadline: a slow call may still finish and free its actor."""
        now = time.monotonic()
        return [ref for ref in late if now >= running[ref][2] + self.shard_timeout_s]

    def _next_deadline(self, running: Running, late: set[ray.ObjectRef]) -> float | None:
        """When the next call becomes late, or a late one hung."""
        if self.shard_timeout_s is None or not running:
            return None
        first = min(deadline + (self.shard_timeout_s if ref in late else 0) for ref, (_, _, deadline) in running.items())
        return max(0.0, first - time.monotonic())
