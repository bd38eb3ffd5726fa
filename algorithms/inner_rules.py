"""Inner-loop update rules: how one adaptation step turns weights and their gradient into new weights.

As learn2learn's GBML makes the update a pluggable transform, the gradient-based learners
(:mod:`algorithms.gradient_based`) take a rule instead of flags:

* :class:`SGD`: ``w - lr * g`` (MAML, first-order MAML, ANIL; Reptile's plain inner loop);
* :class:`MetaSGD`: ``w - alpha * g`` with ``alpha`` a learned rate per weight (Li et al. 2017);
* :class:`Adam`: Adam with beta1 = 0 (Reptile's Omniglot setup, Nichol et al. 2018).

A rule may own meta-parameters (Meta-SGD's rates): they sit in the flat meta-parameter
vector after the weights, one per weight, so the outer step learns them like any weight.
A rule's state (Adam's second moment) lives for one adaptation: it starts afresh per task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

# Reptile's inner Adam: beta1 = 0, so only the second moment is kept.
ADAM_BETA2, ADAM_EPS = 0.999, 1e-8


class InnerRule(ABC):
    """One inner step. ``optimizer`` names how the exported :class:`MetaModel` replays it."""

    optimizer: str

    def __init__(self, lr: float):
        self.lr = lr

    def init_params(self, theta: torch.Tensor) -> torch.Tensor:
        """The rule's own meta-parameters for weights ``theta``, to follow them in the flat vector."""
        return theta[:0]

    @abstractmethod
    def begin(self, weights: torch.Tensor, learned: torch.Tensor) -> Any:
        """The state of one adaptation from ``weights``; ``learned``: the rule's meta-parameters for them."""

    @abstractmethod
    def step(self, weights: torch.Tensor, grad: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...

    def export_lrs(self, learned: torch.Tensor) -> torch.Tensor | float:
        """The learning rate(s) the exported model adapts with."""
        return self.lr


class SGD(InnerRule):
    optimizer = "sgd"

    def begin(self, weights: torch.Tensor, learned: torch.Tensor) -> torch.Tensor | float:
        return self.lr

    def step(self, weights: torch.Tensor, grad: torch.Tensor, lrs: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor | float]:
        return weights - lrs * grad, lrs


class MetaSGD(SGD):
    """SGD whose per-weight rates are meta-parameters, initialised at ``lr``."""

    def init_params(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.full_like(theta, self.lr)

    def begin(self, weights: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
        return learned

    def export_lrs(self, learned: torch.Tensor) -> torch.Tensor:
        return learned.detach().clone()


class Adam(InnerRule):
    """Adam with beta1 = 0 and a bias-corrected second moment: a step size insensitive to the gradient's scale."""

    optimizer = "adam"

    def begin(self, weights: torch.Tensor, learned: torch.Tensor) -> tuple[torch.Tensor, int]:
        return torch.zeros_like(weights), 0

    def step(self, weights: torch.Tensor, grad: torch.Tensor, state: tuple[torch.Tensor, int]) -> tuple[torch.Tensor, tuple[torch.Tensor, int]]:
        second_moment, j = state
        second_moment = ADAM_BETA2 * second_moment + (1 - ADAM_BETA2) * grad * grad
        v_hat = second_moment / (1 - ADAM_BETA2 ** (j + 1))
        return weights - self.lr * grad / (v_hat.sqrt() + ADAM_EPS), (second_moment, j + 1)
