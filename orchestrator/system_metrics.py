"""System metrics: CPU, memory and GPU use of the driver's machine and of every node that runs
workers, as the run's ``system/...`` metrics, every ``tracking.system_metrics_s`` seconds (0: off).

The samples are MLflow's own monitors' (``mlflow.system_metrics``: psutil, and pynvml where an
NVIDIA GPU is), so the keys are those of MLflow's System metrics tab:
``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes``,
``system/system_memory_usage_percentage``, ``system/gpu_0_utilization_percentage``, ...; a
worker node's carry its name, ``system/node-<first 8 of its Ray node id>/...`` (MLflow's
``node_id`` convention for multi-node runs). MLflow's ``SystemMetricsMonitor`` itself is not
used: it logs through its own blocking client and asks the server for the run's status at
every sample. Here one driver thread samples and queues the figures on the run's
:class:`~orchestrator.tracking.Tracker`, whose sink never blocks training.

Worker nodes are the nodes of the pool's placement-group bundles other than the driver's
(whose machine the driver samples itself): each gets one :class:`NodeSampler` actor, with no
CPU and pinned to its node, asked once per interval; a node that does not answer within half
an interval is left out of that sample rather than waited for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from metaorch.orchestrator.tracking import Tracker
from metaorch.workers.pool import WorkerPool

log = logging.getLogger(__name__)
PREFIX = "system/"


class Sampler:
    """MLflow's CPU (with memory) monitor, and its GPU monitor where pynvml finds a GPU."""

    def __init__(self) -> None:
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        self.monitors: list[Any] = [CPUMonitor()]
        try:
            self.monitors.append(GPUMonitor())
        except Exception:  # no pynvml, no driver, no GPU
            pass
        self.sample()  # psutil's first CPU reading covers nothing; start the clock now

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in self.monitors:
            m.collect_metrics()
            out |= m.aggregate_metrics()
            m.clear_metrics()
        return out


class NodeSampler:
    """A :class:`Sampler` on one worker node (a Ray actor with no CPU, pinned there)."""

    def __init__(self) -> None:
        self.sampler = Sampler()

    def sample(self) -> dict[str, float]:
        return self.sampler.sample()


def worker_nodes(pool: WorkerPool) -> set[str]:
    """Ray node ids of the pool's bundles (slots without a bundle, or in-process: none)."""
    slots = getattr(pool.slots, "slots", [])
    nodes = set()
    for s in list(slots):
        if s.group is not None:
            placed = ray.util.placement_group_table(s.group).get("bundles_to_node_id", {})
            if s.bundle in placed:
                nodes.add(placed[s.bundle])
    return nodes


class SystemMetrics:
    """The sampling thread of one run."""

    def __init__(self, tracker: Tracker, interval_s: float, pool: WorkerPool):
        self.tracker, self.interval_s, self.pool = tracker, interval_s, pool
        self.here = ray.get_runtime_context().get_node_id()
        self.local = Sampler()
        self.nodes: dict[str, Any] = {}  # node id -> NodeSampler actor
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)

    def _node_actor(self, node: str) -> Any:
        if node not in self.nodes:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            remote = ray.remote(num_cpus=0)(NodeSampler)
            self.nodes[node] = remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
        return self.nodes[node]

    def sample(self) -> dict[str, float]:
        """One sample of the driver's machine and of every worker node that answers in time."""
        metrics = {PREFIX + k: v for k, v in self.local.sample().items()}
        calls = {self._node_actor(n).sample.remote(): n for n in worker_nodes(self.pool) - {self.here}}
        ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=self.interval_s / 2) if calls else ([], [])
        for ref in ready:
            try:
                metrics |= {f"{PREFIX}node-{calls[ref][:8]}/{k}": v for k, v in ray.get(ref).items()}
            except Exception as exc:  # the node went away; the pool replaces its workers
                log.debug("no system metrics from node %s: %s", calls[ref], exc)
        return metrics

    def _run(self) -> None:
        step = 0
        while not self._stop.wait(self.interval_s):
            try:
                self.tracker.log_metrics(self.sample(), step=step)
                step += 1
            except Exception as exc:  # never the run's problem
                log.warning("system metrics: sampling failed (%s); stopped", exc)
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval_s + 5)
        for actor in self.nodes.values():
            ray.kill(actor)


@contextmanager
def system_metrics(tracker: Tracker, interval_s: float, pool: WorkerPool) -> Iterator[None]:
    """Sampling while the block runs; off for ``interval_s`` 0, tracking off, or without psutil."""
    if interval_s <= 0 or tracker.client is None:
        yield
        return
    try:
        monitor = SystemMetrics(tracker, interval_s, pool)
    except ImportError as exc:
        log.warning("system metrics off: %s (pip install psutil)", exc)
        yield
        return
    monitor.start()
    try:
        yield
    finally:
        monitor.stop()
