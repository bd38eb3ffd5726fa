"""Meta-RL on rollout workers: one runner per algorithm, one loop for all of them.

A runner owns the learner's side of an algorithm (θ for MAML-TRPO, PPO's Adam for RL²,
PEARL's networks and replay buffers) and does one meta-iteration: it hands the pool a plan
and the flat parameters (one ``ray.put``), gets the plans' outputs back in task order, and
updates on the driver, on its GPU when it has one. The loop around it is the supervised
loop's: metrics to MLflow through the non-blocking sink, checkpoints, a meta-test at the end.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
import torch

from metaorch.algorithms.rl import PEARL, MAMLPlan, RL2Learner, RL2Plan, outer_step
from metaorch.algorithms.rl.pearl import PEARLPlan
from metaorch.orchestrator.components import build_policy
from metaorch.orchestrator.config import Config
from metaorch.tasks.base import descriptors
from metaorch.workers.rollout import RolloutPool


def learner_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class RLRunner(Protocol):
    def worker_params(self) -> torch.Tensor:
        """The flat vector the workers act with (CPU, float32)."""
        ...

    def iteration(self, pool: RolloutPool, it: int) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _sample(pool: RolloutPool, params: torch.Tensor, tasks: list, plan: Any, chunk_size: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The plan's outputs in task order, and ``time/sample_s``: the rest of the iteration is the learner's."""
    t0 = time.perf_counter()
    outputs = pool.run_plan(params, tasks, plan, chunk_size)
    return outputs, {"time/sample_s": time.perf_counter() - t0}


def _mean(outputs: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([np.mean(o[key]) for o in outputs]))


class MAMLTRPORunner:
    """Workers: episodes at θ, one inner step, episodes at θ′. Learner: one TRPO step."""

    def __init__(self, config: Config, family, params: torch.Tensor):
        self.config, self.c = config, config.rl.maml_trpo
        self.device = learner_device()
        self.plan = MAMLPlan(build_policy(config, family), self.c)  # a CPU copy travels with the plan
        self.policy = build_policy(config, family).to(self.device)
        self.theta = params.detach().float().to(self.device)

    def worker_params(self) -> torch.Tensor:
        return self.theta.detach().cpu()

    def iteration(self, pool: RolloutPool, it: int) -> dict[str, float]:
        cfg = self.config
        tasks = descriptors(cfg.seed, "train", it, cfg.outer.meta_batch)
        outputs, timing = _sample(pool, self.worker_params(), tasks, self.plan, cfg.workers.chunk_size)
        self.theta, stats = outer_step(self.policy, self.theta, [(o["pre"], o["post"]) for o in outputs], self.c)
        return {
            "train/return_pre": stats.pop("pre_return"),
            "train/return_post": stats.pop("post_return"),
        } | {f"trpo/{k}": v for k, v in stats.items()} | timing

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class RL2Runner:
    """Workers: ``rl.ppo.trials_per_task`` trials per task. Learner: PPO epochs over them."""

    def __init__(self, config: Config, family, params: torch.Tensor):
        self.config = config
        self.learner = RL2Learner(build_policy(config, family), params.float(), config.rl.ppo, learner_device(), config.seed)
        self.plan = RL2Plan(config.rl.ppo.trials_per_task)

    def worker_params(self) -> torch.Tensor:
        return self.learner.params.detach().cpu().clone()

    def iteration(self, pool: RolloutPool, it: int) -> dict[str, float]:
        cfg = self.config
        tasks = descriptors(cfg.seed, "train", it, cfg.outer.meta_batch)
        outputs, timing = _sample(pool, self.worker_params(), tasks, self.plan, cfg.workers.chunk_size)
        stats = self.learner.update([o["trials"] for o in outputs])
        return {"train/return": stats.pop("trial_return")} | {f"ppo/{k}": v for k, v in stats.items()} | timing

    def state_dict(self) -> dict[str, Any]:
        return {"adam": self.learner.optimizer.state_dict(), "generator": self.learner.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.optimizer.load_state_dict(state["adam"])
        self.learner.generator.set_state(state["generator"])


class PEARLRunner:
    """A fixed set of ``rl.pearl.train_tasks`` training tasks, each with its replay buffers.

    Each iteration collects episodes on ``tasks_per_iteration`` of them (on all of them the
    first time, so every buffer holds data), then takes ``updates_per_iteration`` SAC and
    encoder steps, each on ``outer.meta_batch`` tasks drawn from the whole set.
    """

    def __init__(self, config: Config, family, params: torch.Tensor):
        self.config, self.c = config, config.rl.pearl
        self.pearl = PEARL(build_policy(config, family), learner_device(), config.seed, params)
        self.plan = PEARLPlan(build_policy(config, family), self.c.prior_episodes, self.c.posterior_episodes)
        self.tasks = descriptors(config.seed, "train", 0, self.c.train_tasks)

    def worker_params(self) -> torch.Tensor:
        return self.pearl.worker_params()

    def iteration(self, pool: RolloutPool, it: int) -> dict[str, float]:
        cfg, c = self.config, self.c
        rng = np.random.default_rng([cfg.seed, it])
        unfilled = not all(i in self.pearl.replay for i in range(c.train_tasks))  # first iteration, or resumed without buffers
        chosen = range(c.train_tasks) if unfilled else sorted(rng.choice(c.train_tasks, min(c.tasks_per_iteration, c.train_tasks), replace=False))
        outputs, timing = _sample(pool, self.worker_params(), [self.tasks[i] for i in chosen], self.plan, cfg.workers.chunk_size)
        for i, out in zip(chosen, outputs):
            self.pearl.add(i, out)
        sums: dict[str, float] = {}
        for _ in range(c.updates_per_iteration):
            batch_tasks = rng.choice(c.train_tasks, cfg.outer.meta_batch, replace=cfg.outer.meta_batch > c.train_tasks)
            for k, v in self.pearl.update(self.pearl.sample_batch(list(batch_tasks), rng)).items():
                sums[k] = sums.get(k, 0.0) + v
        metrics = {f"sac/{k}": v / max(1, c.updates_per_iteration) for k, v in sums.items()} | timing
        for key in ("prior_returns", "posterior_returns"):
            if key in outputs[0]:
                metrics[f"train/return_{key.removesuffix('_returns')}"] = _mean(outputs, key)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return self.pearl.state_dict(buffers=self.c.checkpoint_buffers)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pearl.load_state_dict(state)


RUNNERS: dict[str, type] = {"maml_trpo": MAMLTRPORunner, "rl2": RL2Runner, "pearl": PEARLRunner}


def build_runner(config: Config, family, params: torch.Tensor) -> RLRunner:
    return RUNNERS[config.algorithm.name](config, family, params)


def initial_params(config: Config, family) -> torch.Tensor:
    """θ₀ of the config's policy (PEARL: its actor and encoder), from ``seed``."""
    return build_policy(config, family).init_params(config.seed).float()
