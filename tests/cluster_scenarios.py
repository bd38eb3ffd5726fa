"""Multi-node scenarios on a real ``ray.cluster_utils.Cluster``, run as their own process.

A process can be the driver of one Ray instance only, and the test session already drives
its own (tests/conftest.py), so tests/test_placement.py and tests/test_faults.py run
``python tests/cluster_scenarios.py SCENARIO WORKDIR``; the scenario writes what it saw to
``WORKDIR/result.json`` and the test asserts on it. Each scenario starts its cluster (a
head and worker nodes, each its own raylet on this machine) and shuts it down at exit.

    placement   where pool workers (spread, pack, fractional GPUs) and the learner land
    faults      a worker node removed mid-run, then a node added mid-run to an elastic pool
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.pop("RAY_ADDRESS", None)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest's tiny_config, faulty

import ray  # noqa: E402
import torch  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.exceptions import GetTimeoutError, RayActorError  # noqa: E402

import faulty  # noqa: E402
from conftest import tiny_config  # noqa: E402
from metaorch.orchestrator.components import build_components  # noqa: E402
from metaorch.orchestrator.config import LearnerConfig, WorkersConfig  # noqa: E402
from metaorch.orchestrator.learner import RemoteLearner  # noqa: E402
from metaorch.orchestrator.session import learner_in_actor  # noqa: E402
from metaorch.orchestrator.supervised import SupervisedRunner  # noqa: E402
from metaorch.orchestrator.trainer import train  # noqa: E402
from metaorch.workers.pool import NAME_PREFIX, Resources, WorkerPool  # noqa: E402

# Dead nodes are noticed within ~10 s instead of Ray's default ~30 s (not faster: on a loaded
# machine a live raylet's health checks lag, and a node wrongly marked dead is killed).
FIRST_CHECKPOINT = 20  # the faults scenario's node changes come when a run has checkpointed this iteration
FAST_FAILURE = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_failure_threshold": 10}


def _cluster(head: dict, nodes: list[dict]) -> Cluster:
    cluster = Cluster(initialize_head=True, head_node_args={"include_dashboard": False, **head})
    for args in nodes:
        cluster.add_node(**args)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    return cluster


def _nodes_of(pool: WorkerPool) -> list[str]:
    return [i["node_id"] for i in pool.info()]


def _wait_released(timeout_s: float = 60.0) -> None:
    """Until every CPU and GPU of the cluster is free again (actor kills and group removals are async)."""
    deadline = time.monotonic() + timeout_s
    total = ray.cluster_resources()
    while time.monotonic() < deadline:
        free = ray.available_resources()
        if all(free.get(k, 0) >= total.get(k, 0) - 1e-9 for k in ("CPU", "GPU")):
            return
        time.sleep(0.2)
    raise TimeoutError(f"resources not released after {timeout_s}s: {ray.available_resources()} of {total}")


def placement(workdir: Path) -> dict:
    """Head (1 CPU, no GPU, the driver's node), a CPU node and a node with one logical GPU."""
    cluster = _cluster({"num_cpus": 1, "num_gpus": 0}, [{"num_cpus": 2}, {"num_cpus": 2, "num_gpus": 1}])
    head_id = ray.get_runtime_context().get_node_id()
    gpu_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU"))
    config = tiny_config()
    build = functools.partial(build_components, config)
    out: dict = {"head": head_id, "gpu_node": gpu_node}
    for name, placement_, res in (
        ("spread", "spread", Resources(num_cpus=1)),
        ("pack", "pack", Resources(num_cpus=1)),
        ("fractional_gpu", "spread", Resources(num_cpus=0.5, num_gpus=0.5)),
    ):
        pool = WorkerPool(build, 2, res, placement=placement_)
        try:
            infos = pool.info()
            out[name] = {"nodes": [i["node_id"] for i in infos], "gpu_ids": [i["gpu_ids"] for i in infos]}
        finally:
            pool.shutdown()
        _wait_released()  # PACK is best effort: it spreads if the last pool's bundles still hold CPUs

    out["learner_auto_actor"] = learner_in_actor(LearnerConfig(), WorkersConfig())
    out["learner_auto_actor_if_workers_take_the_gpu"] = learner_in_actor(
        LearnerConfig(), WorkersConfig(num_workers=2, num_gpus=0.5)
    )
    learner = RemoteLearner(torch.zeros(3), config.outer, num_gpus=1)
    out["learner_actor"] = learner.where()
    learner.close()

    quiet = {"at_end": False, "plot_tasks": 0}
    os.chdir(workdir)
    finals = {}
    for where in ("driver", "auto"):
        finals[where] = train(tiny_config(eval=quiet, learner={"placement": where}), progress=False).meta_params
    out["learner_actor_same_result"] = bool(torch.equal(finals["driver"], finals["auto"]))
    out["trained"] = not torch.equal(finals["driver"], build_components(config)[1].init_meta_params(0))
    ray.shutdown()
    cluster.shutdown()
    return out


def _workers() -> set[str]:
    return {n for n in ray.util.list_named_actors() if n.startswith(NAME_PREFIX)}


def _train_disturbed(config, action, at: int, hold: Path) -> tuple[object, object]:
    """Train in a thread; once it has checkpointed iteration ``at``, run ``action(its workers' names)``
    here, holding the run back (tests/faulty.py's SlowWhile) until a worker beyond those is up.

    Triggered by progress and held back until the pool has reacted, the change lands mid-run on
    a machine of any speed, so the run can be short. The disruption runs in the main thread
    because ``Cluster.add_node`` installs signal handlers.
    """
    before = _workers()
    seen = set(Path(config.checkpoint.dir).glob(f"*/ckpt_{at:08d}.pt"))
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = train(config, progress=False)
        except BaseException as exc:  # reported by the caller
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    fired = None
    deadline = time.monotonic() + 300
    try:
        while thread.is_alive() and time.monotonic() < deadline:
            if set(Path(config.checkpoint.dir).glob(f"*/ckpt_{at:08d}.pt")) - seen:
                hold.touch()
                mine = sorted(_workers() - before)
                fired = {"value": action(mine), "at": time.monotonic(), "running": thread.is_alive()}
                while thread.is_alive() and time.monotonic() < deadline and not _new_worker_up(set(mine), _workers() - before):
                    time.sleep(0.1)
                break
            time.sleep(0.02)
    finally:
        hold.unlink(missing_ok=True)
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["result"], fired


def _new_worker_up(mine: set[str], now: set[str]) -> bool:
    """A worker beyond the run's first ones (a replacement, or one on a new node) answers: the
    next iteration puts it to work. A first replacement may die with the dead node's bundle; its
    successor counts. (A run that ended before its replacement was placed could leave its
    placement group rescheduling, holding CPUs the next run waits for.)"""
    for name in sorted(now - mine):
        try:
            ray.get(ray.get_actor(name).info.remote(), timeout=5.0)  # behind at most one held batch (<= 0.5 s)
            return True
        except (RayActorError, GetTimeoutError, ValueError):  # died, still starting, or gone
            continue
    return False


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def faults(workdir: Path, iterations: int) -> dict:
    """Head (1 spare CPU) and two 1-CPU worker nodes; a 2-worker pool, one per node or so.

    Each change comes at the run's first checkpoint; the workers are slowed down from then
    until the pool has reacted (a replacement, or a worker on the new node, is up), so
    ``iterations`` only needs to leave a few past the first checkpoint.
    """
    ray.cloudpickle.register_pickle_by_value(faulty)  # the workers need not import tests/
    hold = workdir / "hold"
    SupervisedRunner.worker_build = staticmethod(functools.partial(faulty.slow_while_build, hold=str(hold), seconds=0.5))
    cluster = _cluster(
        {"num_cpus": 1, "_system_config": FAST_FAILURE}, [{"num_cpus": 1}, {"num_cpus": 1}]
    )
    os.chdir(workdir)
    quiet = {"at_end": False, "plot_tasks": 0, "val_every": 10**6}
    workers = {"num_workers": 2, "num_cpus": 1, "chunk_size": 2}

    def config(**w):
        return tiny_config(outer={"iterations": iterations, "meta_batch": 8}, workers=workers | w, eval=quiet,
                           checkpoint={"every": FIRST_CHECKPOINT})

    out: dict = {}
    t0 = time.monotonic()
    reference = train(config(), progress=False)
    out["reference_s"] = time.monotonic() - t0

    # A node that hosts a worker dies (SIGKILL of its raylet and everything on it).
    head_id = ray.get_runtime_context().get_node_id()

    def kill_a_worker_node(names: list[str]) -> dict:
        nodes = {ray.get(ray.get_actor(n).info.remote())["node_id"] for n in names}
        victim = next(n for n in cluster.list_all_nodes() if n.node_id in nodes - {head_id})
        cluster.remove_node(victim, allow_graceful=False)
        return {"node": victim.node_id, "at": time.monotonic()}

    t0 = time.monotonic()
    removed, fired = _train_disturbed(config(), kill_a_worker_node, FIRST_CHECKPOINT, hold)
    out["removed"] = {
        "fired": fired is not None, "killed_before_end": bool(fired and fired["running"]),
        "seconds": time.monotonic() - t0, "restarts": removed.restarts,
        "same_params": bool(torch.equal(reference.meta_params, removed.meta_params)),
        "restarts_metric": _history(removed.tracking_uri, removed.run_id, "workers/restarts"),
        "iterations": removed.iterations,
    }

    # A node joins: an elastic pool (auto) grows onto it.
    t0 = time.monotonic()
    grown, fired = _train_disturbed(config(num_workers="auto", grow_every_s=0.5), lambda _: cluster.add_node(num_cpus=1).node_id,
                                    FIRST_CHECKPOINT, hold)
    out["added"] = {
        "fired": bool(fired and fired["running"]), "seconds": time.monotonic() - t0, "restarts": grown.restarts,
        "same_params": bool(torch.equal(reference.meta_params, grown.meta_params)),
        "active_metric": _history(grown.tracking_uri, grown.run_id, "workers/active"),
    }
    ray.shutdown()
    cluster.shutdown()
    return out


if __name__ == "__main__":
    scenario, workdir = sys.argv[1], Path(sys.argv[2])
    result = {"placement": lambda: placement(workdir), "faults": lambda: faults(workdir, int(sys.argv[3]))}[scenario]()
    (workdir / "result.json").write_text(json.dumps(result, indent=1))
