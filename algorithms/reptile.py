"""Reptile (Nichol, Achiam and Schulman 2018).

Each task runs k inner steps from theta to phi; the outer optimizer is handed
``theta - phi`` as if it were a gradient, so plain SGD with learning rate epsilon gives
Reptile's ``theta <- theta + epsilon * mean(phi - theta)``. Annealing epsilon linearly is
the driver's learning-rate schedule. Nothing is differentiated through the inner loop.

Two choices from the paper's Omniglot setup are options here, because Reptile learns very
slowly without them:

- the :class:`~algorithms.inner_rules.Adam` rule: the inner loop is Adam with beta1 = 0,
  which makes the step size insensitive to the gradient scale. Fresh per task by default;
  with ``Adam(carry=True)`` (``algorithm.carry_inner_state``) its state carries on, see below.
- ``inner_batch``: Reptile has no outer loss, so in meta-training the queries of a task are
  simply more training data ("train shots" in the paper); the inner steps cycle through
  mini-batches of ``support + query``. Successive mini-batches are what make Reptile's
  update differ from a plain gradient step on the joint loss. At meta-test time the inner
  loop runs on the whole support set.

The carried inner state. supervised-reptile saves and restores only the model's variables
around each task, so its Adam slots (second moment, step count) run on through the tasks of
a meta-batch, one after the other, and across iterations; evaluation starts from them and
puts them back afterwards. A first inner step from a warm second moment is a scaled
gradient step, not the sign-like jump of a fresh Adam. Run one after the other, the tasks of
an iteration could not be spread over workers, and a state kept on a worker would depend on
which shard it got. So here the state is part of the meta-state the driver owns: it sits
after the weights in the flat vector sent once per iteration; every task of an iteration
starts from it, and its next value is the mean of the tasks' end states, reduced in task
order like ``theta - phi`` (it rides in ``OuterUpdate.direction``'s tail; the driver
replaces the tail instead of stepping it). That is supervised-reptile's state averaged over
the meta-batch rather than threaded through it: the same long memory of squared gradients
(beta2 = 0.999), advancing ``inner_steps`` per iteration instead of ``meta_batch *
inner_steps``, and bitwise independent of the worker count. Meta-test adapts from the state
and never changes it, as supervised-reptile's evaluation. (A state per task index would keep
``meta_batch`` histories, each seeing a slice of the tasks, and leave no one state to test with.)
"""

from __future__ import annotations

import torch

from metaorch.algorithms.base import LossFn, OuterUpdate, Vectorize, accuracy, map_tasks
from metaorch.algorithms.gradient_based import GradientBasedLearner
from metaorch.algorithms.inner_rules import InnerRule
from metaorch.algorithms.models import FunctionalModel
from metaorch.tasks.base import TaskBatch


class Reptile(GradientBasedLearner):
    def __init__(
        self,
        model: FunctionalModel,
        loss_fn: LossFn,
        rule: InnerRule,
        inner_steps: int,
        vectorize: Vectorize = "vmap",
        transductive: bool = True,
        classify: bool = False,
        inner_batch: int | None = None,
    ):
        super().__init__(model, loss_fn, rule, inner_steps, vectorize, transductive, classify)
        self.inner_batch = inner_batch

    def adapt(
        self, meta_params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int, inner_batch: int | None = None
    ) -> torch.Tensor:
        """``steps`` inner steps; with ``inner_batch``, step j uses rows ``j mod b :: b`` of ``b`` batches.

        Meta-test (``query_logits``, the exported model) adapts on the full support set.
        """
        return self.adapt_carrying(meta_params, x, y, steps, inner_batch)[0]

    def adapt_carrying(
        self, meta_params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int, inner_batch: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`adapt` from the carried inner state; also the state it ends in (empty when none is carried)."""
        batches = 1 if inner_batch is None else max(1, -(-x.shape[0] // inner_batch))

        def step_loss(w: torch.Tensor, j: int) -> torch.Tensor:
            if batches == 1:
                return self.loss(w, x, y)
            return self.loss(w, x[j % batches :: batches], y[j % batches :: batches])

        weights = self.weights(meta_params)
        state = self.rule.begin(weights, self.rule_params(meta_params), self.carried_state(meta_params))
        adapted, state = self.run_rule(step_loss, weights, state, steps, create_graph=False)
        return adapted, self.rule.carried(state) if self.carried_size else weights[:0]

    def task_update(self, meta_params: torch.Tensor, task: TaskBatch):
        if self.inner_batch is None:
            train_x, train_y = task["support_x"], task["support_y"]
        else:
            train_x = torch.cat([task["support_x"], task["query_x"]])
            train_y = torch.cat([task["support_y"], task["query_y"]])
        weights = self.weights(meta_params)
        adapted, end_state = self.adapt_carrying(meta_params, train_x, train_y, self.inner_steps, self.inner_batch)
        pre_out = self.predict(weights, task["support_x"], task["query_x"])
        post_out = self.predict(adapted, task["support_x"], task["query_x"])  # queries seen in training when inner_batch is set
        metrics = {}
        if self.classify:
            metrics = {"accuracy": accuracy(post_out, task["query_y"]), "accuracy_pre": accuracy(pre_out, task["query_y"])}
        direction = torch.cat([weights - adapted, end_state]) if self.carried_size else weights - adapted
        return direction, self.loss_fn(pre_out, task["query_y"]), self.loss_fn(post_out, task["query_y"]), metrics

    def outer_update(self, meta_params: torch.Tensor, batch: TaskBatch) -> OuterUpdate:
        """Reptile has no outer loss to differentiate: its direction is ``theta - phi``, summed
        (followed by the summed end states of the carried inner state, if any)."""
        with torch.no_grad():
            deltas, pre, post, metrics = map_tasks(self.task_update, meta_params, batch, self.vectorize)
        return OuterUpdate(deltas.sum(0), pre, post, metrics)
