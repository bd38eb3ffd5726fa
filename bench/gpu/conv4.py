"""Second-order MAML on Conv-4 (5-way 1-shot, 15 queries, meta-batch 32) on one GPU, both sides in one run.

  trainer, GPU   ``orchestrator.train`` (tracking off) with 1, 2 and 4 workers sharing the GPU
                 (workers.num_gpus 1, 0.5, 0.25), a chunk's tasks through vmap (a per-task loop
                 launches 32x the kernels; 1 worker also with the loop, to show it); per-iteration
                 times from the run's metrics.jsonl
  trainer, CPU   the same iteration with 2 1-thread workers (the target's 2 cores) and with one
                 per CPU core, no GPU at all (a child process with CUDA_VISIBLE_DEVICES empty, so
                 the learner is on the CPU too), with the loop (``vectorize: auto``'s choice for Conv-4)
  higher, TorchOpt  bench/omniglot_iteration.py's baselines, one process, on the GPU

Targets (issue 16): trainer on one GPU >= 10x the trainer on 2 CPU cores and faster than the
faster of higher and TorchOpt; 4 workers x 0.25 GPU >= 1.5x the throughput of 1 worker x 1 GPU.
Without CUDA the GPU side says so, the CPU side still runs, and the exit status is 1.

    python bench/gpu/conv4.py --root .gpukit/omniglot [--iterations 30] [--cpu-iterations 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # omniglot_iteration's functions are reused, not copied

import bench_env  # noqa: E402,F401  (Ray's and MLflow's environment, before either loads)

import torch  # noqa: E402

from metaorch.orchestrator.config import Config  # noqa: E402
from metaorch.orchestrator.tracking_off import METRICS_FILE, read_metrics  # noqa: E402
from omniglot_iteration import META_BATCH, bench_config, summary, with_higher, with_torchopt  # noqa: E402

WARMUP = 3  # iterations dropped from each trainer run: CUDA context, cuDNN's algorithm search, Ray's first calls


def trained(config: Config, workers: int, num_gpus: float, vectorize: str = "loop") -> list[float]:
    """Per-iteration seconds of ``train`` with ``workers`` workers of ``num_gpus`` GPU each."""
    from metaorch.orchestrator.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        w = config.workers.model_copy(update={"num_workers": workers, "num_gpus": num_gpus, "chunk_size": max(1, META_BATCH // workers)})
        tracking = config.tracking.model_copy(update={"uri": "none"})
        checkpoint = config.checkpoint.model_copy(update={"dir": tmp})
        algorithm = config.algorithm.model_copy(update={"vectorize": vectorize})
        update = {"workers": w, "tracking": tracking, "checkpoint": checkpoint, "algorithm": algorithm}
        run = train(config.model_copy(update=update), progress=False)
        records = read_metrics(Path(run.checkpoint).parent / METRICS_FILE)
    return [r["time/iteration_s"] for r in records if "time/iteration_s" in r]


def cpu_side(config: Config) -> dict[int, float]:
    """Median iteration seconds with 2 workers and with one per core, 1 thread each."""
    return {n: summary(f"trainer, CPU: {n} workers x 1 thread", trained(config, n, 0.0), WARMUP) for n in sorted({2, os.cpu_count() or 1})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(BENCH.parents[1] / "shared" / "data" / "omniglot"))
    ap.add_argument("--iterations", type=int, default=30, help="per GPU trainer run, the first 3 dropped")
    ap.add_argument("--cpu-iterations", type=int, default=8, help="the CPU trainer run, the first 3 dropped")
    ap.add_argument("--baseline-iterations", type=int, default=11, help="per baseline, the first dropped")
    ap.add_argument("--cpu-only", action="store_true", help="(the child process) the CPU side alone, as JSON last")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        if args.cpu_only:
            print(json.dumps({"cpu_s": cpu_side(bench_config(os.path.abspath(args.root), cache, args.cpu_iterations))}))
            return
        print(f"second-order MAML, Conv-4, 5-way 1-shot, 15 queries/class, meta-batch {META_BATCH}; torch {torch.__version__}, "
              f"{os.cpu_count()} CPUs, GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (no CUDA)'}", flush=True)  # fmt: skip
        gpu: dict[int, float] = {}
        if torch.cuda.is_available():
            config = bench_config(os.path.abspath(args.root), cache, args.iterations)
            summary("trainer, GPU: 1 x 1 GPU, per-task loop", trained(config, 1, 1.0), WARMUP)
            for workers in (1, 2, 4):
                gpu[workers] = summary(f"trainer, GPU: {workers} x {1 / workers:g} GPU, vmap", trained(config, workers, 1 / workers, "vmap"), WARMUP)
            n = args.baseline_iterations
            hi = summary("higher, GPU (1 process)", with_higher(config, n, "cuda"), 1)
            to = summary("TorchOpt, GPU (1 process)", with_torchopt(config, n, "cuda"), 1)
        env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}
        child = subprocess.run(
            [sys.executable, __file__, "--cpu-only", "--root", args.root, "--cpu-iterations", str(args.cpu_iterations)],
            env=env, stdout=subprocess.PIPE, text=True, check=True,
        )  # fmt: skip
        lines = child.stdout.strip().splitlines()
        print("\n".join(lines[:-1]))
        cpu = {int(n): s for n, s in json.loads(lines[-1])["cpu_s"].items()}
        if not gpu:
            sys.exit("GPU side not run: torch sees no CUDA device")
        best = min(gpu.values())
        for n, seconds in cpu.items():
            print(f"GPU trainer speed-up over the CPU trainer on {n} cores: {seconds / best:.1f}x" + ("   (target >= 10)" if n == 2 else ""))
        print(f"GPU trainer vs the faster of higher and TorchOpt on the GPU: {min(hi, to) / best:.2f}x   (target > 1)")
        print(f"4 x 0.25 GPU vs 1 x 1 GPU throughput: {gpu[1] / gpu[4]:.2f}x   (target >= 1.5)")


if __name__ == "__main__":
    main()
