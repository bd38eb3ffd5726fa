"""The central learner: owns the meta-parameters and the outer optimizer.

The outer step consumes an already-reduced direction, so the same code serves gradients
(MAML, FOMAML, Meta-SGD) and Reptile's ``theta - phi``. The learning rate is a pure
function of the iteration (Reptile's linear annealing of epsilon), so resuming needs no
scheduler state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from orchestrator.config import OuterConfig


class Learner:
    def __init__(self, meta_params: torch.Tensor, outer: OuterConfig):
        self.outer = outer
        self.params = torch.nn.Parameter(meta_params.detach().clone().float())
        if outer.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam([self.params], lr=outer.lr)
        else:
            self.optimizer = torch.optim.SGD([self.params], lr=outer.lr)

    def lr_at(self, iteration: int) -> float:
        if self.outer.final_lr is None:
            return self.outer.lr
        frac = iteration / self.outer.iterations
        return (1 - frac) * self.outer.lr + frac * self.outer.final_lr

    def snapshot(self) -> np.ndarray:
        """A copy of the parameters for the object store."""
        return self.params.detach().numpy().copy()

    def step(self, direction: torch.Tensor, iteration: int) -> float:
        lr = self.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.params.grad = direction.to(self.params.dtype)
        self.optimizer.step()
        self.params.grad = None
        return lr

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)
