"""PEARL's agent, what a worker runs (oyster's ``PEARLAgent``): the context encoder and its
posterior over the latent task variable z, the tanh-Gaussian actor that takes z, and the plan
that collects a task's episodes with z from the prior and then from the posterior.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metaorch.algorithms.models import FunctionalModel, mlp
from metaorch.algorithms.rl.batching import concat_episodes, transitions
from metaorch.algorithms.rl.pearl.config import PEARLConfig
from metaorch.algorithms.rl.trajectories import Sample, Trajectories
from metaorch.tasks.base import TaskDescriptor

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # rlkit's clamp


# -- the latent posterior ----------------------------------------------------------------


def product_of_gaussians(mus: torch.Tensor, variances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised product of N(mu_i, var_i) over dim -2: precision-weighted, order-free."""
    variances = variances.clamp_min(1e-7)
    var = 1.0 / (1.0 / variances).sum(-2)
    return var * (mus / variances).sum(-2), var


def kl_to_unit_gaussian(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag var) || N(0, I)), summed over the last dim."""
    return 0.5 * (var + mu**2 - 1.0 - torch.log(var)).sum(-1)


def context_dim(obs_dim: int, act_dim: int, use_next_obs: bool) -> int:
    return obs_dim + act_dim + 1 + (obs_dim if use_next_obs else 0)


def make_context(obs: Any, actions: Any, rewards: Any, next_obs: Any, use_next_obs: bool) -> Any:
    """[..., context_dim] rows (s, a, r[, s']); numpy in, numpy out; torch in, torch out."""
    parts = [obs, actions, rewards[..., None]] + ([next_obs] if use_next_obs else [])
    if isinstance(obs, torch.Tensor):
        return torch.cat(parts, -1)
    return np.concatenate(parts, -1).astype(np.float32)


class MeanOverContext(nn.Module):
    """Deep Sets' pooling: the mean over a context's transitions (dim -2), whatever their number."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(-2)


def context_encoder(in_features: int, hidden: Sequence[int], out_features: int, aggregator: str) -> nn.Sequential:
    """oyster's per-transition MLP (``product``), or Deep Sets (``set``): the same MLP's features
    averaged over the context, then one more hidden layer and the output. Averaging features
    before a nonlinearity lets it combine transitions (least squares' sums, say), which a
    product of per-transition Gaussians can only do in separate latent dimensions."""
    if aggregator == "product":
        return mlp(in_features, hidden, out_features)
    width = hidden[-1]
    return nn.Sequential(*mlp(in_features, hidden[:-1], width), nn.ReLU(), MeanOverContext(), *mlp(width, (width,), out_features))


def encoder_posterior(
    encoder: nn.Module | FunctionalModel, context: torch.Tensor, params: torch.Tensor | None = None, bottleneck: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, var) of q(z | context) from context [..., C, context_dim]; C may be 0 (the prior).

    Without the ``bottleneck`` (oyster's ``use_information_bottleneck=False``) z is exact (var 0;
    0 for an empty context): the mean of the per-transition encodings, or the set encoder's output.
    """
    module = encoder.module if isinstance(encoder, FunctionalModel) else encoder
    if context.shape[-2] == 0:
        latent = module[-1].out_features // (2 if bottleneck else 1)
        shape = (*context.shape[:-2], latent)
        return context.new_zeros(shape), context.new_ones(shape) if bottleneck else context.new_zeros(shape)
    out = encoder(params, context) if params is not None else encoder(context)
    pooled = any(isinstance(m, MeanOverContext) for m in module)  # the set encoder: one output per context
    if not bottleneck:
        mu = out if pooled else out.mean(-2)
        return mu, torch.zeros_like(mu)
    mus, raw = out.chunk(2, dim=-1)
    return (mus, F.softplus(raw).clamp_min(1e-7)) if pooled else product_of_gaussians(mus, F.softplus(raw))


# -- the tanh-Gaussian actor ---------------------------------------------------------------


class _Actor(nn.Module):
    def __init__(self, in_dim: int, act_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.trunk = mlp(in_dim, hidden[:-1], hidden[-1])
        self.mean = nn.Linear(hidden[-1], act_dim)
        self.log_std = nn.Linear(hidden[-1], act_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.trunk(x))
        return self.mean(h), self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)


def squash(
    mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor | None, low: torch.Tensor, high: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Action ``mid + half·tanh(u)``, u = mean + std·noise (mean when no noise), and its log-density.

    The change of variables term uses ``log(1 - tanh²u) = 2(log 2 - u - softplus(-2u))``,
    which stays finite where tanh saturates.
    """
    u = mean if noise is None else mean + log_std.exp() * noise
    z = (u - mean) * torch.exp(-log_std)
    logp = (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    half, mid = (high - low) / 2, (high + low) / 2
    logp = logp - (torch.log(half) + 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
    return mid + half * torch.tanh(u), logp


class PEARLPolicy:
    """The worker's view: an actor and an encoder over flat parameters.

    The learner sends ``[actor ; encoder]`` (:meth:`PEARL.worker_params`). The plan samples
    with ``[actor ; z]``, so one task's z is fixed for a whole ``sample`` call and the
    rollout worker needs no notion of latents.
    """

    recurrent = False
    takes_noise = True

    def __init__(self, obs_dim: int, act_dim: int, config: PEARLConfig = PEARLConfig(), action_low: Any = -1.0, action_high: Any = 1.0):
        self.obs_dim, self.act_dim, self.config = obs_dim, act_dim, config
        self.actor = FunctionalModel(_Actor(obs_dim + config.latent_dim, act_dim, config.hidden))
        ctx = context_dim(obs_dim, act_dim, config.use_next_obs)
        outputs = (2 if config.information_bottleneck else 1) * config.latent_dim  # (mu, var) or z's share per transition
        self.encoder = FunctionalModel(context_encoder(ctx, config.encoder_hidden, outputs, config.aggregator))
        self.low = torch.as_tensor(np.broadcast_to(np.asarray(action_low, np.float32), (act_dim,)).copy())
        self.high = torch.as_tensor(np.broadcast_to(np.asarray(action_high, np.float32), (act_dim,)).copy())
        if not bool((self.high > self.low).all()):
            raise ValueError(f"need action_high > action_low, got {action_low}, {action_high}")

    @property
    def num_params(self) -> int:
        return self.actor.num_params + self.encoder.num_params

    def init_params(self, seed: int) -> torch.Tensor:
        return torch.cat([self.actor.init_params(seed), self.encoder.init_params(seed + 1)])

    def initial_state(self, num_envs: int) -> None:
        return None

    def to(self, device: torch.device | str) -> PEARLPolicy:
        self.actor.to(device)
        self.encoder.to(device)
        self.low, self.high = self.low.to(device), self.high.to(device)
        return self

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(actor, encoder) parts of the learner's vector."""
        return params[: self.actor.num_params], params[self.actor.num_params :]

    def with_latent(self, actor_params: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([actor_params, z.to(actor_params)])

    def act(
        self, params: torch.Tensor, obs: torch.Tensor, state: None = None, deterministic: bool = False, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        """``params`` is ``[actor ; z]``: z is appended to every observation."""
        actor, z = params[: self.actor.num_params], params[self.actor.num_params :]
        x = torch.cat([obs, z.to(obs).expand(*obs.shape[:-1], -1)], -1)
        mean, log_std = self.actor(actor, x)
        if not deterministic and noise is None:
            noise = torch.randn_like(mean)
        return *squash(mean, log_std, None if deterministic else noise, self.low.to(obs), self.high.to(obs)), None

    def posterior(self, encoder_params: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return encoder_posterior(self.encoder, context, encoder_params, self.config.information_bottleneck)


def _generator(*parts: Any) -> torch.Generator:
    """A generator seeded by a hash of ``parts``: draws that depend only on the plan's inputs.

    A plan runs in a worker thread with no random stream of its own; seeding from the
    parameters and the episodes collected so far (which the worker seeds per task and
    episode) keeps z draws independent of scheduling, worker count and retries.
    """
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(np.ascontiguousarray(p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else p).tobytes())
    return torch.Generator().manual_seed(int.from_bytes(h.digest(), "little") & ((1 << 63) - 1))


_PRIOR_Z = 2  # spawn-key tag of a task's prior-z stream (the rollout worker's episode streams use 0 and 1)


def task_key(descriptor: TaskDescriptor | None) -> np.ndarray:
    """A task's own seed material for its prior z: a stream spawned from its descriptor, apart
    from the ones that draw its parameters and seed its episodes. None: none (shared by all)."""
    if descriptor is None:
        return np.zeros(0, np.uint32)
    root = descriptor.rng().bit_generator.seed_seq
    return np.random.SeedSequence(root.entropy, spawn_key=(_PRIOR_Z,)).generate_state(2)


@dataclass(frozen=True)
class PEARLPlan:
    """A task's rollouts: episodes with z ~ prior, then with z ~ q(z | context collected so far).

    One z per episode (oyster's resample rate 1) and the posterior updated after every
    posterior episode, which is also PEARL's meta-test protocol. Prior episodes feed the
    encoder and RL buffers, posterior ones the RL buffer only (oyster's "extra RL steps").

    The first prior z of a task is drawn from its descriptor and the parameters (the rollout
    worker passes the descriptor to plans that ``take_descriptor``), so every task of a call
    explores with its own z, as oyster draws one per task; later draws also depend on the
    episodes seen. ``stream`` tells apart two plans run on the same task at the same parameters
    (oyster's initial collection and the iteration's own).
    """

    policy: PEARLPolicy
    prior_episodes: int = 2
    posterior_episodes: int = 2
    deterministic_posterior: bool = False  # evaluation: act with the mean action once z is inferred
    stream: int = 0
    takes_descriptor: ClassVar[bool] = True

    def __call__(self, sample: Sample, params: torch.Tensor, descriptor: TaskDescriptor | None = None) -> dict[str, Any]:
        actor, encoder = self.policy.split(params)
        latent = self.policy.config.latent_dim
        first = (params, task_key(descriptor), np.int64(self.stream))
        prior, posterior, seen = [], [], []
        for k in range(self.prior_episodes):
            gen = _generator(*(first if not seen else (seen[-1].rewards,)), np.int64(k))
            z = torch.randn(latent, generator=gen) if self.policy.config.information_bottleneck else torch.zeros(latent)
            traj = sample(self.policy.with_latent(actor, z), 1)
            prior.append(traj)
            seen.append(traj)
        for k in range(self.posterior_episodes):
            with torch.no_grad():
                mu, var = self.policy.posterior(encoder, self._context(seen, encoder))
            gen = _generator(*(first if not seen else (seen[-1].rewards,)), np.int64(self.prior_episodes + k))
            z = mu + var.sqrt() * torch.randn(latent, generator=gen).to(mu)
            kwargs = {"deterministic": True} if self.deterministic_posterior else {}
            traj = sample(self.policy.with_latent(actor, z), 1, **kwargs)
            posterior.append(traj)
            seen.append(traj)
        out: dict[str, Any] = {}
        for name, trajs in (("prior", prior), ("posterior", posterior)):
            if trajs:
                joined = concat_episodes(trajs)
                out[name], out[f"{name}_returns"] = joined, joined.returns()
        return out

    def _context(self, seen: list[Trajectories], like: torch.Tensor) -> torch.Tensor:
        if not seen:
            return like.new_zeros(0, context_dim(self.policy.obs_dim, self.policy.act_dim, self.policy.config.use_next_obs))
        t = transitions(concat_episodes(seen))
        rows = make_context(t["observations"], t["actions"], t["rewards"], t["next_observations"], self.policy.config.use_next_obs)
        return torch.as_tensor(rows, device=like.device)

