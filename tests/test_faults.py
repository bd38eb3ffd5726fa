"""Faults during a run: stragglers, a worker node dying, a node joining, MLflow going away.

Every check compares against an undisturbed run bitwise (``torch.equal``) and reads
MLflow back through its client. The multi-node checks run on a real
``ray.cluster_utils.Cluster`` in their own process (tests/cluster_scenarios.py); the
straggler and outage checks use the session's local instance, a test-only worker build
that sleeps on one task once (tests/faulty.py), and a real ``mlflow server``.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

import faulty
from conftest import MlflowServer, free_port, tiny_config
from metaorch.orchestrator.aggregation import chunk
from metaorch.orchestrator.components import build_components
from metaorch.orchestrator.tracking import Tracker
from metaorch.tasks.base import descriptors
from test_placement import run_scenario
from metaorch.workers.pool import Resources, WorkerPool

ray.cloudpickle.register_pickle_by_value(faulty)  # the workers need not import tests/


# -- stragglers ----------------------------------------------------------------------------
def _same(a, b) -> bool:
    return [r.index for r in a] == [r.index for r in b] and all(
        (x.direction == y.direction).all() and (x.post_loss == y.post_loss).all() for x, y in zip(a, b)
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


TIMEOUT_S = 5.0


@pytest.mark.parametrize("workers", [2, 1])
def test_a_straggling_shard_runs_again_and_its_worker_is_replaced(ray_session, tmp_path, workers):
    """Task 5 (chunk 1) sleeps 120 s once; with a 5 s timeout the iteration takes seconds.

    Two workers: the other one runs the shard again when it is free. One worker: it is
    replaced one more timeout later and its replacement runs the shard.
    """
    config = tiny_config(outer={"meta_batch": 12}, workers={"chunk_size": 3})
    params = build_components(config)[1].init_meta_params(0).numpy()
    items = chunk(descriptors(0, "train", 0, 12), 3)
    plain = WorkerPool(functools.partial(build_components, config), 2, Resources(num_cpus=0.5))
    try:
        reference = plain.run(params, items)
    finally:
        plain.shutdown()

    marker = tmp_path / "slept"
    build = functools.partial(faulty.sleepy_build, config, str(marker), 0, 5, 120.0)
    pool = WorkerPool(build, workers, Resources(num_cpus=0.5), shard_timeout_s=TIMEOUT_S)
    try:
        pool.run(params, chunk(descriptors(0, "train", 1, 12), 3))  # warm up: a first call is slow
        assert pool.stragglers == 0 and pool.restarts == 0
        t0 = time.monotonic()
        results = pool.run(params, items)
        elapsed = time.monotonic() - t0
        assert marker.exists(), "no worker slept: the test did not test anything"
        assert elapsed < 60, f"the iteration waited for the straggler ({elapsed:.1f}s)"
        assert _same(reference, results)
        assert pool.stragglers == 1 and pool.restarts == 1
        straggler = int(marker.read_text())
        deadline = time.monotonic() + 30
        while _alive(straggler):
            assert time.monotonic() < deadline, "the hung worker was not stopped"
            time.sleep(0.2)
        assert straggler not in {i["pid"] for i in pool.info()}  # waits until the replacement is up
        again = pool.run(params, items)  # the replacement takes work like any worker
        assert _same(reference, again)
        assert len(pool.actors) == workers
    finally:
        pool.shutdown()


# -- nodes leaving and joining -------------------------------------------------------------
ITERATIONS = 100  # the node changes come at iteration 20 and the run is held back until the pool reacted


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    return run_scenario("faults", tmp_path_factory.mktemp("faults"), str(ITERATIONS), timeout=500)


def test_worker_node_removed_mid_run(faults):
    removed = faults["removed"]
    assert removed["fired"] and removed["killed_before_end"], f"the node died after the run ended: {faults}"
    assert removed["iterations"] == ITERATIONS
    assert removed["restarts"] >= 1
    assert removed["same_params"], "a node death changed the result"
    steps = removed["restarts_metric"]
    assert steps and steps[-1][1] == removed["restarts"], "MLflow did not record the restarts"


def test_node_added_mid_run_grows_an_elastic_pool(faults):
    added = faults["added"]
    assert added["fired"], f"the node joined after the run ended: {faults}"
    active = [v for _, v in added["active_metric"]]
    assert active[0] == 2 and max(active) == 3, f"the pool did not grow onto the new node: {active}"
    assert added["restarts"] == 0
    assert added["same_params"], "growing the pool changed the result"


# -- a tracking outage ---------------------------------------------------------------------
OUTAGE_ITERATIONS = 150  # checkpointed while the server is down: more steps than buffer_max (100) holds


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_training_goes_on_through_a_tracking_outage(ray_session, workdir, mlflow_server, caplog):
    """The server stops after iteration 10, once it holds those steps, and comes back only once the
    run has checkpointed OUTAGE_ITERATIONS more iterations (progress, not a fixed time): meanwhile
    training goes on at full speed, and afterwards every step is in MLflow (spilled to disk, replayed)."""
    from mlflow.tracking import MlflowClient

    from metaorch.orchestrator.trainer import train

    caplog.set_level(logging.WARNING, logger="metaorch.orchestrator.tracking")
    n = 400
    config = tiny_config(
        outer={"iterations": n}, eval={"at_end": False, "plot_tasks": 0, "val_every": 10**6},
        checkpoint={"every": 25}, tracking={"buffer_max": 100},
    )  # fmt: skip
    outage: dict[str, float] = {}
    client = MlflowClient(mlflow_server.url)

    def checkpointed() -> int:
        """The newest iteration the run has checkpointed (0 before its first)."""
        return max((int(p.stem.removeprefix("ckpt_")) for p in workdir.glob("checkpoints/*/ckpt_*.pt")), default=0)

    def logged() -> int:
        experiment = client.get_experiment_by_name(config.tracking.experiment)
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return len(client.get_metric_history(runs[0].info.run_id, "train/loss_post")) if runs else 0

    def stop_at(done: int, metrics: dict, tracker) -> None:
        """The report of iteration 10 (in the training thread, so the outage starts at the same
        step on a machine of any speed): once the server holds those 10 steps, stop it."""
        if done != 10:
            return
        deadline = time.monotonic() + 120
        while logged() < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        outage["stop"] = time.time()
        mlflow_server.stop()
        outage["down"], outage["down_at"] = time.time(), done
        controller.start()

    def restart() -> None:
        """Start the server again on the same port once the run has checkpointed
        OUTAGE_ITERATIONS more iterations (or, failing that, after 300 s)."""
        deadline = time.monotonic() + 300
        try:
            while checkpointed() < outage["down_at"] + OUTAGE_ITERATIONS and time.monotonic() < deadline:
                time.sleep(0.05)
            outage["held"], outage["down_until"] = time.time(), checkpointed()
        finally:
            mlflow_server.start()  # whatever happened: the run must be able to deliver and end
            outage["back"] = time.time()

    controller = threading.Thread(target=restart, daemon=True)
    result = train(config, tracking_uri=mlflow_server.url, progress=False, report=stop_at)
    controller.join(timeout=180)
    assert "back" in outage, "the server was not restarted"
    assert outage["down_until"] >= outage["down_at"] + OUTAGE_ITERATIONS, f"training stalled during the outage: {outage}"

    c = MlflowClient(mlflow_server.url)
    assert c.get_run(result.run_id).info.status == "FINISHED"
    for key in ("train/loss_post", "train/loss_pre", "time/iteration_s", "outer/lr"):
        steps = sorted(m.step for m in c.get_metric_history(result.run_id, key))
        assert steps == list(range(1, n + 1)), f"{key}: {len(steps)} values for {n} steps"
    times = sorted(c.get_metric_history(result.run_id, "time/iteration_s"), key=lambda m: m.step)
    during = [m.value for m in times if outage["stop"] * 1000 <= m.timestamp <= outage["back"] * 1000]
    assert len(during) >= OUTAGE_ITERATIONS, f"only {len(during)} iterations ran while the server was down"
    assert max(during) < 5.0, f"an iteration took {max(during):.2f}s during the outage"
    # full speed: a blocked client would stall training (the client's default retries last minutes)
    before = [m.timestamp / 1000 for m in times if m.step >= 2 and m.timestamp < outage["stop"] * 1000]
    rate_before = (len(before) - 1) / (before[-1] - before[0])
    down = [m for m in times if outage["down"] * 1000 <= m.timestamp <= outage["held"] * 1000]
    rate_during = len(down) / (outage["held"] - outage["down"])
    assert rate_during > 0.25 * rate_before, f"{rate_during:.1f} iterations/s while the server was down, {rate_before:.1f} before"
    assert any("written to" in r.getMessage() for r in caplog.records), "nothing was spilled to disk"
    spill = Path(workdir / "checkpoints" / result.run_id / "tracking-spill")
    assert spill.is_dir() and not list(spill.iterdir()), "spill files left behind after the replay"


def test_dead_server_spills_past_the_buffer_bound(workdir, caplog):
    """Against a server that never answers, memory holds at most ``buffer_max`` steps; the rest is on disk."""
    caplog.set_level(logging.WARNING, logger="metaorch.orchestrator.tracking")
    tracker = Tracker(f"http://127.0.0.1:{free_port()}", run_id="0" * 32, experiment_id="0",
                      buffer_max=100, spill_dir=workdir / "spill")
    for step in range(1_000):
        tracker.log_metrics({"loss": float(step)}, step=step)
    deadline = time.monotonic() + 30
    while tracker.spilled < 800:
        assert time.monotonic() < deadline, f"only {tracker.spilled} steps spilled"
        time.sleep(0.05)
    assert tracker._held <= 101
    tracker.close(timeout=1)
    undelivered = workdir / "spill" / "undelivered.jsonl"
    assert [int(line.split(",")[-2]) for line in undelivered.read_text().splitlines()] == list(range(1_000))
    assert sorted(p.name for p in (workdir / "spill").iterdir()) == ["undelivered.jsonl"]
