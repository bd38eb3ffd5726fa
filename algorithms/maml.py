"""MAML (Finn et al. 2017), first-order MAML, and Meta-SGD (Li et al. 2017).

One class: they differ only in whether the inner gradient is treated as a constant
(first order) and whether the inner learning rates are meta-parameters (Meta-SGD).
The outer gradient is differentiated through the unrolled inner loop, so the second-order
terms are exact: with ``torch.func`` under ``vmap`` (small models), with one plain autograd
graph per chunk otherwise (conv nets, where it is about twice as fast).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad_and_value

from metaorch.algorithms.base import LossFn, OuterUpdate, TaskBatch, Vectorize, accuracy, inner_grad, map_tasks
from metaorch.algorithms.meta_model import MetaModel
from metaorch.algorithms.models import FunctionalModel


class MAML:
    inner_optimizer = "sgd"  # Reptile may use Adam
    adapted: str | None = None  # the submodule the inner loop changes (ANIL: "head"); None: all

    def __init__(
        self,
        model: FunctionalModel,
        loss_fn: LossFn,
        inner_lr: float,
        inner_steps: int,
        first_order: bool = False,
        learn_inner_lr: bool = False,
        vectorize: Vectorize = "vmap",
        transductive: bool = True,
        classify: bool = False,
        track_pre: bool = True,
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.learn_inner_lr = learn_inner_lr
        self.vectorize = vectorize
        self.transductive = transductive  # see algorithms/conv4.py
        self.classify = classify  # report query accuracy
        self.track_pre = track_pre  # also the query loss before adaptation: one more forward per task

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
            weights = weights - lrs * inner_grad(lambda w: self.loss(w, x, y), weights, not self.first_order)
        return weights

    def predict(self, weights: torch.Tensor, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Query outputs; not transductive: batch-norm statistics from the support rows."""
        if self.transductive:
            return self.model(weights, query_x)
        n = support_x.shape[0]
        return self.model(weights, torch.cat([support_x, query_x]), stats_rows=n)[n:]

    def query_logits(
        self,
        meta_params: torch.Tensor,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        steps: int | None = None,
    ) -> torch.Tensor:
        adapted = self.adapt(meta_params, support_x, support_y, self.inner_steps if steps is None else steps)
        return self.predict(adapted, support_x, query_x)

    def outer_loss(self, meta_params: torch.Tensor, task: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Query loss after adaptation; as aux the query loss before it (and accuracies)."""
        adapted = self.adapt(meta_params, task["support_x"], task["support_y"], self.inner_steps)
        post_out = self.predict(adapted, task["support_x"], task["query_x"])
        aux = {"pre_loss": torch.full((), float("nan"), device=post_out.device)}
        if self.classify:
            aux["accuracy"] = accuracy(post_out.detach(), task["query_y"])
        if self.track_pre:
            with torch.no_grad():
                pre_out = self.predict(self.weights(meta_params), task["support_x"], task["query_x"])
            aux["pre_loss"] = self.loss_fn(pre_out, task["query_y"])
            if self.classify:
                aux["accuracy_pre"] = accuracy(pre_out, task["query_y"])
        return self.loss_fn(post_out, task["query_y"]), aux

    def outer_update(self, meta_params: torch.Tensor, batch: TaskBatch) -> OuterUpdate:
        if self.vectorize == "vmap":
            per_task = grad_and_value(self.outer_loss, has_aux=True)
            grads, (post, aux) = map_tasks(per_task, meta_params, batch, self.vectorize)
            direction = grads.sum(0)
        else:  # one autograd graph over the chunk: no per-task gradients, no functorch overhead
            leaf = meta_params.detach().requires_grad_(True)
            post, aux = map_tasks(self.outer_loss, leaf, batch, "loop")
            (direction,) = torch.autograd.grad(post.sum(), leaf)
        pre = aux.pop("pre_loss")
        return OuterUpdate(direction, pre.detach(), post.detach(), {k: v.detach() for k, v in aux.items()})

    def export(self, meta_params: torch.Tensor) -> nn.Module:
        """The meta-initialisation as an ``nn.Module`` that can ``adapt`` itself (logged to MLflow)."""
        lrs = self.inner_lrs(meta_params)
        lrs = lrs if isinstance(lrs, float) else lrs.detach().clone()
        return MetaModel(self.model.to_module(self.weights(meta_params)), lrs, self.inner_steps, self.loss_fn, self.inner_optimizer, self.adapted)
