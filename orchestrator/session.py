"""Ray for one job: join the given cluster or start a local instance, and size the pool to it (waiting for an autoscaler where asked)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import ray
import torch

from metaorch.orchestrator.config import LearnerConfig, WorkersConfig
from metaorch.orchestrator.errors import UserError
from metaorch.workers import autoscale
from metaorch.workers.slots import Resources

NODES_POLL_S = 0.5  # how often a pool waiting for nodes looks at the cluster


@contextmanager
def ray_session(address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Reuse an existing connection (notebooks, tests), otherwise init and shut down after.
    Either way the job's request to the autoscaler (:func:`check_capacity`) ends with it."""
    if ray.is_initialized():
        try:
            yield
        finally:
            autoscale.release()
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
        autoscale.release()
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
    """The pool size the cluster allows now: what fits, up to num_workers (auto: up to max_workers)."""
    top = workers.num_workers if workers.num_workers != "auto" else workers.max_workers or 10_000
    return min(capacity(workers, reserved_gpus), top)


def fewest(workers: WorkersConfig) -> int:
    """The workers a run needs to start: ``min_workers``, by default num_workers (auto: one)."""
    if workers.min_workers is not None:
        return workers.min_workers
    return workers.num_workers if workers.num_workers != "auto" else 1


def check_capacity(workers: WorkersConfig, reserved_gpus: float = 0.0) -> int:
    """The pool's starting size, once the cluster holds :func:`fewest` workers; refuses a pool
    that the cluster does not hold by then rather than wait forever.

    A cluster short of the pool is asked for its bundles (:func:`workers.autoscale.request`:
    an autoscaler starts nodes for them) and watched for ``wait_for_nodes_s``; the run starts
    as soon as ``fewest`` fit and the loop grows the pool onto the nodes that follow.
    """
    need = fewest(workers)
    want = workers.num_workers if workers.num_workers != "auto" else need
    if capacity(workers, reserved_gpus) < want:
        bundle = Resources(workers.num_cpus, workers.num_gpus).bundle()
        autoscale.request([bundle] * want + ([{"GPU": reserved_gpus}] if reserved_gpus else []))
        if workers.wait_for_nodes_s > 0 and capacity(workers, reserved_gpus) < need:
            print(f"[metaorch] waiting up to {workers.wait_for_nodes_s:g}s for the cluster to hold {need} workers", flush=True)
        deadline = time.monotonic() + workers.wait_for_nodes_s
        while capacity(workers, reserved_gpus) < need and time.monotonic() < deadline:
            time.sleep(NODES_POLL_S)
    have = ray.cluster_resources()
    for key, per, reserved in (("CPU", workers.num_cpus, 0.0), ("GPU", workers.num_gpus, reserved_gpus)):
        if per * need > have.get(key, 0) - reserved + 1e-9:
            raise UserError(_short(workers, key, per, need, have.get(key, 0), reserved))
    return max(1, target_workers(workers, reserved_gpus))


def _short(workers: WorkersConfig, key: str, per: float, need: int, have: float, reserved: float) -> str:
    """The one line for a cluster that does not hold the pool's minimum: the fields, their values, the way out."""
    if workers.min_workers is not None:
        by = f"workers.min_workers={need}"
    elif workers.num_workers == "auto":
        by = "one worker (workers.num_workers=auto)"
    else:
        by = f"workers.num_workers={need}"
    extra = f" ({reserved:g} of them for the learner)" if reserved else ""
    waited = f" after waiting workers.wait_for_nodes_s={workers.wait_for_nodes_s:g}" if workers.wait_for_nodes_s > 0 else ""
    hints = [] if workers.wait_for_nodes_s > 0 else ["set workers.wait_for_nodes_s to wait for an autoscaler"]
    if workers.num_workers != "auto" and need > 1:
        hints.append("lower workers.min_workers or use workers.num_workers=auto to start with what fits and grow as nodes join")
    hint = "; " + "; ".join(hints) if hints else ""
    return f"workers.num_{key.lower()}s={per} x {by} needs {per * need:g} {key}; the Ray cluster has {have:g}{extra}{waited}{hint}"


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
