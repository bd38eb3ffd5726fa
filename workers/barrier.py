"""Where a worker's plans meet: each plan runs in its own thread, and its ``sample`` calls wait
here until every plan waits (or is done); then the worker steps all their requests together.

:class:`~metaorch.workers.rollout.RolloutWorker` uses it; it knows nothing about
environments, only about requests, their results and the plans' turns.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from metaorch.algorithms.rl.trajectories import Trajectories
from metaorch.tasks.base import TaskDescriptor

if TYPE_CHECKING:
    from metaorch.tasks.rl.base import TaskParams


@dataclass
class Request:
    """One ``sample`` call of one plan, waiting for the batched loop."""

    job: int  # position in the call's job list: the order of rows in a batch
    task: TaskParams
    descriptor: TaskDescriptor
    call: int
    params: torch.Tensor
    episodes: int
    deterministic: bool
    result: Trajectories | None = None
    error: BaseException | None = None



class Barrier:
    """Plans' ``sample`` calls meet here; the calling thread steps them once all plans wait.

    Plans take turns (``_turn``): one computes at a time, so they may share the policy's
    module (``functional_call`` swaps its parameters in place, which threads must not do at
    once); on one worker core nothing is lost, the point of the threads is the batching.
    """

    def __init__(self, plans: int):
        self._cond = threading.Condition()
        self._turn = threading.Lock()
        self._running = plans
        self._pending: list[Request] = []
        self._failure: BaseException | None = None

    def enter(self) -> None:
        self._turn.acquire()

    def wait_for(self, request: Request) -> Trajectories:
        self._turn.release()
        with self._cond:
            if self._failure is None:
                self._pending.append(request)
                self._running -= 1
                self._cond.notify_all()
                while request.result is None and request.error is None:
                    self._cond.wait()
            error = request.error or self._failure
        self._turn.acquire()
        if error is not None:
            raise RuntimeError("the batched rollout failed") from error
        return request.result

    def leave(self) -> None:
        self._turn.release()
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    def next_batch(self) -> list[Request] | None:
        """Every waiting request once no plan is computing; None when all plans are done."""
        with self._cond:
            while self._running > 0:
                self._cond.wait()
            batch, self._pending = sorted(self._pending, key=lambda r: r.job), []
        return batch or None

    def deliver(
        self, batch: list[Request], results: list[Trajectories | None], error: BaseException | None, final: bool = False
    ) -> None:
        """Wake the plans of ``batch``; ``final``: the loop stops, later samples fail at once."""
        with self._cond:
            for request, result in zip(batch, results):
                request.result, request.error = result, error
            self._running += len(batch)
            if final:
                self._failure = error
            self._cond.notify_all()
