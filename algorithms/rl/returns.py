"""Discounted returns, GAE and the linear feature baseline over padded, time-major arrays.

All arrays are ``[T, E]`` (time, episode) with ``mask`` 1 on real steps; each episode's
steps are contiguous from ``t = 0`` (the :class:`Trajectories` contract), so "the next step
of the same episode" is simply ``t + 1`` where ``mask[t + 1]`` is 1.

An episode cut by the horizon (mask drops, not ``terminated``) is not bootstrapped unless a
``bootstrap`` value is given: pytorch-maml-rl's choice, which the linear baseline (fit on
the same truncated returns, with time as a feature) is consistent with, and RL²'s (a trial's
end really is the end of the agent's episode).
"""

from __future__ import annotations

import torch

from metaorch.algorithms.rl.batching import masked_mean


def _next_step_mask(mask: torch.Tensor) -> torch.Tensor:
    """``mask[t + 1]`` (0 past the horizon): whether step ``t`` continues into step ``t + 1``."""
    return torch.cat([mask[1:], torch.zeros_like(mask[:1])])


def discounted_returns(
    rewards: torch.Tensor, mask: torch.Tensor, gamma: float, terminated: torch.Tensor | None = None
) -> torch.Tensor:
    """``R_t = r_t + gamma R_{t+1}`` within each episode, 0 on padding."""
    cont = _next_step_mask(mask)
    if terminated is not None:
        cont = cont * (1.0 - terminated)
    rewards = rewards * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * cont[t] * running
        out[t] = running
    return out * mask


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    terminated: torch.Tensor | None = None,
    bootstrap: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalised advantage estimates (Schulman et al. 2016), 0 on padding.

    ``bootstrap[t]`` is V(s_{t+1}) used where an episode is cut at step ``t`` by the
    horizon; a ``terminated`` step gets no next value. ``lam = 1`` gives ``returns - values``.
    """
    cont = _next_step_mask(mask)
    stop = 1.0 - terminated if terminated is not None else torch.ones_like(mask)
    next_values = torch.cat([values[1:], torch.zeros_like(values[:1])]) * cont
    if bootstrap is not None:
        next_values = next_values + bootstrap * mask * (1.0 - cont)
    deltas = (rewards + gamma * stop * next_values - values) * mask
    out = torch.zeros_like(deltas)
    running = torch.zeros_like(deltas[0])
    for t in range(deltas.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * cont[t] * stop[t] * running
        out[t] = running
    return out * mask


def normalize(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over real steps (padding stays 0)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) / (var.sqrt() + eps) * mask


class LinearFeatureBaseline:
    """Duan et al. 2016's value baseline: least squares on (o, o², t, t², t³, 1).

    Cheap, needs no optimiser state, and is refit per task on that task's own episodes,
    which is what makes MAML's inner step a deterministic function of the pre-adaptation
    episodes: the learner recomputes it bit for bit from the same data. Observations are
    clipped to ±10 (garage) so a far-off state cannot dominate the normal equations; the
    fit runs in float64 and retries with 10x the ridge when it fails (pytorch-maml-rl).
    """

    def __init__(self, reg_coeff: float = 1e-5, max_tries: int = 5):
        self.reg_coeff = reg_coeff
        self.max_tries = max_tries
        self.weights: torch.Tensor | None = None

    @staticmethod
    def features(observations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[T, E, 2 obs_dim + 4]; all zero on padding so padded rows drop out of the fit."""
        obs = observations.clamp(-10.0, 10.0)
        m = mask.unsqueeze(-1)
        t = torch.arange(obs.shape[0], device=obs.device, dtype=obs.dtype).view(-1, 1, 1) / 100.0
        t = t.expand(*obs.shape[:2], 1)
        return torch.cat([obs, obs**2, t, t**2, t**3, torch.ones_like(t)], dim=-1) * m

    def fit(self, observations: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> LinearFeatureBaseline:
        x = self.features(observations, mask).reshape(-1, 2 * observations.shape[-1] + 4).double()
        y = (returns * mask).reshape(-1, 1).double()
        xtx, xty = x.T @ x, x.T @ y
        eye = torch.eye(xtx.shape[0], dtype=xtx.dtype, device=xtx.device)
        reg = self.reg_coeff
        for _ in range(self.max_tries):
            try:
                w = torch.linalg.solve(xtx + reg * eye, xty)
            except RuntimeError:  # singular even with the ridge
                w = None
            if w is not None and bool(torch.isfinite(w).all()):
                self.weights = w.squeeze(-1)
                return self
            reg *= 10.0
        raise RuntimeError(f"linear baseline fit failed with ridge up to {reg / 10.0:g}: non-finite observations or returns?")

    def predict(self, observations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            raise RuntimeError("predict before fit")
        f = self.features(observations, mask)
        return (f.double() @ self.weights).to(observations.dtype) * mask


def baseline_advantages(
    batch: dict[str, torch.Tensor], gamma: float, lam: float, normalize_advantages: bool = True, reg_coeff: float = 1e-5
) -> torch.Tensor:
    """GAE against a linear baseline fit on this batch's own discounted returns (a constant: no grad)."""
    with torch.no_grad():
        mask, rewards = batch["mask"], batch["rewards"]
        returns = discounted_returns(rewards, mask, gamma, batch["terminated"])
        values = LinearFeatureBaseline(reg_coeff).fit(batch["observations"], returns, mask).predict(batch["observations"], mask)
        adv = gae(rewards, values, mask, gamma, lam, batch["terminated"])
        return normalize(adv, mask) if normalize_advantages else adv
