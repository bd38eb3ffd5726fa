"""Meta-RL on rollout workers: one runner per algorithm, driven by the loop shell.

A runner owns the learner's side of an algorithm (θ for MAML-TRPO, PPO's Adam for RL²,
PEARL's networks and replay buffers) and does one meta-iteration: it hands the pool a plan
and the flat parameters (one ``ray.put``), gets the plans' outputs back in task order, and
updates on the driver, on its GPU when it has one. Its meta-test
(:mod:`orchestrator.rl_evaluation`) runs its test plan on the same pool.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import torch

from metaorch.algorithms.rl import PEARL, MAMLPlan, MAMLTRPOLearner, RL2Learner, RL2Plan
from metaorch.algorithms.rl.maml_trpo import MAMLTestPlan
from metaorch.algorithms.rl.pearl import PEARLPlan
from metaorch.algorithms.rl.protocol import MAMLProtocolPlan
from metaorch.algorithms.rl.rl2 import trial_episode_returns
from metaorch.orchestrator import registry
from metaorch.orchestrator.components import build_env_family, build_policy, build_rl
from metaorch.orchestrator.config import Config
from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.evaluation import Estimates
from metaorch.orchestrator.plots import adaptation_curve, success_by_class
from metaorch.orchestrator.rl_evaluation import curve, rl_meta_test, test_tasks
from metaorch.orchestrator.runner import Runner
from metaorch.orchestrator.success import trial_episode_success, training_metrics
from metaorch.orchestrator.tracking import Tracker
from metaorch.tasks.base import descriptors
from metaorch.workers.rollout import RolloutPool


def learner_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class RLRunner(Runner):
    """What the meta-RL runners share: rollout workers, θ₀ from the policy, the meta-test on the pool."""

    pool_class = RolloutPool
    test_on_pool = True
    worker_build = staticmethod(build_rl)
    curve_axis: ClassVar[tuple[str, int, str]] = ("episode", 1, "episode")  # (key unit, first x, axis label)
    trial_total: ClassVar[bool] = False  # the meta-test also reports the sum over a trial's episodes

    @classmethod
    def check(cls, config: Config) -> None:
        test_tasks(config)  # explicit meta-test tasks are checked before training, not after

    def __init__(self, config: Config):
        if config.learner.placement == "actor":
            raise UserError("learner.placement='actor': meta-RL learners run in the driver (on its GPU when it has one)")
        self.config = config
        self.family = build_env_family(config)
        test_tasks(config, self.family)

    def initial_params(self) -> torch.Tensor:
        """θ₀ of the config's policy (PEARL: its actor and encoder), from ``seed``."""
        return build_policy(self.config, self.family).init_params(self.config.seed).float()

    def shown(self, metrics: dict[str, float]) -> dict[str, float]:
        return {k.removeprefix("train/"): v for k, v in metrics.items() if k.startswith("train/")}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @staticmethod
    def episode_success(config: Config, output: dict[str, Any]) -> dict[str, np.ndarray]:
        """Per point of an iteration (e.g. pre / post adaptation), its episodes' success (0/1)."""
        raise NotImplementedError

    @classmethod
    def test_success(cls, config: Config, outputs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Meta-test: the evaluation episodes' success and returns, each [tasks, episodes]."""
        raise NotImplementedError

    @classmethod
    def test_success_unadapted(cls, outputs: list[dict[str, Any]]) -> np.ndarray | None:
        """Meta-test: the same evaluation before adaptation, [tasks, episodes], where the plan runs one."""
        return None

    def success(self, tasks: list, outputs: list[dict[str, Any]]) -> dict[str, float]:
        """An iteration's success rates, overall and per task class, where the family reports success."""
        if not registry.task(self.config.task.name).success:
            return {}
        labels = [self.family.label(self.family.task(d)) for d in tasks]
        per_output = [self.episode_success(self.config, o) for o in outputs]
        return training_metrics({k: [p[k] for p in per_output] for k in per_output[0]}, labels)

    @classmethod
    def test_plan(cls, config: Config, family) -> Any:
        """The plan each held-out task runs."""
        raise NotImplementedError

    @classmethod
    def test_returns(cls, config: Config, outputs: list[dict[str, Any]]) -> np.ndarray:
        """[tasks, points]: the return at each point of the curve."""
        raise NotImplementedError

    @classmethod
    def meta_test(cls, config: Config, params: torch.Tensor, pool: RolloutPool | None) -> Estimates:
        return rl_meta_test(cls, config, params, pool)[0]

    @classmethod
    def log_meta_test(cls, tracker: Tracker, config: Config, estimates: Estimates) -> None:
        """Per-step (or per-episode) returns as metrics, also as one curve over steps, and its PNG."""
        tasks = len(config.eval.task_params) if config.eval.task_params is not None else config.eval.tasks
        _, first, label = cls.curve_axis
        points = curve(cls, estimates)
        tracker.log_params({"tasks": tasks, "curve": label})
        for k, est in enumerate(points):
            tracker.log_metrics({"test/return": est.mean, "test/return_ci95": est.ci95}, step=k + first)
        tracker.log_metrics({f"test/{key}": est.mean for key, est in estimates.items()} | {f"test/{key}_ci95": est.ci95 for key, est in estimates.items()}, step=0)
        title = f"{config.algorithm.name} on {config.task.name}: {tasks} held-out tasks"
        tracker.log_figure(adaptation_curve({config.algorithm.name: points}, label, first, title), "adaptation_curve.png")
        classes = {k.removeprefix("success/"): est for k, est in estimates.items() if k.startswith("success/")}
        if classes:
            tracker.log_figure(success_by_class(classes, estimates["success"], title), "success_by_class.png")


def _sample(pool: RolloutPool, params: torch.Tensor, tasks: list, plan: Any, chunk_size: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The plan's outputs in task order, and ``time/sample_s``: the rest of the iteration is the learner's."""
    t0 = time.perf_counter()
    outputs = pool.run_plan(params, tasks, plan, chunk_size)
    return outputs, {"time/sample_s": time.perf_counter() - t0}


def _mean(outputs: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([np.mean(o[key]) for o in outputs]))


class MAMLTRPORunner(RLRunner):
    """Workers: episodes at θ, one inner step, episodes at θ′. Learner: one TRPO step.
    Meta-test: the return after 0, 1, ..., max(eval.steps) adaptation steps."""

    curve_axis = ("step", 0, "adaptation step")

    def start(self, params: torch.Tensor) -> None:
        config, family = self.config, self.family
        self.plan = MAMLPlan(build_policy(config, family), config.rl.maml_trpo)  # a CPU copy travels with the plan
        self.learner = MAMLTRPOLearner(build_policy(config, family), params, config.rl.maml_trpo, learner_device())

    def worker_params(self) -> torch.Tensor:
        return self.learner.params.detach().cpu()

    def iteration(self, pool: RolloutPool, it: int) -> dict[str, float]:
        cfg = self.config
        tasks = descriptors(cfg.seed, "train", it, cfg.outer.meta_batch)
        outputs, timing = _sample(pool, self.worker_params(), tasks, self.plan, cfg.workers.chunk_size)
        stats = self.learner.update([(o["pre"], o["post"]) for o in outputs])
        return {
            "train/return_pre": stats.pop("pre_return"),
            "train/return_post": stats.pop("post_return"),
        } | {f"trpo/{k}": v for k, v in stats.items()} | timing | self.success(tasks, outputs)

    @staticmethod
    def episode_success(config: Config, output: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"pre": output["pre"].successes(), "post": output["post"].successes()}

    @classmethod
    def test_plan(cls, config: Config, family) -> MAMLTestPlan | MAMLProtocolPlan:
        """Families with success: Meta-World's protocol (adaptation rounds, then eval.episodes
        episodes with the mean action); the curve's last point is those episodes."""
        policy, c, steps = build_policy(config, family), config.rl.maml_trpo, max(config.eval.steps)
        if registry.task(config.task.name).success:
            return MAMLProtocolPlan(policy, c, steps, config.eval.episodes)
        return MAMLTestPlan(policy, c, steps)

    @classmethod
    def test_success(cls, config: Config, outputs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([o["evaluation"].successes() for o in outputs]), np.stack([o["evaluation"].returns_to_success() for o in outputs])

    @classmethod
    def test_success_unadapted(cls, outputs: list[dict[str, Any]]) -> np.ndarray | None:
        return np.stack([o["unadapted"].successes() for o in outputs])

    @classmethod
    def test_returns(cls, config: Config, outputs: list[dict[str, Any]]) -> np.ndarray:
        return np.stack([o["returns"] for o in outputs])


class RL2Runner(RLRunner):
    """Workers: ``rl.ppo.trials_per_task`` trials per task. Learner: PPO epochs over them.
    Meta-test: one trial per task, the return of each of its episodes and their sum."""

    trial_total = True

    def start(self, params: torch.Tensor) -> None:
        config = self.config
        self.learner = RL2Learner(build_policy(config, self.family), params.float(), config.rl.ppo, learner_device(), config.seed)
        self.plan = RL2Plan(config.rl.ppo.trials_per_task)

    def worker_params(self) -> torch.Tensor:
        return self.learner.params.detach().cpu().clone()

    def iteration(self, pool: RolloutPool, it: int) -> dict[str, float]:
        cfg = self.config
        tasks = descriptors(cfg.seed, "train", it, cfg.outer.meta_batch)
        outputs, timing = _sample(pool, self.worker_params(), tasks, self.plan, cfg.workers.chunk_size)
        stats = self.learner.update([o["trials"] for o in outputs])
        return {"train/return": stats.pop("trial_return")} | {f"ppo/{k}": v for k, v in stats.items()} | timing | self.success(tasks, outputs)

    @staticmethod
    def episode_success(config: Config, output: dict[str, Any]) -> dict[str, np.ndarray]:
        s = trial_episode_success(output["trials"], config.task.trial_episodes)
        return {"first": s[:, 0], "last": s[:, -1]}

    @classmethod
    def test_success(cls, config: Config, outputs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """The trial's last eval.episodes episodes are the evaluation (the ones before, adaptation)."""
        n, k = config.task.trial_episodes, min(config.eval.episodes, config.task.trial_episodes)
        success = np.concatenate([trial_episode_success(o["trials"], n)[:, -k:] for o in outputs])
        return success, np.concatenate([trial_episode_returns(o["trials"], n)[:, -k:] for o in outputs])

    def state_dict(self) -> dict[str, Any]:
        return {"adam": self.learner.optimizer.state_dict(), "generator": self.learner.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.optimizer.load_state_dict(state["adam"])
        self.learner.generator.set_state(state["generator"])

    @classmethod
    def test_plan(cls, config: Config, family) -> RL2Plan:
        return RL2Plan(1)

    @classmethod
    def test_returns(cls, config: Config, outputs: list[dict[str, Any]]) -> np.ndarray:
        return np.concatenate([trial_episode_returns(o["trials"], config.task.trial_episodes) for o in outputs])


class PEARLRunner(RLRunner):
    """A fixed set of ``rl.pearl.train_tasks`` training tasks, each with its replay buffers.

    Each iteration collects episodes on ``tasks_per_iteration`` of them (on all of them the
    first time, so every buffer holds data), then takes ``updates_per_iteration`` SAC and
    encoder steps, each on ``outer.meta_batch`` tasks drawn from the whole set. With oyster's
    ``num_initial_steps``, the first time every task first gets that many prior steps, and the
    iteration then collects on ``tasks_per_iteration`` tasks as any other. Meta-test:
    ``eval.episodes`` episodes, z from the prior in the first, from the episodes before in the others.
    """

    def start(self, params: torch.Tensor) -> None:
        config, family = self.config, self.family
        self.c = config.rl.pearl
        self.pearl = PEARL(build_policy(config, family), learner_device(), config.seed, params)
        initial, prior, posterior = self.c.schedule(family.horizon)
        self.plan = PEARLPlan(build_policy(config, family), prior, posterior)
        self.initial_plan = PEARLPlan(build_policy(config, family), initial, 0, stream=1) if initial else None
        self.tasks = descriptors(config.seed, "train", 0, self.c.train_tasks)

    def worker_params(self) -> torch.Tensor:
        return self.pearl.worker_params()

    def iteration(self, pool: RolloutPool, it: int) -> dict[str, float]:
        cfg, c = self.config, self.c
        rng = np.random.default_rng([cfg.seed, it])
        unfilled = not all(i in self.pearl.replay for i in range(c.train_tasks))  # first iteration, or resumed without buffers
        initial_s = 0.0
        if unfilled and self.initial_plan is not None:  # oyster's num_initial_steps on every task, then the usual collection
            initial, initial_timing = _sample(pool, self.worker_params(), self.tasks, self.initial_plan, cfg.workers.chunk_size)
            for i, out in enumerate(initial):
                self.pearl.add(i, out)
            unfilled, initial_s = False, initial_timing["time/sample_s"]
        chosen = range(c.train_tasks) if unfilled else sorted(rng.choice(c.train_tasks, min(c.tasks_per_iteration, c.train_tasks), replace=False))
        outputs, timing = _sample(pool, self.worker_params(), [self.tasks[i] for i in chosen], self.plan, cfg.workers.chunk_size)
        timing["time/sample_s"] += initial_s
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
        return metrics | self.success([self.tasks[i] for i in chosen], outputs)

    @staticmethod
    def episode_success(config: Config, output: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: output[k].successes() for k in ("prior", "posterior") if k in output}

    @classmethod
    def test_success(cls, config: Config, outputs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """The posterior episodes (z inferred, mean action) are the evaluation."""
        return np.stack([o["posterior"].successes() for o in outputs]), np.stack([o["posterior"].returns_to_success() for o in outputs])

    def state_dict(self) -> dict[str, Any]:
        return self.pearl.state_dict(buffers=self.c.checkpoint_buffers)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pearl.load_state_dict(state)

    @classmethod
    def test_plan(cls, config: Config, family) -> PEARLPlan:
        return PEARLPlan(build_policy(config, family), prior_episodes=1, posterior_episodes=config.eval.episodes - 1, deterministic_posterior=True)

    @classmethod
    def test_returns(cls, config: Config, outputs: list[dict[str, Any]]) -> np.ndarray:
        return np.stack([np.concatenate([o["prior_returns"], o["posterior_returns"]]) for o in outputs])
