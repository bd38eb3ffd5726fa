"""The meta-RL learners on a GPU against the CPU, each on the same data, in one run.

  PEARL       SAC + encoder updates per second (configs/navigation_pearl.yaml: 3x128 networks,
              meta-batch 16, 256 transitions and 64 context transitions per task), replay
              filled by real episodes
  MAML-TRPO   one learner step on HalfCheetahVel (configs/half_cheetah_vel_maml_trpo.yaml:
              64x64 policy, 10 episodes of 200 steps per task before and after adapting, the
              config's meta-batch of tasks)

The episodes come from a plain RolloutWorker on the CPU, as the trainer's workers sample them;
the learners are the classes the runners drive, built the way they build them. PEARL takes 5
untimed updates first on each device, MAML-TRPO one untimed step on the GPU. Without CUDA the
CPU side prints and the exit status is 1.

    python bench/gpu/learners.py [--pearl-updates 100] [--trpo-tasks 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from metaorch.algorithms.rl import MAMLPlan, MAMLTRPOLearner
from metaorch.algorithms.rl.pearl import PEARL, PEARLPlan
from metaorch.orchestrator.components import build_env_family, build_policy, build_rl
from metaorch.orchestrator.config import Config, load_config
from metaorch.tasks.base import descriptors
from metaorch.workers.rollout import RolloutWorker

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def episodes(config: Config, plan, params: torch.Tensor, tasks: int) -> list[dict]:
    """The plan's outputs on the first ``tasks`` training tasks, all stepped together in one worker."""
    worker = RolloutWorker(partial(build_rl, config))
    return worker.run_plans(params, [(plan, t) for t in descriptors(config.seed, "train", 0, tasks)])


def pearl_rates(devices: list[torch.device], updates: int, tasks: int) -> dict[str, float]:
    """Updates per second on each device, from the same replay and the same sampled batches."""
    config = load_config(CONFIGS / "navigation_pearl.yaml")
    c, family = config.rl.pearl, build_env_family(config)
    params = build_policy(config, family).init_params(config.seed).float()
    _, prior, posterior = c.schedule(family.horizon)  # the episodes the runner collects per task
    outputs = episodes(config, PEARLPlan(build_policy(config, family), prior, posterior), params, tasks)
    rates = {}
    for device in devices:
        pearl = PEARL(build_policy(config, family), device, config.seed, params)
        for i, out in enumerate(outputs):
            pearl.add(i, out)
        rng = np.random.default_rng(0)
        batches = [pearl.sample_batch(list(rng.choice(tasks, config.outer.meta_batch)), rng) for _ in range(updates + 5)]
        for batch in batches[:5]:  # warm-up
            pearl.update(batch)
        _sync(device)
        t0 = time.perf_counter()
        for batch in batches[5:]:
            pearl.update(batch)
        _sync(device)
        rates[device.type] = updates / (time.perf_counter() - t0)
        print(f"PEARL learner, {device.type}: {rates[device.type]:8.1f} updates/s  ({updates} updates, meta-batch {config.outer.meta_batch})", flush=True)
    return rates


def trpo_seconds(devices: list[torch.device], tasks: int) -> dict[str, float]:
    """Seconds of one MAML-TRPO learner step on each device, from the same episodes."""
    config = load_config(CONFIGS / "half_cheetah_vel_maml_trpo.yaml")
    family = build_env_family(config)
    theta = build_policy(config, family).init_params(config.seed).float()
    outputs = episodes(config, MAMLPlan(build_policy(config, family), config.rl.maml_trpo), theta, tasks)
    per_task = [(o["pre"], o["post"]) for o in outputs]
    seconds = {}
    for device in devices:
        if device.type == "cuda":  # warm-up: the CUDA context and kernels
            MAMLTRPOLearner(build_policy(config, family), theta, config.rl.maml_trpo, device).update(per_task)
        learner = MAMLTRPOLearner(build_policy(config, family), theta, config.rl.maml_trpo, device)
        _sync(device)
        t0 = time.perf_counter()
        learner.update(per_task)
        _sync(device)
        seconds[device.type] = time.perf_counter() - t0
        print(f"MAML-TRPO learner step, HalfCheetahVel, {device.type}: {seconds[device.type]:7.3f} s  ({tasks} tasks)", flush=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pearl-updates", type=int, default=100, help="timed updates per device")
    ap.add_argument("--pearl-tasks", type=int, default=8, help="training tasks whose episodes fill the replay")
    ap.add_argument("--trpo-tasks", type=int, default=20, help="tasks in the MAML-TRPO step (the config's meta-batch)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if cuda else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, GPU: {torch.cuda.get_device_name(0) if cuda else 'none (no CUDA)'}", flush=True)
    rates = pearl_rates(devices, args.pearl_updates, args.pearl_tasks)
    seconds = trpo_seconds(devices, args.trpo_tasks)
    if not cuda:
        sys.exit("GPU side not run: torch sees no CUDA device")
    print(f"PEARL updates/s, GPU / CPU: {rates['cuda'] / rates['cpu']:.1f}x")
    print(f"MAML-TRPO step, CPU / GPU time: {seconds['cpu'] / seconds['cuda']:.1f}x")


if __name__ == "__main__":
    main()
