"""Inner-loop update rules: how one adaptation step turns weights and their gradient into new weights.

As learn2learn's GBML makes the update a pluggable transform, the gradient-based learners
(:mod:`algorithms.gradient_based`) take a rule instead of flags:

* :class:`SGD`: ``w - lr * g`` (MAML, first-order MAML, ANIL; Reptile's plain inner loop);
* :class:`MetaSGD`: ``w - alpha * g`` with ``alpha`` a learned rate per weight (Li et al. 2017);
* :class:`Adam`: Adam with beta1 = 0 (Reptile's Omniglot setup, Nichol et al. 2018).

A rule may own meta-parameters (Meta-SGD's rates): they sit in the flat meta-parameter
vector after the weights, one per weight, so the outer step learns them like any weight.
A rule's state (Adam's second moment) lives for one adaptation and starts afresh per task,
unless the rule carries it (``Adam(carry=True)``, supervised-reptile's semantics): then the
state a task starts from is a flat vector the learner keeps after the meta-parameters
(:meth:`InnerRule.carried_size` floats; see :mod:`algorithms.reptile` for how it evolves).
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

    def carried_size(self, num_weights: int) -> int:
        """Floats of state one adaptation hands to the next (0: every adaptation starts afresh)."""
        return 0

    @abstractmethod
    def begin(self, weights: torch.Tensor, learned: torch.Tensor, carried: torch.Tensor | None = None) -> Any:
        """The state of one adaptation from ``weights``; ``learned``: the rule's meta-parameters for them;
        ``carried``: the flat state an earlier adaptation left (rules with a ``carried_size``)."""

    @abstractmethod
    def step(self, weights: torch.Tensor, grad: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...

    def carried(self, state: Any) -> torch.Tensor:
        """``state`` as the flat vector the next adaptation begins from (rules with a ``carried_size``)."""
        raise NotImplementedError(f"{type(self).__name__} carries no state")

    def export_lrs(self, learned: torch.Tensor) -> torch.Tensor | float:
        """The learning rate(s) the exported model adapts with."""
        return self.lr


class SGD(InnerRule):
    optimizer = "sgd"

    def begin(self, weights: torch.Tensor, learned: torch.Tensor, carried: torch.Tensor | None = None) -> torch.Tensor | float:
        return self.lr

    def step(self, weights: torch.Tensor, grad: torch.Tensor, lrs: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor | float]:
        return weights - lrs * grad, lrs


class MetaSGD(SGD):
    """SGD whose per-weight rates are meta-parameters, initialised at ``lr``."""

    def init_params(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.full_like(theta, self.lr)

    def begin(self, weights: torch.Tensor, learned: torch.Tensor, carried: torch.Tensor | None = None) -> torch.Tensor:
        return learned

    def export_lrs(self, learned: torch.Tensor) -> torch.Tensor:
        return learned.detach().clone()


class Adam(InnerRule):
    """Adam with beta1 = 0 and a bias-corrected second moment: a step size insensitive to the gradient's scale.

    ``carry``: the state (second moment, step count) is handed on instead of starting at zero,
    as supervised-reptile's TensorFlow Adam keeps its slots across tasks: flat, it is the
    second moment followed by the number of steps taken (``num_weights + 1`` floats). The
    count keeps the bias correction ``1 - beta2**t`` right for a moment that is not fresh.
    """

    optimizer = "adam"

    def __init__(self, lr: float, carry: bool = False):
        super().__init__(lr)
        self.carry = carry

    def carried_size(self, num_weights: int) -> int:
        return num_weights + 1 if self.carry else 0

    def begin(self, weights: torch.Tensor, learned: torch.Tensor, carried: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        if carried is None or carried.numel() == 0:
            return torch.zeros_like(weights), 0
        return carried[:-1], carried[-1]

    def step(self, weights: torch.Tensor, grad: torch.Tensor, state: tuple[torch.Tensor, Any]) -> tuple[torch.Tensor, tuple[torch.Tensor, Any]]:
        second_moment, j = state
        second_moment = ADAM_BETA2 * second_moment + (1 - ADAM_BETA2) * grad * grad
        v_hat = second_moment / (1 - ADAM_BETA2 ** (j + 1))
        return weights - self.lr * grad / (v_hat.sqrt() + ADAM_EPS), (second_moment, j + 1)

    def carried(self, state: tuple[torch.Tensor, Any]) -> torch.Tensor:
        second_moment, j = state
        return torch.cat([second_moment, torch.as_tensor(j, dtype=second_moment.dtype, device=second_moment.device).reshape(1)])
