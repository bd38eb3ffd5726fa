"""Does sampling system metrics slow training? The same sinusoid MAML run with
``tracking.system_metrics_s`` off, at 1 s and at 0.1 s (ten times more often than anyone
would), interleaved in one process on one Ray instance, the median time per iteration of each.

    python bench/system_metrics.py [--iterations 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import bench_env  # noqa: E402,F401  (Ray's and MLflow's environment, before either loads)

import ray  # noqa: E402

from metaorch.orchestrator.config import from_dict  # noqa: E402
from metaorch.orchestrator.trainer import train  # noqa: E402

SETTINGS = (0.0, 1.0, 0.1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    times: dict[float, list[float]] = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for interval in SETTINGS:
                config = from_dict({
                    "outer": {"iterations": args.iterations, "meta_batch": 25},
                    "workers": {"num_workers": 2, "num_cpus": 1, "chunk_size": 13},
                    "eval": {"at_end": False, "plot_tasks": 0, "val_every": 10_000},
                    "checkpoint": {"dir": f"{tmp}/checkpoints", "every": 100_000},
                    "tracking": {"system_metrics_s": interval},
                })  # fmt: skip
                result = train(config, tracking_uri=f"sqlite:///{tmp}/mlflow.db", progress=False)
                times[interval].append(1000 * result.train_seconds / result.iterations)
    off = statistics.median(times[0.0])
    print(f"sinusoid MAML, meta-batch 25, 2 workers, {args.iterations} iterations x {args.repeats} interleaved repeats")
    for interval, ms in times.items():
        label = "off" if interval == 0 else f"every {interval:g} s"
        runs = ", ".join(f"{t:.2f}" for t in ms)
        print(f"  system metrics {label:<11} median {statistics.median(ms):6.2f} ms/iteration ({statistics.median(ms) / off:.3f}x off)  runs: {runs}")
    ray.shutdown()


if __name__ == "__main__":
    main()
