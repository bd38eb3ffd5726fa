"""The trained meta-model as a plain ``nn.Module`` that knows how to adapt itself.

This is what lands in MLflow: ``mlflow.pytorch.load_model`` returns it, ``forward`` is the
meta-initialisation, and ``adapt(x, y)`` returns a fine-tuned copy using the inner loop it
was meta-trained with (including Meta-SGD's learned per-weight learning rates, and
Reptile's inner Adam).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from metaorch.algorithms.inner_rules import ADAM_BETA2, ADAM_EPS


class MetaModel(nn.Module):
    def __init__(
        self,
        net: nn.Module,
        inner_lrs: torch.Tensor | float,
        inner_steps: int,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.mse_loss,
        inner_optimizer: str = "sgd",
        adapted: str | None = None,
        inner_state: torch.Tensor | None = None,
    ):
        super().__init__()
        self.net = net
        lrs = torch.as_tensor(inner_lrs, dtype=torch.float32)
        self.register_buffer("inner_lrs", lrs.detach().clone())
        self.inner_steps = inner_steps
        self.loss_fn = loss_fn  # the learner's own (a torch.nn.functional function: pickles by name)
        self.inner_optimizer = inner_optimizer
        self.adapted = adapted  # ANIL: only the parameters under this submodule ("head") adapt
        # Reptile with algorithm.carry_inner_state: the inner Adam's carried second moment and step count
        self.inner_state = None if inner_state is None else inner_state.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int | None = None) -> nn.Module:
        """A copy of the network after ``steps`` inner steps on (x, y)."""
        net = copy.deepcopy(self.net)
        params = [p for n, p in net.named_parameters() if self.adapted is None or n.startswith(self.adapted + ".")]
        steps = self.inner_steps if steps is None else steps
        if self.inner_optimizer == "adam":  # Reptile: Adam with beta1 = 0, fresh state unless one was carried
            opt = torch.optim.Adam(params, lr=float(self.inner_lrs), betas=(0.0, ADAM_BETA2), eps=ADAM_EPS)
            if getattr(self, "inner_state", None) is not None:  # models saved before the field have none
                moments = torch.split(self.inner_state[:-1], [p.numel() for p in params])
                for p, v in zip(params, moments):
                    opt.state[p] = {"step": self.inner_state[-1].clone(), "exp_avg": torch.zeros_like(p), "exp_avg_sq": v.view_as(p).clone()}
            for _ in range(steps):
                opt.zero_grad()
                self.loss_fn(net(x), y).backward()
                opt.step()
            return net
        lrs = torch.split(self.inner_lrs, [p.numel() for p in params]) if self.inner_lrs.ndim else None
        for _ in range(steps):
            grads = torch.autograd.grad(self.loss_fn(net(x), y), params)
            with torch.no_grad():
                for i, (p, g) in enumerate(zip(params, grads)):
                    p -= (lrs[i].view_as(p) if lrs is not None else self.inner_lrs) * g
        return net
