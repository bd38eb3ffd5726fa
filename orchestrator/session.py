"""Ray for one job: join the given cluster or start a local instance, and check capacity."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from orchestrator.config import WorkersConfig
from orchestrator.errors import UserError


@contextmanager
def ray_session(address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Reuse an existing connection (notebooks, tests), otherwise init and shut down after."""
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(
            address=address if address not in (None, "", "local") else None,
            num_cpus=num_cpus if address in (None, "", "local") else None,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    except ConnectionError as exc:
        raise UserError(f"Ray address {address}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()


def check_capacity(workers: WorkersConfig) -> None:
    """Refuse a pool that could never be scheduled rather than wait on it forever."""
    have = ray.cluster_resources()
    for key, per in (("CPU", workers.num_cpus), ("GPU", workers.num_gpus)):
        need = per * workers.num_workers
        if need > have.get(key, 0) + 1e-9:
            field = f"workers.num_{key.lower()}s"
            raise UserError(
                f"{field}={per} x workers.num_workers={workers.num_workers} needs {need:g} {key}; "
                f"the Ray cluster has {have.get(key, 0):g}"
            )
