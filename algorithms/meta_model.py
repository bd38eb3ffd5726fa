"""The trained meta-model as a plain ``nn.Module`` that knows how to adapt itself.

This is what lands in MLflow: ``mlflow.pytorch.load_model`` returns it, ``forward`` is the
meta-initialisation, and ``adapt(x, y)`` returns a fine-tuned copy using the inner loop it
was meta-trained with (including Meta-SGD's learned per-weight learning rates).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class MetaModel(nn.Module):
    def __init__(
        self,
        net: nn.Module,
        inner_lrs: torch.Tensor | float,
        inner_steps: int,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.mse_loss,
    ):
        super().__init__()
        self.net = net
        lrs = torch.as_tensor(inner_lrs, dtype=torch.float32)
        self.register_buffer("inner_lrs", lrs.detach().clone())
        self.inner_steps = inner_steps
        self.loss_fn = loss_fn  # the learner's own (a torch.nn.functional function: pickles by name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int | None = None) -> nn.Module:
        """A copy of the network after ``steps`` inner SGD steps on (x, y)."""
        net = copy.deepcopy(self.net)
        params = list(net.parameters())
        lrs = torch.split(self.inner_lrs, [p.numel() for p in params]) if self.inner_lrs.ndim else None
        for _ in range(self.inner_steps if steps is None else steps):
            grads = torch.autograd.grad(self.loss_fn(net(x), y), params)
            with torch.no_grad():
                for i, (p, g) in enumerate(zip(params, grads)):
                    p -= (lrs[i].view_as(p) if lrs is not None else self.inner_lrs) * g
        return net
