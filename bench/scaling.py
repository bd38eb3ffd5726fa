"""Meta-iterations per second against the number of worker nodes, on a local multi-node cluster.

A ``ray.cluster_utils.Cluster`` on this machine: a head with no CPUs for workers (the
driver and learner run there) and N worker nodes of ``--cpus-per-node`` CPUs each, one
worker actor per CPU (``workers.placement=spread``). The same supervised job (second-order
MAML on sinusoids, meta-batch ``--meta-batch``, ``--inner-steps`` inner steps, chunks of
``--chunk``) runs through ``orchestrator.train`` for each N; the table gives median
seconds per iteration (from ``time/iteration_s``), iterations per second, the speed-up
over one node and the scaling efficiency (speed-up / N).

Each node is a raylet on the same machine, so N nodes need N free cores (plus the
driver's): on a 2-core machine 2 nodes cannot scale perfectly. ``--nodes 1,2,4,8`` on a
larger machine gives the same table up to its core count.

Meta-RL rollout throughput: on the same nodes, one rollout worker per CPU
(``bench/rollout_speed.py``'s ``ours``: workers built by ``build_rl`` from a config and run
through ``RolloutPool.run_plan``, as training runs them; trajectories shipped to the driver),
environment steps per second over ``--seconds``. ``--env half-cheetah`` (default):
HalfCheetahVel, a 64-64 Gaussian MLP, ``--envs`` episodes per worker and call. ``--env ml45``
(issue 17): Meta-World ML45's train classes through the ``metaworld`` task family, MAML-TRPO's
256-256 Gaussian MLP (configs/metaworld_ml45_maml_trpo.yaml), each worker playing one
500-step episode of every one of the 45 train classes per call (each worker process builds
metaworld's ML45 first: about a minute per node count, not timed). ``--max-path-length``
shortens ML45's episodes for smoke checks only.

    python bench/scaling.py [--nodes 1,2] [--iterations 150] [--seconds 15] [--env half-cheetah|ml45] [--skip-supervised]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import bench_env  # noqa: E402,F401  (Ray's and MLflow's environment, before either loads)
os.environ.pop("RAY_ADDRESS", None)

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from metaorch.orchestrator.config import Config, from_dict, load_config  # noqa: E402
from metaorch.orchestrator.trainer import train  # noqa: E402
from rollout_speed import CHEETAH  # noqa: E402  (bench/ is on sys.path as a script)
from rollout_speed import ours as rollout_steps_per_second  # noqa: E402

ENVS = ("half-cheetah", "ml45")
ML45_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "metaworld_ml45_maml_trpo.yaml"  # its task and policy


def rollout_setup(env: str, envs: int, max_path_length: int = 500) -> tuple[dict, int, int, str]:
    """(config for ``build_rl``, tasks per worker and call, episodes per task, label) of ``--env``."""
    if env == "half-cheetah":
        return CHEETAH, 1, envs, f"HalfCheetahVel, 64-64 Gaussian MLP, {envs} episodes per worker and call"
    from metaorch.tasks.rl.metaworld import class_names

    classes = len(class_names("ML45", "")["train"])
    shipped = load_config(ML45_CONFIG, [f"task.options.max_path_length={max_path_length}"]).model_dump(mode="json")
    config = {k: shipped[k] for k in ("task", "algorithm", "model")}  # what build_rl reads
    label = f"Meta-World ML45 train classes, 256-256 Gaussian MLP, one {max_path_length}-step episode of each of the {classes} classes per worker and call"
    return config, classes, 1, label


def job(workers: int, args: argparse.Namespace) -> Config:
    return from_dict(
        {
            "algorithm": {"name": "maml", "inner_steps": args.inner_steps},
            "outer": {"meta_batch": args.meta_batch, "iterations": args.iterations},
            "workers": {"num_workers": workers, "num_cpus": 1, "threads": 1, "chunk_size": args.chunk, "placement": "spread"},
            "learner": {"placement": "driver"},
            "eval": {"at_end": False, "plot_tasks": 0, "val_every": 10**9},
            "checkpoint": {"every": 10**9},
        }
    )


def seconds_per_iteration(config: Config, workdir: str) -> float:
    from mlflow.tracking import MlflowClient

    result = train(config, tracking_uri=f"sqlite:///{workdir}/mlflow.db", progress=False)
    times = [m.value for m in MlflowClient(result.tracking_uri).get_metric_history(result.run_id, "time/iteration_s")]
    return statistics.median(times[len(times) // 5 :])  # the first iterations warm up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", default="1,2", help="worker-node counts to time, e.g. 1,2,4")
    p.add_argument("--cpus-per-node", type=int, default=1)
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--meta-batch", type=int, default=200)
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--chunk", type=int, default=25)
    p.add_argument("--seconds", type=float, default=15.0, help="rollout timing per node count")
    p.add_argument("--envs", type=int, default=20, help="half-cheetah: rollout episodes stepped together per worker")
    p.add_argument("--env", choices=ENVS, default="half-cheetah", help="rollout environments (ml45: Meta-World ML45's train classes)")
    p.add_argument("--max-path-length", type=int, default=500, help="ml45 episode length; shorter only for smoke checks")
    p.add_argument("--skip-supervised", action="store_true", help="rollout rows only")
    args = p.parse_args()
    counts = sorted({int(n) for n in args.nodes.split(",")})
    if not 1 <= args.max_path_length <= 500:
        p.error(f"--max-path-length={args.max_path_length}: an integer from 1 to 500")
    rollout_config, tasks_per_worker, episodes, rollout_label = rollout_setup(args.env, args.envs, args.max_path_length)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    ray.init(address=cluster.address, logging_level="WARNING")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        nodes = 0
        for n in counts:
            while nodes < n:
                cluster.add_node(num_cpus=args.cpus_per_node)
                nodes += 1
            cluster.wait_for_nodes()
            t0 = time.perf_counter()
            s = float("nan") if args.skip_supervised else seconds_per_iteration(job(n * args.cpus_per_node, args), workdir)
            workers = n * args.cpus_per_node
            rate = rollout_steps_per_second(args.seconds, episodes, workers, rollout_config, tasks_per_worker)
            rows.append((n, s, rate))
            supervised = "" if args.skip_supervised else f"{1000 * s:.1f} ms/iteration, "
            print(f"  {n} node(s): {supervised}{rate:.0f} rollout steps/s ({time.perf_counter() - t0:.0f}s with warm-up)", flush=True)
    ray.shutdown()
    cluster.shutdown()

    base = rows[0][1] * rows[0][0]  # one node's time, scaled if the first count is not 1
    base_rate = rows[0][2] / rows[0][0]
    if not args.skip_supervised:
        supervised_table(rows, base, args)
    print(f"\nrollouts: {rollout_label}, {args.seconds:g} s each")
    print("| worker nodes | env steps / s | speed-up | scaling efficiency (target >= 90% at 2) |")
    print("|---|---|---|---|")
    for n, _, rate in rows:
        speedup = rate / base_rate
        print(f"| {n} | {rate:.0f} | {speedup:.2f} | {100 * speedup / n:.0f}% |")


def supervised_table(rows: list[tuple[int, float, float]], base: float, args: argparse.Namespace) -> None:
    print(
        f"\nsupervised: second-order MAML, sinusoid, meta-batch {args.meta_batch}, {args.inner_steps} inner steps, "
        f"chunks of {args.chunk}; {args.cpus_per_node} CPU and worker(s) per node; median of the last 80% of "
        f"{args.iterations} iterations"
    )
    print("| worker nodes | ms / iteration | meta-iterations / s | speed-up | scaling efficiency |")
    print("|---|---|---|---|---|")
    for n, s, _ in rows:
        speedup = base / s
        print(f"| {n} | {1000 * s:.1f} | {1 / s:.2f} | {speedup:.2f} | {100 * speedup / n:.0f}% |")


if __name__ == "__main__":
    main()
