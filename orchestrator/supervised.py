"""Supervised meta-learning (MAML and its family, metric and black-box methods) as a runner.

Each iteration: the flat parameters travel once (the pool's ``ray.put`` or compiled graph),
each worker computes its shard of task chunks, the driver reduces in task-index order and
the :class:`Learner` takes one outer step (in the driver, or in a GPU actor).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from metaorch.orchestrator.aggregation import chunk, reduce_in_order
from metaorch.orchestrator.components import build_components, prepare_data, share_data
from metaorch.orchestrator.config import Config
from metaorch.orchestrator.evaluation import Estimates, accuracies, classification_test, meta_test
from metaorch.orchestrator.learner import Learner, RemoteLearner
from metaorch.orchestrator.plots import regression_predictions
from metaorch.orchestrator.runner import Runner
from metaorch.orchestrator.session import learner_in_actor
from metaorch.orchestrator.tracking import Tracker
from metaorch.tasks.base import descriptors
from metaorch.workers.pool import WorkerPool


class SupervisedRunner(Runner):
    pool_class = WorkerPool
    test_on_pool = False
    worker_build = staticmethod(build_components)

    def __init__(self, config: Config):
        self.config = config
        self.data = prepare_data(config)  # read once, here: workers get it through the object store
        self.family, self.local = build_components(config, self.data)  # the driver's copy: validation, meta-test, export
        self.val_tasks = descriptors(config.seed, "val", 0, config.eval.val_tasks)
        self.learner: Learner | RemoteLearner | None = None
        self.remote = False

    def initial_params(self) -> torch.Tensor:
        return self.local.init_meta_params(self.config.seed)

    def reserve(self) -> float:
        """The learner's GPUs when it goes to an actor (``learner.placement``)."""
        c = self.config
        self.remote = learner_in_actor(c.learner, c.workers)
        self.reserved_gpus = c.learner.num_gpus if self.remote else 0.0
        return self.reserved_gpus

    def start(self, params: torch.Tensor) -> None:
        """The outer optimizer steps all but the tail the method carries (Reptile's inner state,
        ``algorithm.carry_inner_state``): that tail is replaced each iteration by its task-ordered mean."""
        c = self.config
        stepped = params.shape[0] - getattr(self.local, "carried_size", 0)
        self.carried = params[stepped:].clone()
        params = params[:stepped]
        self.learner = RemoteLearner(params, c.outer, c.learner.num_gpus) if self.remote else Learner(params, c.outer)
        self.worker_data = share_data(self.data)

    def iteration(self, pool: WorkerPool, it: int) -> dict[str, float]:
        o = self.config.outer
        t0 = time.perf_counter()
        items = chunk(descriptors(self.config.seed, "train", it, o.meta_batch), self.config.workers.chunk_size)
        sent = np.concatenate([self.learner.snapshot(), self.carried.numpy()]) if self.carried.numel() else self.learner.snapshot()
        reduced = reduce_in_order(pool.run(sent, items), len(items), o.meta_batch)
        stepped = reduced.direction.shape[0] - self.carried.numel()
        lr = self.learner.step(reduced.direction[:stepped], it)
        self.carried = reduced.direction[stepped:].clone()
        metrics = {
            "train/loss_pre": float(reduced.pre_loss.mean()),  # nan when algorithm.track_pre is off
            "train/loss_post": float(reduced.post_loss.mean()),
            "time/tasks_per_s": o.meta_batch / (time.perf_counter() - t0),
            "outer/lr": lr,
        } | {f"train/{k}": float(v.mean()) for k, v in reduced.metrics.items()}
        if not np.isfinite(metrics["train/loss_pre"]):
            del metrics["train/loss_pre"]
        return metrics

    def validate(self, done: int) -> dict[str, float]:
        """Meta-validation at the training setting every ``eval.val_every`` and at the end:
        query loss (regression) or accuracy; nothing where the split has no validation alphabets."""
        e = self.config.eval
        if not self.config.data.validates or (done % e.val_every and done != self.config.outer.iterations):
            return {}
        params = self.worker_params()
        if self.family.loss == "mse":
            steps = self.config.algorithm.inner_steps
            return {"val/loss": meta_test(self.local, self.family, params, self.val_tasks, [steps], e.queries)[steps].mean}
        return {"val/accuracy": float(accuracies(self.local, self.family, params, self.val_tasks, [None], self.family.queries).mean())}

    def shown(self, metrics: dict[str, float]) -> dict[str, float]:
        shown = {"post": metrics["train/loss_post"], "tasks/s": metrics["time/tasks_per_s"]}
        if "train/accuracy" in metrics:
            shown["acc"] = metrics["train/accuracy"]
        elif "train/loss_pre" in metrics:
            shown = {"pre": metrics["train/loss_pre"]} | shown
        return shown | {k.removeprefix("val/"): v for k, v in metrics.items() if k.startswith("val/")}

    def worker_params(self) -> torch.Tensor:
        return torch.cat([self.learner.cpu_params(), self.carried])

    def state_dict(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state)

    @classmethod
    def meta_test(cls, config: Config, params: torch.Tensor, pool: WorkerPool | None) -> Estimates:
        """Fresh test tasks: loss after each of ``eval.steps`` (regression) or accuracy at every
        (ways, shots[, steps]) of ``eval`` (classification)."""
        family, learner = build_components(config)
        e = config.eval
        tasks = descriptors(config.seed, "test", 0, e.tasks)
        if family.loss == "mse":
            return dict(meta_test(learner, family, params, tasks, e.steps, e.queries))
        return classification_test(config, learner, params, tasks, e.steps)

    @classmethod
    def log_meta_test(cls, tracker: Tracker, config: Config, estimates: Estimates) -> None:
        tracker.log_params({"tasks": config.eval.tasks, "settings": ",".join(map(str, estimates))})
        for key, est in estimates.items():
            if isinstance(key, int):  # regression: loss by inner steps, also as a curve over steps
                tracker.log_metrics({"test/loss": est.mean, "test/loss_ci95": est.ci95}, step=key)
                key = f"loss_step_{key}"
            tracker.log_metrics({f"test/{key}": est.mean, f"test/{key}_ci95": est.ci95}, step=0)

    def finish(self, params: torch.Tensor, tracker: Tracker) -> None:
        """Regression: predictions on a few test tasks (PNG). The model is the loop's (every runner's)."""
        e = self.config.eval
        if e.plot_tasks and self.family.loss == "mse":
            plot_tasks = descriptors(self.config.seed, "test", 1, e.plot_tasks)
            fig = regression_predictions(self.local, self.family, params, plot_tasks, self.config.algorithm.inner_steps)
            tracker.log_figure(fig, "predictions.png")

    def close(self) -> None:
        if self.learner is not None:
            self.learner.close()
