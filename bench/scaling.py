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
(``bench/rollout_speed.py``'s ``ours``: HalfCheetahVel, a 64-64 Gaussian MLP, ``--envs``
episodes per worker and call, trajectories shipped to the driver), environment steps per
second over ``--seconds``.

    python bench/scaling.py [--nodes 1,2] [--iterations 150] [--seconds 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.pop("RAY_ADDRESS", None)

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from metaorch.orchestrator.config import Config, from_dict  # noqa: E402
from metaorch.orchestrator.trainer import train  # noqa: E402
from rollout_speed import ours as rollout_steps_per_second  # noqa: E402  (bench/ is on sys.path as a script)


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
    p.add_argument("--envs", type=int, default=20, help="rollout episodes stepped together per worker")
    args = p.parse_args()
    counts = sorted({int(n) for n in args.nodes.split(",")})

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
            s = seconds_per_iteration(job(n * args.cpus_per_node, args), workdir)
            rate = rollout_steps_per_second(args.seconds, args.envs, workers=n * args.cpus_per_node)
            rows.append((n, s, rate))
            print(f"  {n} node(s): {1000 * s:.1f} ms/iteration, {rate:.0f} rollout steps/s ({time.perf_counter() - t0:.0f}s)", flush=True)
    ray.shutdown()
    cluster.shutdown()

    base = rows[0][1] * rows[0][0]  # one node's time, scaled if the first count is not 1
    base_rate = rows[0][2] / rows[0][0]
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
    print(f"\nrollouts: HalfCheetahVel, 64-64 Gaussian MLP, {args.envs} episodes per worker and call, {args.seconds:g} s each")
    print("| worker nodes | env steps / s | speed-up | scaling efficiency (target >= 90% at 2) |")
    print("|---|---|---|---|")
    for n, _, rate in rows:
        speedup = rate / base_rate
        print(f"| {n} | {rate:.0f} | {speedup:.2f} | {100 * speedup / n:.0f}% |")


if __name__ == "__main__":
    main()
