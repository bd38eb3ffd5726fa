"""Reptile (Nichol, Achiam and Schulman 2018).

Each task runs k inner steps from theta to phi; the outer optimizer is handed
``theta - phi`` as if it were a gradient, so plain SGD with learning rate epsilon gives
Reptile's ``theta <- theta + epsilon * mean(phi - theta)``. Annealing epsilon linearly is
the driver's learning-rate schedule. Nothing is differentiated through the inner loop.

Two choices from the paper's Omniglot setup are options here, because Reptile learns very
slowly without them:

- ``inner_optimizer="adam"``: the inner loop is Adam with beta1 = 0 (fresh state per task),
  which makes the step size insensitive to the gradient scale.
- ``inner_batch``: Reptile has no outer loss, so in meta-training the queries of a task are
  simply more training data ("train shots" in the paper); the inner steps cycle through
  mini-batches of ``support + query``. Successive mini-batches are what make Reptile's
  update differ from a plain gradient step on the joint loss. At meta-test time the inner
  loop runs on the whole support set.
"""

from __future__ import annotations

from typing import Literal

import torch

from metaorch.algorithms.base import ADAM_BETA2, ADAM_EPS, LossFn, OuterUpdate, TaskBatch, Vectorize, accuracy, inner_grad, map_tasks
from metaorch.algorithms.maml import MAML
from metaorch.algorithms.models import FunctionalModel

InnerOptimizer = Literal["sgd", "adam"]


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
        inner_optimizer: InnerOptimizer = "sgd",
        inner_batch: int | None = None,
    ):
        super().__init__(
            model, loss_fn, inner_lr, inner_steps, first_order=True, vectorize=vectorize, transductive=transductive, classify=classify
        )
        self.inner_optimizer = inner_optimizer
        self.inner_batch = inner_batch

    def adapt(
        self, meta_params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int, inner_batch: int | None = None
    ) -> torch.Tensor:
        """``steps`` inner steps; with ``inner_batch``, step j uses rows ``j mod b :: b`` of ``b`` batches.

        Meta-test (``query_logits``, the exported model) adapts on the full support set.
        """
        weights = self.weights(meta_params)
        batches = 1 if inner_batch is None else max(1, -(-x.shape[0] // inner_batch))
        second_moment = torch.zeros_like(weights)
        for j in range(steps):
            xb, yb = (x, y) if batches == 1 else (x[j % batches :: batches], y[j % batches :: batches])
            g = inner_grad(lambda w: self.loss(w, xb, yb), weights, create_graph=False)
            if self.inner_optimizer == "sgd":
                weights = weights - self.inner_lr * g
            else:  # Adam with beta1 = 0, bias-corrected second moment
                second_moment = ADAM_BETA2 * second_moment + (1 - ADAM_BETA2) * g * g
                v_hat = second_moment / (1 - ADAM_BETA2 ** (j + 1))
                weights = weights - self.inner_lr * g / (v_hat.sqrt() + ADAM_EPS)
        return weights

    def task_update(self, meta_params: torch.Tensor, task: TaskBatch):
        if self.inner_batch is None:
            train_x, train_y = task["support_x"], task["support_y"]
        else:
            train_x = torch.cat([task["support_x"], task["query_x"]])
            train_y = torch.cat([task["support_y"], task["query_y"]])
        adapted = self.adapt(meta_params, train_x, train_y, self.inner_steps, self.inner_batch)
        pre_out = self.predict(meta_params, task["support_x"], task["query_x"])
        post_out = self.predict(adapted, task["support_x"], task["query_x"])  # queries seen in training when inner_batch is set
        metrics = {}
        if self.classify:
            metrics = {"accuracy": accuracy(post_out, task["query_y"]), "accuracy_pre": accuracy(pre_out, task["query_y"])}
        return meta_params - adapted, self.loss_fn(pre_out, task["query_y"]), self.loss_fn(post_out, task["query_y"]), metrics

    def outer_update(self, meta_params: torch.Tensor, batch: TaskBatch) -> OuterUpdate:
        with torch.no_grad():
            deltas, pre, post, metrics = map_tasks(self.task_update, meta_params, batch, self.vectorize)
        return OuterUpdate(deltas.sum(0), pre, post, metrics)
