"""Asking a cluster's autoscaler for the pool's nodes, and letting them go again.

A pool's placement group is demand an autoscaler sees only once it exists, and metaorch
sizes the pool to what the cluster holds before creating it, so a cluster that scales
from zero (KubeRay, ``ray up``) would never be asked for nodes. ``request`` tells the
autoscaler, through ``ray.autoscaler.sdk.request_resources``, to scale until the pool's
bundles fit; the pool then starts once its minimum fits and grows onto the nodes that
follow (:meth:`~metaorch.workers.slots.ActorSlots.grow`).

The request outlives the driver (it is stored in the cluster, not the process) and a
cluster holds one (any later call replaces it), so :func:`release` must run when the job
ends: the Ray session does that (:func:`metaorch.orchestrator.session.ray_session`). On a
cluster without an autoscaler the request is stored and nobody reads it.
"""

from __future__ import annotations

import logging

from ray.autoscaler.sdk import request_resources

log = logging.getLogger(__name__)
_requested = False  # this process has a request outstanding: release() has something to undo


def request(bundles: list[dict[str, float]]) -> None:
    """Ask the autoscaler to scale until ``bundles`` fit (it replaces any earlier request). A
    request that fails is only a warning: the job still starts if its minimum fits."""
    global _requested
    try:
        request_resources(bundles=bundles)
    except Exception as exc:
        log.warning("could not ask the autoscaler for %d bundles: %s", len(bundles), exc)
        return
    _requested = True


def release() -> None:
    """Withdraw this process's request (a request with no bundles); nothing if it made none."""
    global _requested
    if not _requested:
        return
    try:
        request_resources()
    except Exception as exc:  # the cluster is gone: so is the request
        log.warning("could not withdraw the autoscaler request: %s", exc)
    _requested = False
