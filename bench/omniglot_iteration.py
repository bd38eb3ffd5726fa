"""One second-order MAML Conv-4 meta-iteration on Omniglot, five ways, in one run.

5-way 1-shot, 15 queries per class, meta-batch 32, one inner step (lr 0.4), Adam outer step:
  higher     one process, 2 torch threads, per-task ``higher.innerloop_ctx``, textbook Conv-4
  torchopt   one process, 2 torch threads, per-task ``torchopt.MetaSGD`` with state
             extract/recover (the TorchOpt MAML example), the same textbook Conv-4
             (both also on a GPU: ``device``, as bench/gpu/conv4.py runs them)
  plain      one process, 2 threads, this project's MAML code, per-task loop and vmap
  orch       ``orchestrator.train`` with 2 Ray workers x 1 thread on the same 2 cores
Target (issue 3): orch <= 0.6x the faster of higher and TorchOpt. The workers set glibc's
malloc to keep freed memory; higher and TorchOpt run again last with that setting too, to
show how much of the ratio it accounts for.

Then episode building against compute: episodes per second of ``OmniglotTasks.batch``
alone, and of one worker's outer update fed real episodes against the same model fed
random tensors of the same shapes.

    python bench/omniglot_iteration.py [--root ../shared/data/omniglot] [--iterations 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import bench_env  # noqa: E402,F401  (Ray's and MLflow's environment, before either loads)

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from metaorch.orchestrator.components import build_components  # noqa: E402
from metaorch.orchestrator.config import Config, from_dict  # noqa: E402
from metaorch.orchestrator.learner import Learner  # noqa: E402
from maml_iteration import orchestrated  # noqa: E402  (bench/ is on sys.path when run as a script)
from metaorch.tasks.base import descriptors  # noqa: E402
from metaorch.workers.worker import keep_freed_memory  # noqa: E402

META_BATCH, WAYS, SHOTS, QUERIES, INNER_LR = 32, 5, 1, 15, 0.4


def bench_config(root: str, cache: str, iterations: int, vectorize: str = "loop", workers: int = 2) -> Config:
    return from_dict(
        {
            "task": {"name": "omniglot", "ways": WAYS, "shots": SHOTS, "queries": QUERIES},
            "data": {"root": root, "cache_dir": cache},
            "algorithm": {"name": "maml", "inner_lr": INNER_LR, "inner_steps": 1, "vectorize": vectorize, "track_pre": False},
            "outer": {"meta_batch": META_BATCH, "iterations": iterations},
            "workers": {"num_workers": workers, "num_cpus": 1, "threads": 1, "chunk_size": META_BATCH // 4},
            "eval": {"at_end": False, "plot_tasks": 0, "val_every": 10**9, "queries": QUERIES},
            "checkpoint": {"every": 10**9},
        }
    )


def textbook_conv4() -> nn.Module:
    def block(cin: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, 64, 3, padding=1), nn.BatchNorm2d(64, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(block(1), block(64), block(64), block(64), nn.Flatten(), nn.Linear(64, WAYS))


def batches(config: Config, iterations: int) -> list[dict[str, torch.Tensor]]:
    family, _ = build_components(config)
    return [family.batch(descriptors(config.seed, "train", it, META_BATCH)) for it in range(iterations)]


def _synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so a timing covers it (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def with_higher(config: Config, iterations: int, device: str = "cpu") -> list[float]:
    import higher

    net = textbook_conv4().to(device)
    meta_opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    inner_opt = torch.optim.SGD(net.parameters(), lr=INNER_LR)
    times = []
    for batch in batches(config, iterations):
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in batch.items()}
        meta_opt.zero_grad()
        for i in range(META_BATCH):
            with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
                diffopt.step(F.cross_entropy(fnet(batch["support_x"][i]), batch["support_y"][i]))
                (F.cross_entropy(fnet(batch["query_x"][i]), batch["query_y"][i]) / META_BATCH).backward()
        meta_opt.step()
        _synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def with_torchopt(config: Config, iterations: int, device: str = "cpu") -> list[float]:
    import torchopt

    net = textbook_conv4().to(device)
    meta_opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    inner_opt = torchopt.MetaSGD(net, lr=INNER_LR)
    times = []
    for batch in batches(config, iterations):
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in batch.items()}
        meta_opt.zero_grad()
        state = torchopt.extract_state_dict(net)
        for i in range(META_BATCH):
            inner_opt.step(F.cross_entropy(net(batch["support_x"][i]), batch["support_y"][i]))
            (F.cross_entropy(net(batch["query_x"][i]), batch["query_y"][i]) / META_BATCH).backward()
            torchopt.recover_state_dict(net, state)
        meta_opt.step()
        _synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def plain(config: Config, iterations: int) -> list[float]:
    family, learner = build_components(config)
    outer = Learner(learner.init_meta_params(config.seed), config.outer)
    times = []
    for it, batch in enumerate(batches(config, iterations)):
        t0 = time.perf_counter()
        update = learner.outer_update(outer.params.detach(), batch)
        outer.step(update.direction / META_BATCH, it)
        times.append(time.perf_counter() - t0)
    return times


def episodes_per_second(config: Config, iterations: int) -> None:
    """One worker's view (1 thread): is building episodes ever the bottleneck?"""
    torch.set_num_threads(1)
    family, learner = build_components(config)
    params = learner.init_meta_params(config.seed)
    t0 = time.perf_counter()
    real = [family.batch(descriptors(config.seed, "train", it, META_BATCH)) for it in range(iterations)]
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    fake = {k: (torch.rand(v.shape, generator=g) if v.is_floating_point() else v) for k, v in real[0].items()}
    n = iterations * META_BATCH
    print(f"{'episode building alone':<42} {n / build_s:9.0f} episodes/s")
    learner.outer_update(params, fake)  # warm-up (oneDNN primitives, allocator), so neither timing below pays it
    t0 = time.perf_counter()
    for it in range(iterations):
        learner.outer_update(params, family.batch(descriptors(config.seed, "train", it, META_BATCH)))
    real_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(iterations):
        learner.outer_update(params, fake)
    fake_s = time.perf_counter() - t0
    print(f"{'build + outer update, real episodes':<42} {n / real_s:9.1f} episodes/s")
    print(f"{'outer update only, random tensors':<42} {n / fake_s:9.1f} episodes/s")
    print(f"episode building takes {100 * (real_s - fake_s) / real_s:.1f}% of a worker's time")


def summary(name: str, times: list[float], skip: int) -> float:
    steady = times[skip:]
    med = statistics.median(steady)
    print(f"{name:<42} median {med:6.3f} s   mean {statistics.fmean(steady):6.3f} s   ({len(steady)} iterations)")
    return med


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "omniglot"))
    ap.add_argument("--iterations", type=int, default=30, help="orchestrator iterations")
    ap.add_argument("--baseline-iterations", type=int, default=11, help="per baseline; the first is dropped")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        config = bench_config(os.path.abspath(args.root), cache, args.iterations)
        n = args.baseline_iterations
        print(f"second-order MAML, Conv-4, {WAYS}-way {SHOTS}-shot, {QUERIES} queries/class, meta-batch {META_BATCH}, "
              f"1 inner step; torch {torch.__version__}, {os.cpu_count()} CPUs")
        torch.set_num_threads(2)
        hi = summary("higher (1 process, 2 threads)", with_higher(config, n), 1)
        to = summary("TorchOpt (1 process, 2 threads)", with_torchopt(config, n), 1)
        loop = summary("this MAML, loop (1 process, 2 threads)", plain(config, n), 1)
        vm = summary("this MAML, vmap (1 process, 2 threads)", plain(bench_config(config.data.root, cache, n, "vmap"), n), 1)
        orch = summary("orchestrator, 2 workers x 1 thread", orchestrated(config)[0], 3)
        best = min(hi, to)
        print(f"ratio orchestrator / min(higher, TorchOpt) = {orch / best:.3f}   (target <= 0.6)")
        print(f"ratio vmap / loop (1 process)              = {vm / loop:.2f}")
        # The workers keep freed memory (workers.worker.keep_freed_memory); how much of the
        # gap is that? The same setting for the baselines, last, as it cannot be undone.
        keep_freed_memory()
        hi_kept = summary("higher, freed memory kept", with_higher(config, n), 1)
        to_kept = summary("TorchOpt, freed memory kept", with_torchopt(config, n), 1)
        print(f"ratio orchestrator / min(the two, freed memory kept) = {orch / min(hi_kept, to_kept):.3f}")
        print()
        episodes_per_second(config, 4)


if __name__ == "__main__":
    main()
