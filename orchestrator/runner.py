"""The runner interface: one method family's side of a run, driven by one loop shell.

The shell (:func:`orchestrator.loop.run_loop`) owns what every run shares: tracking,
checkpoints, SIGTERM, ``outer.max_minutes`` and pool growth. A runner owns what differs:
what the workers are built from, one meta-iteration on the pool, the parameters workers
act with, the state a checkpoint keeps, and the meta-test. The registry names each
method's runner (:mod:`orchestrator.registry`): supervised meta-learning
(:class:`orchestrator.supervised.SupervisedRunner`) and MAML-TRPO, RL², PEARL
(:mod:`orchestrator.rl_training`).

Life of a runner: constructed before Ray starts (bad input exits 2 there); inside the Ray
session ``reserve``-d (the learner's GPUs, before the workers are counted) and ``start``-ed
with the initial or resumed parameters; then ``iteration`` after ``iteration``, ``finish``
at the end and ``close`` always.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import torch

from metaorch.orchestrator.config import Config
from metaorch.orchestrator.evaluation import Estimates
from metaorch.orchestrator.tracking import Tracker
from metaorch.workers.pool import Resources, WorkerPool


class Runner(ABC):
    pool_class: ClassVar[type[WorkerPool]]
    test_on_pool: ClassVar[bool]  # the meta-test runs on the workers (else in the driver, without a pool)
    reserved_gpus: float = 0.0  # GPUs a learner actor holds, which workers cannot have (set by ``reserve``)
    worker_data: Any = None  # an object-store reference every worker's build receives (set by ``start``)

    @staticmethod
    @abstractmethod
    def worker_build(config: Config) -> Any:
        """What each worker builds itself from (called in the worker; picklable via ``partial``)."""

    @classmethod
    def make_pool(cls, config: Config, size: int, data: Any = None) -> WorkerPool:
        """The pool of ``size`` workers this runner's iterations and meta-test run on (``data``: ``worker_data``)."""
        w = config.workers
        build: Callable[[], Any] = partial(cls.worker_build, config) if data is None else partial(cls.worker_build, config, data)
        return cls.pool_class(
            build,
            size,
            Resources(num_cpus=w.num_cpus, num_gpus=w.num_gpus, threads=w.threads),
            max_restarts=w.max_restarts,
            transport=w.transport,
            placement=w.placement,
            shard_timeout_s=w.shard_timeout_s,
        )

    @classmethod
    def check(cls, config: Config) -> None:
        """Bad input only this runner can spot (data, meta-test tasks), refused before Ray starts."""

    @abstractmethod
    def __init__(self, config: Config):
        """The local side, before Ray starts: checks the input, builds what the driver needs."""

    @abstractmethod
    def initial_params(self) -> torch.Tensor:
        """θ₀ from ``config.seed``."""

    def reserve(self) -> float:
        """Inside the Ray session, before the workers are counted: the GPUs the learner will hold."""
        return self.reserved_gpus

    @abstractmethod
    def start(self, params: torch.Tensor) -> None:
        """Inside the Ray session: the learner at ``params`` (initial or resumed)."""

    @abstractmethod
    def iteration(self, pool: WorkerPool, it: int) -> dict[str, float]:
        """Meta-iteration ``it`` on the pool, and its metrics."""

    def validate(self, done: int) -> dict[str, float]:
        """Metrics computed only now and then (meta-validation); logged when not empty."""
        return {}

    @abstractmethod
    def shown(self, metrics: dict[str, float]) -> dict[str, float]:
        """The few values the progress line shows."""

    @abstractmethod
    def worker_params(self) -> torch.Tensor:
        """The flat vector the workers act with (CPU, float32): what checkpoints keep."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The learner's state beyond the parameters (optimizer, buffers), for checkpoints."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @classmethod
    @abstractmethod
    def meta_test(cls, config: Config, params: torch.Tensor, pool: WorkerPool | None) -> Estimates:
        """``config.eval``'s meta-test of ``params`` (``pool`` is None when not ``test_on_pool``)."""

    @classmethod
    @abstractmethod
    def log_meta_test(cls, tracker: Tracker, config: Config, estimates: Estimates) -> None:
        """The meta-test's numbers (and figures) into its nested run."""

    def finish(self, params: torch.Tensor, tracker: Tracker) -> None:
        """Artifacts of the trained run beside the meta-test and the model (plots)."""

    def close(self) -> None:
        """Release what ``start`` acquired (a learner actor)."""
