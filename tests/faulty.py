"""Test-only worker builds that misbehave on purpose: a straggler that sleeps on one task once,
workers that die from an iteration on, workers slowed down while a file exists.

Workers are separate processes, so "once" is a marker file: the first worker to build the
chosen task creates it and sleeps; every later build of that task (the re-dispatched shard)
runs at full speed. The module is pickled by value (``ray.cloudpickle``), so the workers
need not import ``tests/``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from metaorch.orchestrator.components import build_components
from metaorch.orchestrator.config import Config
from metaorch.tasks.base import TaskDescriptor


class SleepOnce:
    """A task family that delegates to the real one, but sleeps ``seconds`` on one task, once."""

    def __init__(self, family, marker: Path, iteration: int, index: int, seconds: float):
        self._family, self._marker, self._target, self._seconds = family, marker, (iteration, index), seconds

    def __getattr__(self, name: str):
        return getattr(self._family, name)

    def batch(self, tasks: Sequence[TaskDescriptor]):
        if any((t.iteration, t.index) == self._target for t in tasks):
            try:
                fd = os.open(self._marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                time.sleep(self._seconds)
        return self._family.batch(tasks)


def sleepy_build(config: Config, marker: str, iteration: int, index: int, seconds: float):
    family, learner = build_components(config)
    return SleepOnce(family, Path(marker), iteration, index, seconds), learner


class DieFrom:
    """A task family whose worker process dies on any training task from ``iteration`` on, so
    every replacement dies too: the pool runs out of restarts at that iteration."""

    def __init__(self, family, iteration: int):
        self._family, self._iteration = family, iteration

    def __getattr__(self, name: str):
        return getattr(self._family, name)

    def batch(self, tasks: Sequence[TaskDescriptor], **kw):
        if any(t.split == "train" and t.iteration >= self._iteration for t in tasks):
            os._exit(1)
        return self._family.batch(tasks, **kw)


def dying_build(config: Config, iteration: int):
    family, learner = build_components(config)
    return DieFrom(family, iteration), learner


class SlowWhile:
    """A task family that sleeps up to ``seconds`` per batch while ``hold`` exists, and no longer
    than that: a test holds a run back while it waits for the pool to react (a node's death or
    arrival), whatever this machine's speed, so the run can be short and the change still lands
    mid-run. A generous ``seconds`` costs nothing when the change comes early."""

    def __init__(self, family, hold: Path, seconds: float):
        self._family, self._hold, self._seconds = family, hold, seconds

    def __getattr__(self, name: str):
        return getattr(self._family, name)

    def batch(self, tasks: Sequence[TaskDescriptor], **kw):
        deadline = time.monotonic() + self._seconds
        while self._hold.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self._family.batch(tasks, **kw)


def slow_while_build(config: Config, hold: str, seconds: float):
    family, learner = build_components(config)
    return SlowWhile(family, Path(hold), seconds), learner
