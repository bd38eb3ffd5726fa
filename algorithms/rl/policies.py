"""Stochastic MLP policies over a flat parameter vector (the :class:`Policy` protocol).

The networks are those of pytorch-maml-rl (Finn et al. 2017's MAML-TRPO): a tanh MLP
whose last layer gives the Gaussian mean (or the categorical logits), and, for continuous
actions, one learned log standard deviation per action dimension that does not depend on
the observation. Everything is a function of ``params``, so an algorithm can differentiate
``log_prob`` through an inner update (MAML) or ``vmap`` it over tasks.

Sampling takes optional pre-drawn ``noise`` (standard normal for Gaussian, uniform in
[0, 1) for categorical, one row per observation). A rollout worker draws each episode's
noise from that episode's own generator, so an action never depends on which other
episodes shared its batch: rollouts are the same for any number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.distributions import Categorical, Independent, Normal

from metaorch.algorithms.models import FunctionalModel, mlp

_LOG_2PI = math.log(2 * math.pi)
MIN_LOG_STD = math.log(1e-6)  # pytorch-maml-rl's floor on the standard deviation


class _GaussianNet(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], init_std: float):
        super().__init__()
        self.mean = mlp(obs_dim, hidden, act_dim, nn.Tanh)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean(obs)
        return mean, self.log_std.clamp(min=MIN_LOG_STD).expand_as(mean)


class _MLPPolicy:
    """Shared parts: the functional network and the xavier initialisation of pytorch-maml-rl."""

    recurrent = False
    takes_noise = True  # act(..., noise=...) is honoured; see the module docstring

    def __init__(self, net: nn.Module, init_std: float | None = None):
        self.model = FunctionalModel(net)
        self.init_std = init_std
        self._linears = [(f"{n}.weight", f"{n}.bias") for n, m in net.named_modules() if isinstance(m, nn.Linear)]

    def _mlp(self, params: torch.Tensor, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The tanh MLP by hand: the same function as ``self.model(params, obs)``, without
        ``functional_call`` swapping the module's parameters (a third of a rollout step's
        policy time, and not thread-safe)."""
        named = self.model.layout.unflatten(params)
        h = obs
        for i, (w, b) in enumerate(self._linears):
            h = F.linear(h, named[w], named[b])
            if i < len(self._linears) - 1:
                h = torch.tanh(h)
        return h, named

    @property
    def num_params(self) -> int:
        return self.model.num_params

    def init_params(self, seed: int) -> torch.Tensor:
        """Xavier-uniform weights, zero biases, log-std at ``log(init_std)``; seeded privately."""
        gen = torch.Generator().manual_seed(seed)
        named = {}
        for name, p in self.model.module.named_parameters():
            if name == "log_std":
                value = torch.full_like(p, math.log(self.init_std))
            elif name.endswith("weight"):
                bound = math.sqrt(6.0 / (p.shape[0] + p.shape[1]))
                value = (torch.rand(p.shape, generator=gen) * 2 - 1) * bound
            else:
                value = torch.zeros_like(p)
            named[name] = value
        return self.model.layout.flatten(named).detach().float()

    def initial_state(self, num_envs: int) -> None:
        return None

    def to(self, device: torch.device | str) -> _MLPPolicy:
        self.model.to(device)
        return self


class GaussianMLPPolicy(_MLPPolicy):
    """Diagonal Gaussian over continuous actions; mean from a tanh MLP, learned state-free std."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64), init_std: float = 1.0):
        if obs_dim < 1 or act_dim < 1 or init_std <= 0:
            raise ValueError(f"need obs_dim, act_dim >= 1 and init_std > 0, got {obs_dim}, {act_dim}, {init_std}")
        super().__init__(_GaussianNet(obs_dim, act_dim, tuple(hidden), init_std), init_std)
        self.obs_dim, self.act_dim = obs_dim, act_dim

    def mean_log_std(self, params: torch.Tensor, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, named = self._mlp(params, obs)
        return mean, named["log_std"].clamp(min=MIN_LOG_STD).expand_as(mean)

    def distribution(self, params: torch.Tensor, obs: torch.Tensor) -> Independent:
        mean, log_std = self.mean_log_std(params, obs)
        return Independent(Normal(mean, log_std.exp(), validate_args=False), 1, validate_args=False)

    def log_prob(self, params: torch.Tensor, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Summed over action dimensions; plain arithmetic, so it works under ``vmap``."""
        mean, log_std = self.mean_log_std(params, obs)
        return _normal_log_prob(mean, log_std, actions)

    def entropy(self, params: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        _, log_std = self.mean_log_std(params, obs)
        return (log_std + 0.5 * (1.0 + _LOG_2PI)).sum(-1)

    def act(
        self,
        params: torch.Tensor,
        obs: torch.Tensor,
        state: None = None,
        deterministic: bool = False,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        mean, log_std = self.mean_log_std(params, obs)
        if deterministic:
            actions = mean
        else:
            if noise is None:
                noise = torch.randn_like(mean)
            actions = mean + log_std.exp() * noise
        return actions, _normal_log_prob(mean, log_std, actions), None


class CategoricalMLPPolicy(_MLPPolicy):
    """Softmax over ``num_actions`` discrete actions, logits from a tanh MLP."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: Sequence[int] = (64, 64)):
        if obs_dim < 1 or num_actions < 2:
            raise ValueError(f"need obs_dim >= 1 and num_actions >= 2, got {obs_dim}, {num_actions}")
        super().__init__(mlp(obs_dim, tuple(hidden), num_actions, nn.Tanh))
        self.obs_dim, self.num_actions = obs_dim, num_actions

    def logits(self, params: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self._mlp(params, obs)[0], -1)

    def distribution(self, params: torch.Tensor, obs: torch.Tensor) -> Categorical:
        return Categorical(logits=self.logits(params, obs), validate_args=False)

    def log_prob(self, params: torch.Tensor, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.logits(params, obs).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, params: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        logp = self.logits(params, obs)
        return -(logp.exp() * logp).sum(-1)

    def act(
        self,
        params: torch.Tensor,
        obs: torch.Tensor,
        state: None = None,
        deterministic: bool = False,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        logp = self.logits(params, obs)
        if deterministic:
            actions = logp.argmax(-1)
        else:
            if noise is None:
                noise = torch.rand(logp.shape[:-1], device=logp.device)
            # inverse CDF: the first action whose cumulative probability exceeds the uniform draw
            cdf = logp.exp().cumsum(-1)
            actions = (cdf < noise.unsqueeze(-1)).sum(-1).clamp(max=self.num_actions - 1)
        return actions, logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1), None


def _normal_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - 0.5 * _LOG_2PI).sum(-1)
