"""MAML (Finn et al. 2017), first-order MAML, and Meta-SGD (Li et al. 2017).

One class: first-order MAML treats the inner gradient as a constant (``first_order``);
Meta-SGD is MAML with the :class:`~algorithms.inner_rules.MetaSGD` rule, whose per-weight
learning rates are meta-parameters. The outer step is the template's
(:class:`~algorithms.gradient_based.GradientBasedLearner`).
"""

from __future__ import annotations

import torch

from metaorch.algorithms.base import LossFn, Vectorize
from metaorch.algorithms.gradient_based import GradientBasedLearner
from metaorch.algorithms.inner_rules import InnerRule
from metaorch.algorithms.models import FunctionalModel


class MAML(GradientBasedLearner):
    def __init__(
        self,
        model: FunctionalModel,
        loss_fn: LossFn,
        rule: InnerRule,
        inner_steps: int,
        first_order: bool = False,
        vectorize: Vectorize = "vmap",
        transductive: bool = True,
        classify: bool = False,
        track_pre: bool = True,
    ):
        super().__init__(model, loss_fn, rule, inner_steps, vectorize, transductive, classify, track_pre)
        self.first_order = first_order

    def adapt(self, meta_params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
        """Inner steps on every weight."""
        loss = lambda w, _: self.loss(w, x, y)  # noqa: E731
        return self.descend(loss, self.weights(meta_params), self.rule_params(meta_params), steps, not self.first_order)
