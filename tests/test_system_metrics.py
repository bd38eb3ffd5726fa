"""System metrics: the driver's machine and the worker nodes, as ``system/...`` metrics of the run."""

from __future__ import annotations

import contextlib
import threading
import time

import psutil
import pytest
from conftest import tiny_config

from metaorch.orchestrator.supervised import SupervisedRunner
from metaorch.orchestrator.system_metrics import SystemMetrics, system_metrics, worker_nodes
from metaorch.orchestrator.mlflow_client import client
from metaorch.orchestrator.tracking import Tracker
from metaorch.orchestrator.trainer import train

CPU, MEMORY_PCT = "system/cpu_utilization_percentage", "system/system_memory_usage_percentage"


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    """A short run sampled every 0.2 s (one worker; long enough for several samples)."""
    root = tmp_path_factory.mktemp("system-metrics")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = tiny_config(
        outer={"iterations": 20, "meta_batch": 8},
        workers={"num_workers": 1, "chunk_size": 4},
        eval={"at_end": False, "plot_tasks": 0, "val_every": 20},
        checkpoint={"dir": str(root / "checkpoints"), "every": 100},
        tracking={"system_metrics_s": 0.2},
    )
    with contextlib.chdir(root):  # a sqlite store's artifacts go to ./mlruns
        result = train(config, tracking_uri=uri, progress=False)
    return client(uri), result, uri


def test_a_run_logs_its_drivers_cpu_and_memory(run):
    c, result, _ = run
    cpu = c.get_metric_history(result.run_id, CPU)
    memory = c.get_metric_history(result.run_id, MEMORY_PCT)
    assert len(cpu) >= 2 and sorted(m.step for m in cpu) == list(range(len(cpu)))
    assert all(0 <= m.value <= 100 for m in cpu) and any(m.value > 0 for m in cpu)
    used = psutil.virtual_memory().used / psutil.virtual_memory().total * 100
    assert all(0 < m.value <= 100 for m in memory) and abs(memory[-1].value - used) < 25


@pytest.fixture(scope="module")
def pool(ray_session):
    config = tiny_config(workers={"num_workers": 1, "chunk_size": 4})
    p = SupervisedRunner.make_pool(config, 1)
    yield p
    p.shutdown()


def test_each_worker_node_is_sampled_by_an_actor_there(pool, run):
    """The local node plays a worker node: the driver's own node is sampled in-process otherwise."""
    import ray

    [node] = worker_nodes(pool)
    assert node == ray.get(pool.actors[0].info.remote())["node_id"]  # where the worker runs
    tracker = Tracker.start(run[2], "system")  # the run's store: its tables exist
    monitor = SystemMetrics(tracker, 5.0, pool)
    monitor.here = "the driver's node is elsewhere"
    key = f"system/node-{node[:8]}/cpu_utilization_percentage"
    deadline = time.monotonic() + 60
    while key not in (sample := monitor.sample()):  # a node left out while its sampler starts (importing MLflow)
        assert time.monotonic() < deadline, sample
    assert 0 <= sample[f"system/node-{node[:8]}/cpu_utilization_percentage"] <= 100
    assert sample[f"system/node-{node[:8]}/system_memory_usage_megabytes"] > 0 and CPU in sample
    [actor] = monitor.nodes.values()
    monitor.stop()
    tracker.close()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.sample.remote(), timeout=30)


@pytest.mark.parametrize("interval_s, sampling", [(0.0, False), (0.1, True)])
def test_zero_is_off(interval_s, sampling, pool, run):
    tracker = Tracker.start(run[2], "system")
    with system_metrics(tracker, interval_s, pool):
        time.sleep(0.5)
        assert any(t.name == "system-metrics" for t in threading.enumerate()) == sampling
    tracker.close()
    assert (CPU in client(tracker.uri).get_run(tracker.run_id).data.metrics) == sampling
