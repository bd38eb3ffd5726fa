"""Environment steps per second, HalfCheetah and Meta-World's Sawyer, four ways in one run (issue 17).

For each of HalfCheetah (gymnasium's HalfCheetah-v5 model; ours plays HalfCheetahVel, the
same model and observation with the task's reward) and Sawyer (ML10's ten train classes,
visited in turn), on the same 2 cores and with the same policy (MAML-TRPO's Gaussian MLP
of the family's config: 64-64 for HalfCheetah, 256-256 for Meta-World):

  raw     MuJoCo alone, one process per core: ``mujoco.rollout`` rolls a 200-step episode
          (``frame_skip`` physics steps per environment step, random controls; for Sawyer the
          hand's mocap target moves as metaworld's ``set_xyz_action`` moves it) in one C call
  bare    one process per core, one environment each, a policy forward per step
          (``gym.make("HalfCheetah-v5")``; a metaworld env of each ML10 train class with a task set)
  async   gymnasium's AsyncVectorEnv, one subprocess per environment, one batched forward per
          step in the driver: ``gym.make_vec("Meta-World/ML10-train", vector_strategy="async",
          meta_batch_size=10)`` as metaworld's users run it (one env per class), and
          ``gym.make_vec("HalfCheetah-v5", 10, vectorization_mode="async")``
  ours    2 RolloutWorkers (1 CPU each) through RolloutPool.run_plan, built by build_rl from a
          config; trajectories travel back to the driver and are counted there. HalfCheetahVel:
          ``--tasks`` tasks of ``--envs`` episodes per worker, all stepped together (default 10 x
          10: the shipped config's meta-batch of 20 on 2 workers, 10 episodes per task); ML10:
          each worker plays the ten train classes, ``--sawyer-episodes`` episodes each (500 steps)

Targets (issue 17): ours >= 0.9 x bare, ours >= 1.5 x async, ours >= 0.8 x raw (HalfCheetah;
the Sawyer ratio is reported). Everything is built and warmed up first; then ``--rounds``
rounds measure each contender in turn for ``--seconds``, and each one's best round counts
(on a shared machine the load drifts between contenders). Run it on an idle machine; the
load average is printed each round:

    python bench/sawyer_rollout.py [--seconds 10] [--rounds 1] [--tasks 10] [--envs 10] [--sawyer-episodes 1] [--only cheetah|sawyer]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import Any

import bench_env  # noqa: E402,F401  (Ray's and MLflow's environment, before either loads)

CORES = 2
SEED = 0
CONFIGS: dict[str, dict[str, Any]] = {
    "cheetah": {"task": {"name": "half_cheetah_vel"}, "algorithm": {"name": "maml_trpo"}, "model": {"hidden": [64, 64]}},
    "sawyer": {"task": {"name": "metaworld", "options": {"benchmark": "ML10"}}, "algorithm": {"name": "maml_trpo"}, "model": {"hidden": [256, 256]}},
}


def _policy(which: str):
    """(act(obs) -> clipped actions as numpy, the policy): the family config's policy at its initial parameters."""
    import numpy as np
    import torch

    from metaorch.orchestrator.components import build_rl
    from metaorch.orchestrator.config import from_dict

    torch.set_num_threads(1)
    family, policy = build_rl(from_dict(CONFIGS[which]))
    params, low, high = policy.init_params(SEED), family.action_space.low, family.action_space.high
    obs_dim = int(np.prod(family.observation_space.shape))

    def act(obs) -> np.ndarray:
        with torch.inference_mode():
            a, _, _ = policy.act(params, torch.as_tensor(np.asarray(obs, np.float32).reshape(-1, obs_dim)), None)
        return np.clip(a.numpy(), low, high)

    return act


def _sawyer_tasks() -> dict[str, Any]:
    """One ML10 train task per class (metaworld's ML10 at seed 0, built once in the driver)."""
    from metaorch.tasks.rl.metaworld import load_benchmark

    bench, tasks = load_benchmark("ML10", "", SEED), {}
    for task in bench.train_tasks:
        tasks.setdefault(task.env_name, task)
    return tasks


def _sawyers(tasks: dict[str, Any]) -> list[Any]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    envs = []
    for name, task in tasks.items():
        env = ALL_V3_ENVIRONMENTS[name]()
        env.set_task(task)
        envs.append(env)
    return envs


# -- raw physics -----------------------------------------------------------------------------
def _raw(which: str, tasks: dict[str, Any] | None, seconds: float, barrier, results) -> None:
    """MuJoCo steps with no Python around them: each call is one 200-step episode in C."""
    import mujoco
    import numpy as np
    from mujoco import rollout

    steps_per_call, rng = 200, np.random.default_rng(os.getpid())
    jobs = []  # (model, data, initial state, controls [1, steps*frame_skip, ncontrol], control spec)
    if which == "cheetah":
        import gymnasium as gym

        env = gym.make("HalfCheetah-v5").unwrapped
        env.reset(seed=SEED)
        envs, spec = [env], mujoco.mjtState.mjSTATE_CTRL.value
    else:
        envs, spec = _sawyers(tasks), mujoco.mjtState.mjSTATE_CTRL.value | mujoco.mjtState.mjSTATE_MOCAP_POS.value
        for env in envs:
            env.reset(seed=SEED)
    for env in envs:
        m, d, skip = env.model, env.data, env.frame_skip
        state = np.zeros((1, mujoco.mj_stateSize(m, mujoco.mjtState.mjSTATE_FULLPHYSICS.value)))
        mujoco.mj_getState(m, d, state[0], mujoco.mjtState.mjSTATE_FULLPHYSICS.value)
        a = rng.uniform(-1, 1, (steps_per_call, 4 if which == "sawyer" else m.nu))
        if which == "sawyer":  # gripper ctrl (a, -a); mocap target moved by a[:3] / 100, clipped as metaworld does
            mocap = np.clip(d.mocap_pos[0] + np.cumsum(a[:, :3] * env.action_scale, axis=0), env.mocap_low, env.mocap_high)
            control = np.concatenate([a[:, 3:], -a[:, 3:], mocap], axis=1)
        else:
            control = a
        jobs.append((m, d, state, np.repeat(control[None], skip, axis=1).reshape(1, steps_per_call * skip, -1), spec))
    runner = rollout.Rollout(nthread=0)
    for m, d, s, c, sp in jobs:  # warm up
        runner.rollout(m, d, s, c, control_spec=sp)
    barrier.wait()
    steps, k, start = 0, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        m, d, s, c, sp = jobs[k % len(jobs)]
        runner.rollout(m, d, s, c, control_spec=sp)
        steps, k = steps + steps_per_call, k + 1
    results.put(steps / elapsed)


# -- bare loops ------------------------------------------------------------------------------
def _bare(which: str, tasks: dict[str, Any] | None, seconds: float, barrier, results) -> None:
    """One environment, one policy forward per step, reset at each episode's end."""
    act = _policy(which)
    if which == "cheetah":
        import gymnasium as gym

        envs = [gym.make("HalfCheetah-v5")]
    else:
        envs = _sawyers(tasks)
    obs, k = envs[0].reset(seed=os.getpid())[0], 0
    for _ in range(50):  # warm up
        obs = envs[0].step(act(obs)[0])[0]
    barrier.wait()
    steps, start = 0, time.perf_counter()
    obs = envs[0].reset(seed=os.getpid())[0]
    while (elapsed := time.perf_counter() - start) < seconds:
        obs, _, term, trunc, _ = envs[k].step(act(obs)[0])
        steps += 1
        if term or trunc:
            k = (k + 1) % len(envs)
            obs = envs[k].reset()[0]
    results.put(steps / elapsed)


def per_core(fn: Callable, which: str, tasks: dict[str, Any] | None, seconds: float) -> float:
    """Summed rate of ``fn`` run in one process per core, started together at a barrier."""
    import rollout_speed

    return rollout_speed.in_processes(CORES, fn, which, tasks, seconds)


# -- gymnasium's AsyncVectorEnv ---------------------------------------------------------------
Measure = Callable[[float], float]  # seconds -> steps per second


def vector_async(which: str, stack: ExitStack, num_envs: int = 10) -> Measure:
    """The vector env, built and warmed up once; each measurement steps it for ``seconds``."""
    import gymnasium as gym

    if which == "cheetah":
        envs = gym.make_vec("HalfCheetah-v5", num_envs, vectorization_mode="async")
    else:
        import metaworld  # noqa: F401  (registers Meta-World/...)

        envs = gym.make_vec("Meta-World/ML10-train", vector_strategy="async", meta_batch_size=num_envs, seed=SEED)
        envs.call("sample_tasks")  # a goal per env, as metaworld's evaluation does before its first reset
    stack.callback(envs.close)
    act = _policy(which)
    obs = [envs.reset(seed=SEED)[0]]
    for _ in range(20):  # warm up
        obs[0] = envs.step(act(obs[0]))[0]

    def measure(seconds: float) -> float:
        steps, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            obs[0] = envs.step(act(obs[0]))[0]  # the vector env resets finished episodes itself (same step)
            steps += envs.num_envs
        return steps / elapsed

    return measure


# -- ours ------------------------------------------------------------------------------------
def ours(which: str, stack: ExitStack, tasks: int, envs: int, sawyer_episodes: int) -> Measure:
    """2 rollout workers (1 CPU each) through RolloutPool.run_plan, built and warmed up once:
    bench/rollout_speed.py's meter. Each worker steps a chunk of tasks together; ML10: ten, one per train class."""
    import rollout_speed  # bench/ is on sys.path as a script

    chunk, episodes = (tasks, envs) if which == "cheetah" else (10, sawyer_episodes)
    return rollout_speed.ours_meter(stack, episodes, CORES, CONFIGS[which], chunk, seed=SEED)


LABELS = {"raw": f"raw MuJoCo, {CORES} processes", "bare": f"bare loop + policy, {CORES} processes", "async": "AsyncVectorEnv x 10 + policy", "ours": f"ours, {CORES} RolloutWorkers"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per contender and round")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of all contenders; each one's best round counts")
    parser.add_argument("--tasks", type=int, default=10, help="HalfCheetahVel tasks per worker and call (ours)")
    parser.add_argument("--envs", type=int, default=10, help="HalfCheetahVel episodes per task (ours)")
    parser.add_argument("--sawyer-episodes", type=int, default=1, help="episodes per ML10 class per worker and call (ours)")
    parser.add_argument("--only", choices=sorted(CONFIGS), help="one of the two families")
    args = parser.parse_args()

    import ray

    began = time.perf_counter()
    families = [args.only] if args.only else ["cheetah", "sawyer"]
    tasks = _sawyer_tasks() if "sawyer" in families else None
    # logical CPUs for each family's pool (built up front, idle while the others are measured)
    ray.init(num_cpus=CORES * len(families), include_dashboard=False, logging_level="ERROR", address="local", log_to_driver=False)
    with ExitStack() as stack:
        stack.callback(ray.shutdown)
        contenders: dict[tuple[str, str], Measure] = {}
        for which in families:  # everything built and warmed up before the first measurement
            contenders[which, "raw"] = partial(per_core, _raw, which, tasks)
            contenders[which, "bare"] = partial(per_core, _bare, which, tasks)
            contenders[which, "async"] = vector_async(which, stack)
            contenders[which, "ours"] = ours(which, stack, args.tasks, args.envs, args.sawyer_episodes)
        best: dict[tuple[str, str], float] = {}
        for r in range(args.rounds):
            print(f"round {r + 1}: load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores", flush=True)
            for (which, kind), measure in contenders.items():
                rate = measure(args.seconds)
                best[which, kind] = max(rate, best.get((which, kind), 0.0))
                print(f"  {which:8s} {LABELS[kind]:38s} {rate:9.0f} steps/s", flush=True)
    for which in families:
        b = {kind: v for (w, kind), v in best.items() if w == which}
        raw_target = "target >= 0.8" if which == "cheetah" else "reported"
        print(f"{which:8s} best of {args.rounds}: " + ", ".join(f"{kind} {v:.0f}" for kind, v in b.items()))
        print(
            f"{which:8s} ours / bare = {b['ours'] / b['bare']:.2f} (target >= 0.9)   ours / async = {b['ours'] / b['async']:.2f} "
            f"(target >= 1.5)   ours / raw = {b['ours'] / b['raw']:.2f} ({raw_target})"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min); total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
