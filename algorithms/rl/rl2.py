"""RL² (Duan et al. 2016): a recurrent policy whose hidden state is the learning algorithm.

The environment wrapper (``tasks/rl/trial.py``) plays several episodes of one task as one
trial and feeds the policy (observation, previous action, previous reward, done flag), so
the GRU can infer the task from its own experience and exploit it in later episodes; the
hidden state starts afresh with each trial and is never reset inside one. Meta-training
is ordinary policy optimisation over trials: here PPO (Schulman et al. 2017) with GAE,
clipped importance ratios, a value loss on a value head that shares the GRU, and an
entropy bonus, for several epochs over minibatches of whole trials (the GRU is always
evaluated from the start of a trial, so its gradient sees the whole history).

:class:`GRUPolicy` is a :class:`Policy` for the rollout worker (``act`` one step at a time
with the carried state) and :meth:`GRUPolicy.evaluate` replays whole trials for training;
the two agree to float rounding, which the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from metaorch.algorithms.models import FunctionalModel
from metaorch.algorithms.rl.batching import concat_episodes, masked_mean, to_tensors
from metaorch.algorithms.rl.config import PPOConfig
from metaorch.algorithms.rl.returns import gae, normalize
from metaorch.algorithms.rl.trajectories import Sample, Trajectories

_LOG_2PI = math.log(2 * math.pi)


class _GRUNet(nn.Module):
    def __init__(self, obs_dim: int, out_dim: int, hidden: int, continuous: bool, init_std: float):
        super().__init__()
        self.gru = nn.GRU(obs_dim, hidden)
        self.head = nn.Linear(hidden, out_dim)  # Gaussian mean or categorical logits
        self.value = nn.Linear(hidden, 1)
        if continuous:
            self.log_std = nn.Parameter(torch.full((out_dim,), math.log(init_std)))

    def forward(self, obs: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """obs [T, N, obs_dim], h0 [N, hidden] -> (head [T, N, out], values [T, N], h_T [N, hidden])."""
        out, h = self.gru(obs, h0.unsqueeze(0))
        return self.head(out), self.value(out).squeeze(-1), h.squeeze(0)


class GRUPolicy:
    """A GRU policy with a value head over a flat parameter vector, discrete or continuous.

    ``num_actions`` for a categorical policy, ``act_dim`` for a diagonal Gaussian whose log
    standard deviation is a free parameter (as in ``GaussianMLPPolicy``). Like the MLP
    policies it takes pre-drawn ``noise`` (uniform for discrete, standard normal for
    continuous) so rollouts do not depend on how episodes are batched.
    """

    recurrent = True
    takes_noise = True

    def __init__(
        self,
        obs_dim: int,
        num_actions: int | None = None,
        act_dim: int | None = None,
        hidden: int = 256,
        init_std: float = 1.0,
        min_log_std: float = math.log(1e-6),
    ):
        if (num_actions is None) == (act_dim is None):
            raise ValueError("give exactly one of num_actions (discrete) and act_dim (continuous)")
        self.discrete = num_actions is not None
        self.num_actions = num_actions
        self.act_dim = act_dim
        self.obs_dim, self.hidden = obs_dim, hidden
        self.init_std, self.min_log_std = init_std, min_log_std
        out = num_actions if self.discrete else act_dim
        self.model = FunctionalModel(_GRUNet(obs_dim, out, hidden, not self.discrete, init_std))

    @property
    def num_params(self) -> int:
        return self.model.num_params

    def init_params(self, seed: int) -> torch.Tensor:
        """PyTorch's GRU/Linear initialisation, with the action head scaled by 0.01 so the
        first policy is near uniform (or zero-mean): early trials explore."""
        theta = self.model.init_params(seed)
        named = self.model.layout.unflatten(theta.clone())
        named["head.weight"] = named["head.weight"] * 0.01
        named["head.bias"] = torch.zeros_like(named["head.bias"])
        return self.model.layout.flatten(named)

    def initial_state(self, num_envs: int) -> torch.Tensor:
        return torch.zeros(num_envs, self.hidden, device=self._device())

    def _device(self) -> torch.device:
        return next(self.model.module.parameters()).device

    def to(self, device: torch.device | str) -> GRUPolicy:
        self.model.to(device)
        return self

    # -- distributions from the head's output ---------------------------------------------
    def _log_std(self, params: torch.Tensor) -> torch.Tensor:
        return self.model.layout.unflatten(params)["log_std"].clamp(min=self.min_log_std)

    def _log_prob(self, params: torch.Tensor, head: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return torch.log_softmax(head, -1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        log_std = self._log_std(params)
        z = (actions - head) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - 0.5 * _LOG_2PI).sum(-1)

    def _entropy(self, params: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            logp = torch.log_softmax(head, -1)
            return -(logp.exp() * logp).sum(-1)
        return (self._log_std(params) + 0.5 * (1.0 + _LOG_2PI)).sum(-1).expand(head.shape[:-1])

    # -- the Policy protocol: one step ----------------------------------------------------
    def act(
        self,
        params: torch.Tensor,
        obs: torch.Tensor,
        state: torch.Tensor | None,
        deterministic: bool = False,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if state is None:
            state = self.initial_state(obs.shape[0])
        head, _, next_state = self.model(params, obs.unsqueeze(0), h0=state)
        head = head.squeeze(0)
        if self.discrete:
            logp_all = torch.log_softmax(head, -1)
            if deterministic:
                actions = logp_all.argmax(-1)
            else:
                if noise is None:
                    noise = torch.rand(head.shape[:-1], device=head.device)
                cdf = logp_all.exp().cumsum(-1)  # inverse CDF, as CategoricalMLPPolicy
                actions = (cdf < noise.unsqueeze(-1)).sum(-1).clamp(max=self.num_actions - 1)
        elif deterministic:
            actions = head
        else:
            if noise is None:
                noise = torch.randn_like(head)
            actions = head + self._log_std(params).exp() * noise
        return actions, self._log_prob(params, head, actions), next_state

    # -- training: whole trials -----------------------------------------------------------
    def evaluate(
        self, params: torch.Tensor, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-probs, entropies, values), each [T, E], of trials replayed from the initial state.

        Steps after a trial's end (padding) get values too; callers mask them out. The GRU
        is causal, so padding never changes a real step's output.
        """
        h0 = torch.zeros(obs.shape[1], self.hidden, dtype=obs.dtype, device=obs.device)
        head, values, _ = self.model(params, obs, h0=h0)
        return self._log_prob(params, head, actions), self._entropy(params, head), values


# -- PPO -----------------------------------------------------------------------------------


def ppo_loss(
    policy: GRUPolicy,
    params: torch.Tensor,
    batch: dict[str, torch.Tensor],
    advantages: torch.Tensor,
    value_targets: torch.Tensor,
    config: PPOConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate + value loss - entropy bonus, means over real steps of the given trials."""
    mask = batch["mask"]
    logp, entropy, values = policy.evaluate(params, batch["observations"], batch["actions"])
    ratio = torch.exp(logp - batch["log_probs"])
    clipped = ratio.clamp(1.0 - config.clip, 1.0 + config.clip)
    policy_loss = -masked_mean(torch.minimum(ratio * advantages, clipped * advantages), mask)
    value_loss = 0.5 * masked_mean((values - value_targets) ** 2, mask)
    ent = masked_mean(entropy, mask)
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * ent
    with torch.no_grad():
        clip_frac = masked_mean(((ratio - 1.0).abs() > config.clip).float(), mask)
        approx_kl = masked_mean(batch["log_probs"] - logp, mask)
    stats = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": ent, "clip_fraction": clip_frac, "approx_kl": approx_kl}
    return loss, stats


class RL2Learner:
    """The learner's side of RL²: flat parameters, their Adam state, and the PPO update.

    Lives on the driver (``device`` may be a GPU); workers get ``params`` once per iteration.
    """

    def __init__(self, policy: GRUPolicy, params: torch.Tensor, config: PPOConfig = PPOConfig(), device: torch.device | str = "cpu", seed: int = 0):
        self.policy = policy.to(device)
        self.config = config
        self.device = torch.device(device)
        self.params = params.detach().to(self.device).clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.params], lr=config.lr)
        self.generator = torch.Generator().manual_seed(seed)  # minibatch order, on the CPU

    def update(self, trials: Sequence[Trajectories]) -> dict[str, float]:
        """PPO epochs over every task's trials (in task order); returns mean statistics."""
        c = self.config
        batch = to_tensors(concat_episodes(trials), self.device)
        mask = batch["mask"]
        with torch.no_grad():
            _, _, values = self.policy.evaluate(self.params, batch["observations"], batch["actions"])
            values = values * mask
            adv = gae(batch["rewards"], values, mask, c.gamma, c.gae_lambda, batch["terminated"])
            targets = adv + values
            if c.normalize_advantages:
                adv = normalize(adv, mask)
        n = mask.shape[1]
        per = max(1, math.ceil(n / c.minibatches))
        sums: dict[str, float] = {}
        count = 0
        for _ in range(c.epochs):
            order = torch.randperm(n, generator=self.generator).to(self.device)
            for start in range(0, n, per):
                cols = order[start : start + per]
                mb = {k: v[:, cols] for k, v in batch.items()}
                loss, stats = ppo_loss(self.policy, self.params, mb, adv[:, cols], targets[:, cols], c)
                self.optimizer.zero_grad()
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_([self.params], c.max_grad_norm)
                self.optimizer.step()
                stats["grad_norm"] = grad_norm
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                count += 1
        metrics = {k: v / count for k, v in sums.items()}
        metrics["trial_return"] = float(torch.cat([torch.as_tensor(t.returns()) for t in trials]).mean())
        return metrics


@dataclass(frozen=True)
class RL2Plan:
    """A task's rollouts: ``trials`` trials, each one long episode to the sampler (a :data:`Plan`)."""

    trials: int = 1

    def __call__(self, sample: Sample, params: torch.Tensor) -> dict[str, Any]:
        traj = sample(params, self.trials)
        return {"trials": traj, "returns": traj.returns()}


def trial_episode_returns(trials: Trajectories, episodes: int) -> np.ndarray:
    """[trials, episodes]: each inner episode's return, split at the done flag the trial
    wrapper puts last in the observation that follows an episode's end."""
    flags = trials.observations[..., -1] * trials.mask  # [T, N]
    episode = np.minimum(np.cumsum(flags, axis=0).astype(np.int64), episodes - 1)
    out = np.zeros((trials.episodes, episodes))
    for n in range(trials.episodes):
        np.add.at(out[n], episode[:, n], trials.rewards[:, n] * trials.mask[:, n])
    return out
