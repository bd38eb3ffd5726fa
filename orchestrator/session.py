"""Ray for one job: join the given cluster or start a local instance, and check capacity."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import ray
import torch

from metaorch.orchestrator.config import LearnerConfig, WorkersConfig
from metaorch.orchestrator.errors import UserError


@contextmanager
def ray_session(address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Reuse an existing connection (notebooks, tests), otherwise init and shut down after."""
    if ray.is_initialized():
        yield
        return
    try:
        local = address in (None, "", "local")
        ray.init(
            # "local": always a private instance; Ray's own default (None) would join a
            # `ray start` cluster that happens to run on this machine. Use "auto" for that.
            address="local" if local else address,
            num_cpus=num_cpus if local else None,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    except ConnectionError as exc:
        raise UserError(f"Ray address {address}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()


def capacity(workers: WorkersConfig, reserved_gpus: float = 0.0) -> int:
    """How many workers the cluster's nodes hold in all (whatever else runs on them now)."""
    have = ray.cluster_resources()
    fits = [
        int((have.get(key, 0) - reserved + 1e-9) // per)
        for key, per, reserved in (("CPU", workers.num_cpus, 0.0), ("GPU", workers.num_gpus, reserved_gpus))
        if per > 0
    ]
    return max(0, min(fits)) if fits else 10_000


def target_workers(workers: WorkersConfig, reserved_gpus: float = 0.0) -> int:
    """The pool size the cluster allows now: num_workers, or for ``auto`` what fits, up to max_workers."""
    if workers.num_workers != "auto":
        return workers.num_workers
    return min(capacity(workers, reserved_gpus), workers.max_workers or 10_000)


def check_capacity(workers: WorkersConfig, reserved_gpus: float = 0.0) -> int:
    """The pool's starting size; refuses a pool that could never be scheduled rather than wait forever.

    A fixed ``num_workers`` must fit the cluster as it is now (an autoscaling cluster:
    use ``auto``, which starts with what fits and grows as nodes join).
    """
    have = ray.cluster_resources()
    count = workers.num_workers if workers.num_workers != "auto" else 1
    for key, per, reserved in (("CPU", workers.num_cpus, 0.0), ("GPU", workers.num_gpus, reserved_gpus)):
        need = per * count
        if need > have.get(key, 0) - reserved + 1e-9:
            field = f"workers.num_{key.lower()}s"
            by = f"workers.num_workers={workers.num_workers}" if workers.num_workers != "auto" else "one worker (workers.num_workers=auto)"
            extra = f" ({reserved:g} of them for the learner)" if reserved else ""
            hint = "; workers.num_workers=auto starts with what fits and grows as nodes join" if workers.num_workers != "auto" else ""
            raise UserError(f"{field}={per} x {by} needs {need:g} {key}; the Ray cluster has {have.get(key, 0):g}{extra}{hint}")
    return max(1, target_workers(workers, reserved_gpus))


def learner_in_actor(learner: LearnerConfig, workers: WorkersConfig) -> bool:
    """``auto``: an actor only if the driver's node has no GPU and other nodes have one to spare."""
    if learner.placement != "auto":
        return learner.placement == "actor"
    if learner.num_gpus <= 0 or torch.cuda.is_available():
        return False
    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if any(n["NodeID"] == here and n["Resources"].get("GPU", 0) > 0 for n in nodes):
        return False  # the driver's node has the GPU: a driver that sees it uses it
    elsewhere = sum(n["Resources"].get("GPU", 0) for n in nodes if n["NodeID"] != here)
    workers_need = workers.num_gpus * (workers.num_workers if workers.num_workers != "auto" else 1)
    return elsewhere - workers_need >= learner.num_gpus - 1e-9
