"""MAML (Finn et al. 2017), first-order MAML, and Meta-SGD (Li et al. 2017).

One class: they differ only in whether the inner gradient is treated as a constant
(first order) and whether the inner learning rates are meta-parameters (Meta-SGD).
The outer gradient comes from ``torch.func.grad`` through the unrolled inner loop, so the
second-order terms are exact.
"""

from __future__ import annotations

import torch
from torch.func import grad, grad_and_value

from algorithms.base import LossFn, OuterUpdate, TaskBatch, Vectorize, map_tasks
from algorithms.models import FunctionalModel


class MAML:
    def __init__(
        self,
        model: FunctionalModel,
        loss_fn: LossFn,
        inner_lr: float,
        inner_steps: int,
        first_order: bool = False,
        learn_inner_lr: bool = False,
        vectorize: Vectorize = "vmap",
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.learn_inner_lr = learn_inner_lr
        self.vectorize = vectorize

    # -- meta-parameters: theta, then (Meta-SGD) one learning rate per weight --------------
    def init_meta_params(self, seed: int) -> torch.Tensor:
        theta = self.model.init_params(seed)
        if not self.learn_inner_lr:
            return theta
        return torch.cat([theta, torch.full_like(theta, self.inner_lr)])

    def weights(self, meta_params: torch.Tensor) -> torch.Tensor:
        return meta_params[: self.model.num_params]

    def inner_lrs(self, meta_params: torch.Tensor) -> torch.Tensor | float:
        return meta_params[self.model.num_params :] if self.learn_inner_lr else self.inner_lr

    # -- the MetaLearner interface ------------------------------------------------------
    def loss(self, weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model(weights, x), y)

    def adapt(self, meta_params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
        weights, lrs = self.weights(meta_params), self.inner_lrs(meta_params)
        for _ in range(steps):
            g = grad(self.loss)(weights, x, y)
            if self.first_order:
                g = g.detach()
            weights = weights - lrs * g
        return weights

    def outer_loss(self, meta_params: torch.Tensor, task: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Query loss after adaptation, and (as aux) the query loss before it."""
        adapted = self.adapt(meta_params, task["support_x"], task["support_y"], self.inner_steps)
        post = self.loss(adapted, task["query_x"], task["query_y"])
        pre = self.loss(self.weights(meta_params), task["query_x"], task["query_y"]).detach()
        return post, pre

    def outer_update(self, meta_params: torch.Tensor, batch: TaskBatch) -> OuterUpdate:
        per_task = grad_and_value(self.outer_loss, has_aux=True)
        grads, (post, pre) = map_tasks(per_task, meta_params, batch, self.vectorize)
        return OuterUpdate(direction=grads.sum(0), pre_loss=pre.detach(), post_loss=post.detach())
