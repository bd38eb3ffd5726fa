"""Reptile (Nichol, Achiam and Schulman 2018).

Each task runs k steps of SGD from theta to phi; the outer optimizer is handed
``theta - phi`` as if it were a gradient, so plain SGD with learning rate epsilon gives
Reptile's ``theta <- theta + epsilon * mean(phi - theta)``. Annealing epsilon linearly is
the driver's learning-rate schedule. The inner loop is MAML's, never differentiated.
"""

from __future__ import annotations

import torch

from algorithms.base import LossFn, OuterUpdate, TaskBatch, Vectorize, accuracy, map_tasks
from algorithms.maml import MAML
from algorithms.models import FunctionalModel


class Reptile(MAML):
    def __init__(
        self,
        model: FunctionalModel,
        loss_fn: LossFn,
        inner_lr: float,
        inner_steps: int,
        vectorize: Vectorize = "vmap",
        transductive: bool = True,
        classify: bool = False,
    ):
        super().__init__(
            model, loss_fn, inner_lr, inner_steps, first_order=True, vectorize=vectorize, transductive=transductive, classify=classify
        )

    def task_update(self, meta_params: torch.Tensor, task: TaskBatch):
        adapted = self.adapt(meta_params, task["support_x"], task["support_y"], self.inner_steps)
        pre_out = self.predict(meta_params, task["support_x"], task["query_x"])
        post_out = self.predict(adapted, task["support_x"], task["query_x"])
        metrics = {}
        if self.classify:
            metrics = {"accuracy": accuracy(post_out, task["query_y"]), "accuracy_pre": accuracy(pre_out, task["query_y"])}
        return meta_params - adapted, self.loss_fn(pre_out, task["query_y"]), self.loss_fn(post_out, task["query_y"]), metrics

    def outer_update(self, meta_params: torch.Tensor, batch: TaskBatch) -> OuterUpdate:
        with torch.no_grad():
            deltas, pre, post, metrics = map_tasks(self.task_update, meta_params, batch, self.vectorize)
        return OuterUpdate(deltas.sum(0), pre, post, metrics)
