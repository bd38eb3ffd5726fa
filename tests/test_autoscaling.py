"""Autoscaling clusters: a pool asks the autoscaler for its nodes and starts once its minimum is up.

The cluster is Ray's own fake multi-node autoscaler (the ``fake_multinode`` provider behind
``ray.cluster_utils.AutoscalingCluster``): a head with no CPUs and a node type of 1 CPU,
0 to 2 nodes, which the autoscaler starts as raylets on this machine when asked. The scenario
runs as its own process (``python tests/test_autoscaling.py WORKDIR``; a process drives one
Ray instance, and the test session already drives its own) and writes what it saw to
``WORKDIR/result.json``. It starts the head itself rather than through
``AutoscalingCluster.start``, which runs ``ray stop --force`` (every Ray process of this user,
the test session's instance included) and reads a base config the ray wheel does not ship.

The scenario takes about a minute and cannot take much less: the head's start (~15 s on a
loaded 2-core machine), the autoscaler's launches of two nodes one after the other (5-10 s),
the runs, a wait of ``wait_for_nodes_s`` that must expire, and the head's shutdown. One
scenario serves every assertion here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ITERATIONS = 30
EXPIRE_S = 3.0  # the wait that must run out (2 nodes at most: a 3-worker minimum is never met)


@pytest.fixture(scope="module")
def scaled(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("autoscaling")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, __file__, str(workdir)], cwd=workdir, capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads((workdir / "result.json").read_text())
    result["scenario_s"] = time.monotonic() - t0
    print(f"autoscaling scenario: {json.dumps({k: v for k, v in result.items() if k.endswith('_s')})}")
    return result


def test_a_pool_starts_on_a_cluster_scaled_from_zero_and_grows_as_nodes_arrive(scaled):
    grown = scaled["grown"]
    assert scaled["cpus_at_start"] == 0, "the cluster did not start from zero worker nodes"
    assert grown["requested"] == [{"CPU": 1.0}, {"CPU": 1.0}], "the pool did not ask the autoscaler for its bundles"
    active = [v for _, v in grown["active_metric"]]
    assert active[0] == 1 and max(active) == 2, f"the pool should start with min_workers=1 and grow to 2: {active}"
    assert grown["iterations"] == ITERATIONS and grown["restarts"] == 0


def test_the_autoscaled_run_trains_the_same_parameters_as_a_fixed_size_run(scaled):
    assert scaled["grown"]["same_params"], "starting small and growing changed the result"


def test_the_resource_request_is_released_at_the_end_of_the_run(scaled):
    assert scaled["grown"]["request_after"] == []
    assert scaled["expired"]["request_after"] == []


def test_a_wait_that_expires_below_the_minimum_exits_2_with_nothing_written(scaled):
    expired = scaled["expired"]
    assert expired["exit_code"] == 2
    message = expired["message"]
    assert "workers.min_workers=3" in message and f"workers.wait_for_nodes_s={EXPIRE_S:g}" in message, message
    assert "needs 3 CPU; the Ray cluster has 2" in message, message
    assert "\n" not in message
    assert expired["waited_s"] >= EXPIRE_S
    assert expired["files"] == [], f"a refused run left files behind: {expired['files']}"


def test_min_workers_above_the_pool_size_is_refused():
    from metaorch.orchestrator.config import from_dict
    from metaorch.orchestrator.errors import UserError

    with pytest.raises(UserError, match="workers.min_workers=3 exceeds workers.num_workers=2"):
        from_dict({"workers": {"num_workers": 2, "min_workers": 3}})
    with pytest.raises(UserError, match="workers.min_workers=5 exceeds workers.max_workers=4"):
        from_dict({"workers": {"num_workers": "auto", "max_workers": 4, "min_workers": 5}})


# -- the scenario, in its own process ------------------------------------------------------------
def _cluster_config(gcs: str) -> dict:
    """Ray's fake multi-node example config: a 0-CPU head and 0 to 2 nodes of 1 CPU. Idle
    nodes stay 5 minutes, so the nodes the first run brought up serve the later ones."""
    empty: dict = {k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                                   "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files",
                                   "rsync_exclude", "rsync_filter")}  # fmt: skip
    return {
        "cluster_name": "metaorch-fake", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs},
        "available_node_types": {
            "ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "file_mounts": {},
        "file_mounts_sync_continuously": False, **empty,
    }  # fmt: skip


def _start_head(workdir: Path) -> tuple[subprocess.Popen, str, Path]:
    from conftest import free_ports

    import ray

    (port,) = free_ports(1)
    gcs = f"{ray._private.services.get_node_ip_address()}:{port}"
    temp_dir = Path(f"/tmp/ray-as-{port}")  # short: Ray's socket paths must fit in 107 bytes
    config = workdir / "autoscaling.json"
    config.write_text(json.dumps(_cluster_config(gcs)))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    log = workdir / "head.log"
    with open(log, "wb") as out:
        head = subprocess.Popen(
            [str(bin_dir / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=0", "--num-gpus=0",
             f"--autoscaling-config={config}", f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text(errors="replace"):
        assert head.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    return head, gcs, temp_dir


def _request() -> list[dict]:
    """The autoscaler's standing resource request (the v1 autoscaler's key in the cluster's KV store)."""
    from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    stored = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(stored) if stored else []


def _watch(hold: Path, seen: dict, stop: threading.Event) -> None:
    """Record the request while the run waits for nodes; let the run go on at full speed once two
    workers answer (tests/faulty.py's SlowWhile holds it back until then, whatever this machine's speed)."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    from metaorch.workers.pool import NAME_PREFIX

    while not stop.is_set():
        if "requested" not in seen and _request():
            seen["requested"] = _request()
        up = 0
        for name in (n for n in ray.util.list_named_actors() if n.startswith(NAME_PREFIX)):
            try:
                ray.get(ray.get_actor(name).info.remote(), timeout=5.0)  # behind at most one held batch (<= 0.5 s)
                up += 1
            except (RayActorError, GetTimeoutError, ValueError):
                continue
        if up >= 2:
            hold.unlink(missing_ok=True)
        stop.wait(0.2)


def scenario(workdir: Path) -> dict:
    import functools

    import ray
    import torch
    from mlflow.tracking import MlflowClient

    import faulty
    from conftest import stop_group, tiny_config
    from metaorch.orchestrator.errors import UserError
    from metaorch.orchestrator.supervised import SupervisedRunner
    from metaorch.orchestrator.trainer import train

    out: dict = {}
    t0 = time.monotonic()
    head, gcs, temp_dir = _start_head(workdir)
    out["head_start_s"] = time.monotonic() - t0
    try:
        ray.init(address=gcs, logging_level="WARNING")
        out["cpus_at_start"] = ray.cluster_resources().get("CPU", 0)
        ray.cloudpickle.register_pickle_by_value(faulty)  # the workers need not import tests/
        hold = workdir / "hold"
        SupervisedRunner.worker_build = staticmethod(functools.partial(faulty.slow_while_build, hold=str(hold), seconds=0.5))
        os.chdir(workdir)
        quiet = {"at_end": False, "plot_tasks": 0, "val_every": 10**6}

        def config(checkpoint: dict | None = None, **workers):
            return tiny_config(outer={"iterations": ITERATIONS, "meta_batch": 8}, eval=quiet, checkpoint=checkpoint or {},
                               workers={"num_workers": 2, "num_cpus": 1, "chunk_size": 2, **workers})  # fmt: skip

        # From zero worker nodes: start once one worker fits, grow onto the second node.
        hold.touch()
        seen: dict = {}
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(hold, seen, stop), daemon=True)
        watcher.start()
        t0 = time.monotonic()
        try:
            grown = train(config(min_workers=1, wait_for_nodes_s=120, grow_every_s=0.5), progress=False)
        finally:
            stop.set()
            watcher.join()
        out["grown_s"] = time.monotonic() - t0
        history = MlflowClient(grown.tracking_uri).get_metric_history(grown.run_id, "workers/active")
        out["grown"] = {"requested": seen.get("requested"), "request_after": _request(), "iterations": grown.iterations,
                        "restarts": grown.restarts, "active_metric": sorted((m.step, m.value) for m in history)}  # fmt: skip

        # The same job on one worker in the driver (no actors to start, no tracking).
        t0 = time.monotonic()
        fixed = train(config(num_workers=1, transport="inprocess"), tracking_uri="none", progress=False)
        out["fixed_s"] = time.monotonic() - t0
        out["grown"]["same_params"] = bool(torch.equal(grown.meta_params, fixed.meta_params))

        # A minimum the cluster (2 nodes at most) never holds: the wait runs out.
        refused = workdir / "refused"
        refused.mkdir()
        t0 = time.monotonic()
        try:
            train(config(num_workers=3, min_workers=3, wait_for_nodes_s=EXPIRE_S, checkpoint={"dir": str(refused / "checkpoints")}),
                  progress=False, tracking_uri=f"sqlite:///{refused / 'mlflow.db'}")  # fmt: skip
            out["expired"] = {"exit_code": 0, "message": "trained"}
        except UserError as exc:
            out["expired"] = {"exit_code": exc.exit_code, "message": str(exc)}
        out["expired"].update(waited_s=time.monotonic() - t0, request_after=_request(),
                              files=sorted(str(p.relative_to(refused)) for p in refused.rglob("*")))  # fmt: skip
    finally:
        ray.shutdown()
        t0 = time.monotonic()
        os.killpg(head.pid, signal.SIGKILL)  # a test cluster: nothing to drain, and SIGTERM takes ~15 s
        head.wait()
        stop_group(head, str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
        out["head_stop_s"] = time.monotonic() - t0
    return out


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.pop("RAY_ADDRESS", None)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest's tiny_config, faulty
    target = Path(sys.argv[1])
    (target / "result.json").write_text(json.dumps(scenario(target), indent=1))
