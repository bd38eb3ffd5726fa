"""One second-order MAML meta-iteration three ways, side by side in one process tree.

Meta-batch 25, K=10, one inner step, sinusoid MLP 1-40-40-1:
  plain     single process, ``torch.func.vmap`` over the 25 tasks (the same algorithm code);
            also with ``algorithm.vectorize=loop`` to show why vmap is this model's choice
  orch      ``orchestrator.train`` with one worker (parameters sent once, ordered reduce, outer
            step), with each transport: ``calls`` (ray.put + actor call, the default),
            ``compiled`` (a Ray Compiled Graph) and ``inprocess`` (the worker in the driver)
  higher    single process, per-task loop with ``higher.innerloop_ctx``
Targets: orch <= 1.5x plain (issue 2), inprocess <= 1.2x plain (issue 15), and higher / orch
>= 5. A second, heavier setting
(meta-batch 100, 5 inner steps) shows how the fixed per-iteration cost of Ray shrinks
relative to the work.

    python bench/maml_iteration.py [--iterations 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import bench_env  # noqa: E402,F401  (Ray's and MLflow's environment, before either loads)

import torch  # noqa: E402

from metaorch.orchestrator.components import build_components  # noqa: E402
from metaorch.orchestrator.config import Config, from_dict  # noqa: E402
from metaorch.orchestrator.learner import Learner  # noqa: E402
from metaorch.tasks.base import descriptors  # noqa: E402

META_BATCH = 25


def bench_config(
    iterations: int,
    workers: int = 1,
    chunk: int = META_BATCH,
    meta_batch: int = META_BATCH,
    inner_steps: int = 1,
    transport: str = "calls",
) -> Config:
    return from_dict(
        {
            "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": inner_steps},
            "outer": {"meta_batch": meta_batch, "iterations": iterations},
            "workers": {"num_workers": workers, "num_cpus": 1, "threads": 1, "chunk_size": chunk, "transport": transport},
            "eval": {"at_end": False, "plot_tasks": 0, "val_every": 10**9},
            "checkpoint": {"every": 10**9},
        }
    )


def plain_vmap(config: Config) -> list[float]:
    """The same computation in one process: build tasks, vmap outer gradient, Adam step."""
    torch.set_num_threads(1)
    family, learner = build_components(config)
    outer = Learner(learner.init_meta_params(config.seed), config.outer)
    times = []
    for it in range(config.outer.iterations):
        t0 = time.perf_counter()
        batch = family.batch(descriptors(config.seed, "train", it, config.outer.meta_batch))
        update = learner.outer_update(outer.params.detach(), batch)
        outer.step(update.direction / config.outer.meta_batch, it)
        times.append(time.perf_counter() - t0)
    return times


def with_higher(config: Config, iterations: int) -> list[float]:
    """The usual ``higher`` pattern: per-task differentiable SGD inner loop, backward per task."""
    import higher

    torch.set_num_threads(1)
    family, learner = build_components(config)
    net = learner.model.to_module(learner.init_meta_params(config.seed))
    meta_opt = torch.optim.Adam(net.parameters(), lr=config.outer.lr)
    inner_opt = torch.optim.SGD(net.parameters(), lr=config.algorithm.inner_lr)
    mse = torch.nn.functional.mse_loss
    times = []
    for it in range(iterations):
        t0 = time.perf_counter()
        batch = family.batch(descriptors(config.seed, "train", it, META_BATCH))
        meta_opt.zero_grad()
        for i in range(META_BATCH):
            with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
                diffopt.step(mse(fnet(batch["support_x"][i]), batch["support_y"][i]))
                (mse(fnet(batch["query_x"][i]), batch["query_y"][i]) / META_BATCH).backward()
        meta_opt.step()
        times.append(time.perf_counter() - t0)
    return times


def orchestrated(config: Config) -> tuple[list[float], float]:
    """``train`` itself; per-iteration times come back through its MLflow metrics."""
    import ray
    from mlflow.tracking import MlflowClient

    from metaorch.orchestrator.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/bench.db"
        config = config.model_copy(update={"checkpoint": config.checkpoint.model_copy(update={"dir": f"{tmp}/ckpt"})})
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
        try:
            result = train(config, tracking_uri=uri, progress=False)
        finally:
            ray.shutdown()
        history = MlflowClient(uri).get_metric_history(result.run_id, "time/iteration_s")
        return [m.value for m in sorted(history, key=lambda m: m.step)], result.train_seconds


def summary(name: str, times: list[float], skip: int) -> float:
    steady = times[skip:]
    med = statistics.median(steady)
    print(f"{name:<34} median {med * 1e3:7.2f} ms   mean {statistics.fmean(steady) * 1e3:7.2f} ms   ({len(steady)} iterations)")
    return med


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--higher-iterations", type=int, default=100)
    args = ap.parse_args()
    skip = 20
    config = bench_config(args.iterations)
    print(f"MAML meta-iteration: meta-batch {META_BATCH}, K=10, 1 inner step, second order; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs")
    plain = summary("plain vmap (1 process)", plain_vmap(config), skip)
    loop_config = config.model_copy(update={"algorithm": config.algorithm.model_copy(update={"vectorize": "loop"})})
    loop = summary("plain per-task loop (1 process)", plain_vmap(loop_config.model_copy(update={"outer": config.outer.model_copy(update={"iterations": 300})})), skip)
    orch = {}
    for transport in ("calls", "compiled", "inprocess"):
        times, train_s = orchestrated(bench_config(args.iterations, transport=transport))
        orch[transport] = summary(f"orchestrator, 1 worker, {transport}", times, skip)
        print(f"{'  whole loop incl. logging':<34} {train_s / args.iterations * 1e3:7.2f} ms per iteration")
    hi = summary("higher (1 process, per-task loop)", with_higher(config, args.higher_iterations), 5)
    print(f"ratio loop / vmap (plain)       = {loop / plain:.1f}    (vmap is the default for MLPs)")
    for transport, t in orch.items():
        target = 1.2 if transport == "inprocess" else 1.5
        print(f"ratio orchestrator[{transport}] / plain vmap = {t / plain:.2f}   (target <= {target})")
        print(f"ratio higher / orchestrator[{transport}]     = {hi / t:.1f}    (target >= 5)")

    print("\ntwo workers on the same 2 cores (chunks of 13 tasks):")
    for transport in ("calls", "compiled"):
        two = bench_config(args.iterations, workers=2, chunk=13, transport=transport)
        summary(f"orchestrator, 2 workers, {transport}", orchestrated(two)[0], skip)

    heavy = bench_config(args.iterations // 4, chunk=100, meta_batch=100, inner_steps=5)
    print("\nheavier: meta-batch 100, K=10, 5 inner steps, second order")
    plain_h = summary("plain vmap (1 process)", plain_vmap(heavy), skip)
    orch_h = summary("orchestrator, 1 worker, calls", orchestrated(heavy)[0], skip)
    print(f"ratio orchestrator / plain vmap = {orch_h / plain_h:.2f}")


if __name__ == "__main__":
    main()
