"""Environment steps per second on HalfCheetah-v5, three ways side by side in one run.

  bare    two processes, each a bare gymnasium loop (``gym.make("HalfCheetah-v5")``,
          random actions, reset when an episode ends): the ceiling, one per core
  ours    two RolloutWorker actors (workers/rollout.py) through RolloutPool.run_plan, each stepping
          ``--envs`` HalfCheetahVel environments (HalfCheetah-v5 with the task's reward) with
          a 64-64 tanh Gaussian MLP: parameters sent by one ray.put per call, trajectories
          returned to the driver and counted there (transfer included)
  rllib   RLlib's new-API-stack EnvRunnerGroup: two SingleAgentEnvRunners x ``--envs``
          envs, the default PPO RLModule with a 64-64 tanh MLP; ``sample()`` alone is timed
          (each runner returns only its step count, so no episodes travel to the driver)

Targets (issue 4): ours >= 0.8 x bare, ours >= 1.5 x rllib. Run it on an idle machine:

    python bench/rollout_speed.py [--seconds 15] [--envs 20] [--skip-rllib]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import bench_env  # noqa: E402,F401  (Ray's and MLflow's environment, before either loads)

ENV = "HalfCheetah-v5"
WORKERS = 2


def _bare_loop(seconds: float, barrier, results) -> None:
    import gymnasium as gym

    env = gym.make(ENV)
    env.reset(seed=os.getpid())
    env.action_space.seed(0)
    for _ in range(500):  # warm up
        env.step(env.action_space.sample())
    barrier.wait()
    steps, start = 0, time.perf_counter()
    env.reset()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                env.reset()
        steps += 100
    results.put(steps / elapsed)


def in_processes(n: int, target, *args) -> float:
    """Summed rate of ``target(*args, barrier, results)`` run in ``n`` processes started together
    at a barrier (one per core: the ceiling a loop reaches with no orchestration)."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    rates = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def bare(seconds: float) -> float:
    return in_processes(WORKERS, _bare_loop, seconds)


@dataclass(frozen=True)
class Episodes:
    """The plan timed: ``episodes`` episodes at the given parameters, nothing else."""

    episodes: int

    def __call__(self, sample, params):
        return {"trajectories": sample(params, self.episodes)}


CHEETAH = {"task": {"name": "half_cheetah_vel"}, "algorithm": {"name": "maml_trpo"}, "model": {"hidden": [64, 64]}}


def ours(seconds: float, envs: int, workers: int = WORKERS, config: dict | None = None, tasks_per_worker: int = 1) -> float:
    """Steps per second of ``workers`` rollout workers (1 CPU each), ``envs`` episodes of each of
    ``tasks_per_worker`` tasks per worker and call (all stepped together); see :func:`ours_meter`."""
    with ExitStack() as stack:
        return ours_meter(stack, envs, workers, config, tasks_per_worker)(seconds)


def ours_meter(
    stack: ExitStack, envs: int, workers: int = WORKERS, config: dict | None = None, tasks_per_worker: int = 1, seed: int = 0
) -> Callable[[float], float]:
    """A meter of our rollout workers' steps per second over a given time, built and warmed up
    once (the pool shuts down with ``stack``), so it can be read in several rounds.

    The trainer's path: the worker is built by ``build_rl`` from ``config`` (default:
    HalfCheetahVel, MAML-TRPO's 64-64 Gaussian MLP), and ``RolloutPool.run_plan`` runs a plan
    on each task, ``tasks_per_worker`` tasks to a chunk (bench/scaling.py's ML45: 45, one per
    train class, so every worker plays every class in every call).
    """
    from functools import partial

    import ray

    from metaorch.orchestrator.components import build_rl
    from metaorch.orchestrator.config import from_dict
    from metaorch.tasks.base import descriptors
    from metaorch.workers import Resources
    from metaorch.workers.rollout import RolloutPool

    if __name__ != "__main__":  # imported (bench/scaling.py, bench/sawyer_rollout.py): the actors cannot import this module
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    build = partial(build_rl, from_dict(config or CHEETAH))
    pool = RolloutPool(build, workers, Resources(num_cpus=1, threads=1))
    stack.callback(pool.shutdown)
    plan, count = Episodes(envs), workers * tasks_per_worker
    params = build()[1].init_params(seed).numpy()
    pool.run_plan(params, descriptors(seed, "train", 0, count), plan, tasks_per_worker)  # warm up: envs built once
    calls = 0

    def measure(seconds: float) -> float:
        nonlocal calls
        steps, start = 0.0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            calls += 1
            outputs = pool.run_plan(params, descriptors(seed, "train", calls, count), plan, tasks_per_worker)
            steps += sum(float(out["trajectories"].mask.sum()) for out in outputs)
        return steps / elapsed

    return measure


def rllib(seconds: float, envs: int) -> float:
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.env.env_runner_group import EnvRunnerGroup

    config = (
        PPOConfig()
        .environment(ENV)
        .framework("torch")
        .env_runners(
            num_env_runners=WORKERS,
            num_envs_per_env_runner=envs,
            num_cpus_per_env_runner=1,
            rollout_fragment_length=200,
        )
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64], fcnet_activation="tanh"))
    )
    group = EnvRunnerGroup(config=config, local_env_runner=False)
    try:

        def count(runner) -> int:
            return sum(len(e) for e in runner.sample())

        group.foreach_env_runner(count, local_env_runner=False)  # warm up
        steps, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            steps += sum(group.foreach_env_runner(count, local_env_runner=False))
        return steps / elapsed
    finally:
        group.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per contender")
    parser.add_argument("--envs", type=int, default=20, help="environments per worker (ours and rllib)")
    parser.add_argument("--skip-rllib", action="store_true")
    args = parser.parse_args()

    import ray

    began = time.perf_counter()
    rate_bare = bare(args.seconds)
    print(f"bare gymnasium, {WORKERS} processes:            {rate_bare:9.0f} steps/s", flush=True)
    ray.init(num_cpus=WORKERS, include_dashboard=False, logging_level="ERROR", address="local", log_to_driver=False)
    try:
        rate_ours = ours(args.seconds, args.envs)
        print(f"ours, {WORKERS} RolloutWorkers x {args.envs} envs:        {rate_ours:9.0f} steps/s", flush=True)
        rate_rllib = None if args.skip_rllib else rllib(args.seconds, args.envs)
        if rate_rllib is not None:
            print(f"rllib, {WORKERS} EnvRunners x {args.envs} envs:          {rate_rllib:9.0f} steps/s", flush=True)
    finally:
        ray.shutdown()
    print(f"ours / bare  = {rate_ours / rate_bare:.2f}   (target >= 0.8)")
    if rate_rllib is not None:
        print(f"ours / rllib = {rate_ours / rate_rllib:.2f}   (target >= 1.5)")
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
