"""Models as functions of a flat parameter vector.

An ``nn.Module`` defines the architecture; :class:`FunctionalModel` evaluates it with
parameters taken from a flat vector via ``torch.func.functional_call``, so inner loops can
be written as plain tensor arithmetic and vectorised with ``torch.func.vmap``.
"""

from __future__ import annotations

import builtins
import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from metaorch.algorithms.params import ParamLayout


def mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """The MLP of Finn et al. 2017 for sinusoid regression (1-40-40-1, ReLU) when hidden=(40, 40);
    with ``nn.Tanh``, the policies of pytorch-maml-rl."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), activation()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class FunctionalModel:
    """An architecture evaluated at explicit flat parameters."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.layout = ParamLayout.of(module)

    @property
    def num_params(self) -> int:
        return self.layout.size

    def init_params(self, seed: int) -> torch.Tensor:
        """PyTorch's default initialisation, drawn from a private generator seeded by ``seed``."""
        fresh = copy.deepcopy(self.module)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in fresh.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        return self.layout.flatten(dict(fresh.named_parameters())).detach().float()

    def __call__(self, params: torch.Tensor, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return functional_call(self.module, self.layout.unflatten(params), (x,), kwargs)

    def sub(self, params: torch.Tensor, name: str, *args: object, **kwargs: object) -> torch.Tensor:
        """Call the submodule ``name`` (``"body"``, ``"head"``) at its share of ``params``."""
        named = self.layout.unflatten(params)
        own = {k[len(name) + 1 :]: v for k, v in named.items() if k.startswith(name + ".")}
        return functional_call(self.module.get_submodule(name), own, args, kwargs)

    def slice(self, prefix: str) -> builtins.slice:
        """Where the parameters under ``prefix`` (a submodule) sit in the flat vector."""
        start = 0
        found = []
        for name, n in zip(self.layout.names, self.layout.numels):
            if name.startswith(prefix + "."):
                found.append((start, start + n))
            start += n
        if not found or any(a != b for (_, a), (b, _) in zip(found, found[1:])):
            raise ValueError(f"no contiguous parameters under {prefix!r}")
        return builtins.slice(found[0][0], found[-1][1])

    def to(self, device: torch.device | str) -> FunctionalModel:
        self.module.to(device)
        return self

    def to_module(self, params: torch.Tensor) -> nn.Module:
        """A standalone copy of the architecture holding ``params``."""
        module = copy.deepcopy(self.module).cpu()
        with torch.no_grad():
            for name, value in self.layout.unflatten(params.detach().cpu()).items():
                module.get_parameter(name).copy_(value)
        return module
