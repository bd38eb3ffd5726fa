"""The template of gradient-based meta-learners (MAML and its kin, ANIL, Reptile).

As jax-meta-learning's MetaLearner: a method says how it adapts (:meth:`adapt`, the inner
loop); the task loss, the outer loss (the query loss after adapting) and the batched outer
step (its gradient, summed over a chunk of tasks) are written once here. How one inner step
moves the weights is an :class:`~algorithms.inner_rules.InnerRule` (SGD, Meta-SGD's
learned rates, Reptile's Adam), and :meth:`descend` is the one inner loop every method runs.

The outer gradient is differentiated through the unrolled inner loop, so second-order
terms are exact: with ``torch.func`` under ``vmap`` (small models), with one plain autograd
graph per chunk otherwise (conv nets, where it is about twice as fast).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import grad_and_value

from metaorch.algorithms.base import LossFn, OuterUpdate, Vectorize, accuracy, inner_grad, map_tasks
from metaorch.algorithms.inner_rules import InnerRule
from metaorch.algorithms.meta_model import MetaModel
from metaorch.algorithms.models import FunctionalModel
from metaorch.tasks.base import TaskBatch


class GradientBasedLearner(ABC):
    """Meta-parameters: the model's weights, then the rule's own (Meta-SGD's rates), if any, then
    the inner state the rule carries from one adaptation to the next (``carried_size`` floats, if
    any): the outer optimizer steps all but that tail, which the driver replaces (Reptile)."""

    adapted: str | None = None  # the submodule the inner loop changes (ANIL: "head"); None: all

    def __init__(
        self,
        model: FunctionalModel,
        loss_fn: LossFn,
        rule: InnerRule,
        inner_steps: int,
        vectorize: Vectorize = "vmap",
        transductive: bool = True,
        classify: bool = False,
        track_pre: bool = True,
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.rule = rule
        self.inner_steps = inner_steps
        self.vectorize = vectorize
        self.transductive = transductive  # see algorithms/conv4.py
        self.classify = classify  # report query accuracy
        self.track_pre = track_pre  # also the query loss before adaptation: one more forward per task
        self.carried_size = rule.carried_size(model.num_params)  # the rule's state kept after the meta-parameters

    def init_meta_params(self, seed: int) -> torch.Tensor:
        theta = self.model.init_params(seed)
        return torch.cat([theta, self.rule.init_params(theta), theta.new_zeros(self.carried_size)])

    def weights(self, meta_params: torch.Tensor) -> torch.Tensor:
        return meta_params[: self.model.num_params]

    def rule_params(self, meta_params: torch.Tensor) -> torch.Tensor:
        return meta_params[self.model.num_params : meta_params.shape[0] - self.carried_size]

    def carried_state(self, meta_params: torch.Tensor) -> torch.Tensor:
        """The inner state adaptations begin from (empty unless the rule carries one)."""
        return meta_params[meta_params.shape[0] - self.carried_size :]

    # -- what a method defines ------------------------------------------------------------
    @abstractmethod
    def adapt(self, meta_params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
        """The weights after ``steps`` inner steps on (x, y)."""

    # -- written once -----------------------------------------------------------------------
    def loss(self, weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model(weights, x), y)

    def descend(
        self, step_loss: Callable[[torch.Tensor, int], torch.Tensor], weights: torch.Tensor, learned: torch.Tensor, steps: int, create_graph: bool
    ) -> torch.Tensor:
        """``steps`` steps of the rule from ``weights``; step j descends ``step_loss(w, j)``.
        With ``create_graph`` the result stays differentiable to second order."""
        return self.run_rule(step_loss, weights, self.rule.begin(weights, learned), steps, create_graph)[0]

    def run_rule(
        self, step_loss: Callable[[torch.Tensor, int], torch.Tensor], weights: torch.Tensor, state: Any, steps: int, create_graph: bool
    ) -> tuple[torch.Tensor, Any]:
        """The inner loop of :meth:`descend` from a given rule state; returns the weights and the state."""
        for j in range(steps):
            g = inner_grad(lambda w: step_loss(w, j), weights, create_graph)  # noqa: B023 (called at once)
            weights, state = self.rule.step(weights, g, state)
        return weights, state

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
        """The gradient of the chunk's summed outer losses."""
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
        lrs = self.rule.export_lrs(self.rule_params(meta_params))
        net = self.model.to_module(self.weights(meta_params))
        state = self.carried_state(meta_params).detach().clone() if self.carried_size else None
        return MetaModel(net, lrs, self.inner_steps, self.loss_fn, self.rule.optimizer, self.adapted, state)
