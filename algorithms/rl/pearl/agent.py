"""PEARL (Rakelly et al. 2019): off-policy meta-RL with a probabilistic task encoder.

A context encoder maps each transition (s, a, r[, s']) of a task to a Gaussian factor over
a latent task variable z; the posterior is their product (order-free, so any amount of
context works) and is regularised towards the unit Gaussian prior by a KL term (an
information bottleneck). SAC (Haarnoja et al. 2018) trains a tanh-Gaussian policy and Q
functions that all take z as an extra input; the encoder learns only through the Q loss
(and the KL), never through the policy loss, as in the authors' code (oyster).

Differences from oyster, on purpose: twin Q functions with target Q networks (the later
SAC) instead of oyster's twin Q + V + target V; the temperature stays fixed at
``alpha`` (1, with oyster's reward scale 5, which is the same objective). Context includes
s' by default (``use_next_obs``), as the brief for this project asks; oyster's default is off.

Split: workers run :class:`PEARLPlan` with the actor and the encoder (one flat vector);
the learner (:class:`PEARL`) keeps per-task replay buffers in numpy and runs
:meth:`PEARL.update` on its own device.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metaorch.algorithms.models import FunctionalModel, mlp
from metaorch.algorithms.params import ParamLayout
from metaorch.algorithms.rl.batching import concat_episodes, transitions
from metaorch.algorithms.rl.trajectories import Sample, Trajectories

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # rlkit's clamp


@dataclass(frozen=True)
class PEARLConfig:
    """Defaults: oyster's ``configs/default.py`` (net_size 300, latent_size 5, ...)."""

    latent_dim: int = 5
    hidden: tuple[int, ...] = (300, 300, 300)  # actor and Q networks
    encoder_hidden: tuple[int, ...] = (200, 200, 200)
    use_next_obs: bool = True
    lr: float = 3e-4  # policy, Q functions and encoder alike
    kl_lambda: float = 0.1
    reward_scale: float = 5.0
    alpha: float = 1.0  # entropy temperature (fixed; the reward scale sets the trade-off)
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256  # RL transitions per task per update
    context_size: int = 64  # embedding_batch_size: context transitions per task per update
    mean_reg: float = 1e-3
    std_reg: float = 1e-3
    buffer_capacity: int = 100_000  # per task, RL and encoder buffers each
    prior_episodes: int = 2  # per task and iteration, z ~ prior (into both buffers)
    posterior_episodes: int = 2  # z ~ posterior(context so far) (RL buffer only)
    train_tasks: int = 100  # the fixed set of training tasks whose buffers fill over the run
    tasks_per_iteration: int = 5  # tasks collected per iteration (all of them in the first)
    updates_per_iteration: int = 500  # gradient steps per iteration, each on outer.meta_batch tasks
    checkpoint_buffers: bool = False  # replay buffers in checkpoints: exact resumes, larger files


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


def encoder_posterior(encoder: nn.Module | FunctionalModel, context: torch.Tensor, params: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, var) of q(z | context) from context [..., C, context_dim]; C may be 0 (the prior)."""
    if context.shape[-2] == 0:
        latent = (encoder.module if isinstance(encoder, FunctionalModel) else encoder)[-1].out_features // 2
        shape = (*context.shape[:-2], latent)
        return context.new_zeros(shape), context.new_ones(shape)
    out = encoder(params, context) if params is not None else encoder(context)
    mus, raw = out.chunk(2, dim=-1)
    return product_of_gaussians(mus, F.softplus(raw))


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
        self.encoder = FunctionalModel(mlp(ctx, config.encoder_hidden, 2 * config.latent_dim))
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
        return encoder_posterior(self.encoder, context, encoder_params)


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


@dataclass(frozen=True)
class PEARLPlan:
    """A task's rollouts: episodes with z ~ prior, then with z ~ q(z | context collected so far).

    One z per episode (oyster's resample rate 1) and the posterior updated after every
    posterior episode, which is also PEARL's meta-test protocol. Prior episodes feed the
    encoder and RL buffers, posterior ones the RL buffer only (oyster's "extra RL steps").
    """

    policy: PEARLPolicy
    prior_episodes: int = 2
    posterior_episodes: int = 2
    deterministic_posterior: bool = False  # evaluation: act with the mean action once z is inferred

    def __call__(self, sample: Sample, params: torch.Tensor) -> dict[str, Any]:
        actor, encoder = self.policy.split(params)
        latent = self.policy.config.latent_dim
        prior, posterior, seen = [], [], []
        for k in range(self.prior_episodes):
            gen = _generator(params if not seen else seen[-1].rewards, np.int64(k))
            z = torch.randn(latent, generator=gen)
            traj = sample(self.policy.with_latent(actor, z), 1)
            prior.append(traj)
            seen.append(traj)
        for k in range(self.posterior_episodes):
            with torch.no_grad():
                mu, var = self.policy.posterior(encoder, self._context(seen, encoder))
            gen = _generator(params if not seen else seen[-1].rewards, np.int64(self.prior_episodes + k))
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


# -- replay ----------------------------------------------------------------------------------


class ReplayBuffer:
    """A fixed-capacity ring of transitions in numpy (oldest overwritten first)."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.data = {
            "observations": np.zeros((capacity, obs_dim), np.float32),
            "actions": np.zeros((capacity, act_dim), np.float32),
            "rewards": np.zeros(capacity, np.float32),
            "next_observations": np.zeros((capacity, obs_dim), np.float32),
            "terminated": np.zeros(capacity, np.float32),
        }
        self.size = 0
        self.top = 0

    def __len__(self) -> int:
        return self.size

    def add(self, batch: dict[str, np.ndarray]) -> None:
        n = len(batch["rewards"])
        if n > self.capacity:  # only the newest fit
            batch = {k: v[-self.capacity :] for k, v in batch.items()}
            n = self.capacity
        idx = (self.top + np.arange(n)) % self.capacity
        for k, buf in self.data.items():
            buf[idx] = np.asarray(batch[k], buf.dtype).reshape(n, *buf.shape[1:])
        self.top = (self.top + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` transitions drawn uniformly with replacement (rlkit's sampling)."""
        if self.size == 0:
            raise ValueError("sampling from an empty replay buffer")
        idx = rng.integers(0, self.size, size=n)
        return {k: v[idx] for k, v in self.data.items()}

    def clear(self) -> None:
        self.size = self.top = 0

    def state_dict(self) -> dict[str, Any]:
        """The filled rows as tensors (checkpoints load with ``weights_only``) and the ring's position."""
        return {"size": self.size, "top": self.top} | {k: torch.from_numpy(v[: self.size].copy()) for k, v in self.data.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size, top = int(state["size"]), int(state["top"])
        if size > self.capacity:
            raise ValueError(f"a replay buffer of {size} transitions does not fit capacity {self.capacity}")
        for k, buf in self.data.items():
            buf[:size] = state[k].numpy()
        self.size, self.top = size, top


class MultiTaskReplay:
    """One :class:`ReplayBuffer` per task key, allocated on first use."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.capacity, self.obs_dim, self.act_dim = capacity, obs_dim, act_dim
        self.buffers: dict[Hashable, ReplayBuffer] = {}

    def __getitem__(self, task: Hashable) -> ReplayBuffer:
        if task not in self.buffers:
            self.buffers[task] = ReplayBuffer(self.capacity, self.obs_dim, self.act_dim)
        return self.buffers[task]

    def __contains__(self, task: Hashable) -> bool:
        return task in self.buffers and len(self.buffers[task]) > 0

    def state_dict(self) -> dict[Hashable, dict[str, Any]]:
        return {task: buf.state_dict() for task, buf in self.buffers.items()}

    def load_state_dict(self, state: dict[Hashable, dict[str, Any]]) -> None:
        self.buffers.clear()
        for task, buf in state.items():
            self[task].load_state_dict(buf)


# -- the learner ---------------------------------------------------------------------------


class _Critic(nn.Module):
    def __init__(self, in_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.net = mlp(in_dim, hidden, 1)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, actions, z], -1)).squeeze(-1)


class PEARL:
    """Networks, optimisers, replay buffers and the SAC + encoder update, on ``device``."""

    def __init__(self, policy: PEARLPolicy, device: torch.device | str = "cpu", seed: int = 0, params: torch.Tensor | None = None):
        """``params``: the initial ``[actor ; encoder]`` (default: ``policy.init_params(seed)``)."""
        self.policy = policy
        self.config = c = policy.config
        self.device = torch.device(device)
        obs_dim, act_dim = policy.obs_dim, policy.act_dim
        self.low, self.high = policy.low.to(self.device), policy.high.to(self.device)
        theta = policy.init_params(seed) if params is None else params.detach().float().cpu()
        actor_p, enc_p = policy.split(theta)
        self.actor = policy.actor.to_module(actor_p).to(self.device)
        self.encoder = policy.encoder.to_module(enc_p).to(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 2)
            self.q1 = _Critic(obs_dim + act_dim + c.latent_dim, c.hidden).to(self.device)
            self.q2 = _Critic(obs_dim + act_dim + c.latent_dim, c.hidden).to(self.device)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        for p in [*self.q1_target.parameters(), *self.q2_target.parameters()]:
            p.requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.lr)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=c.lr)
        self.encoder_opt = torch.optim.Adam(self.encoder.parameters(), lr=c.lr)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.replay = MultiTaskReplay(c.buffer_capacity, obs_dim, act_dim)
        self.encoder_replay = MultiTaskReplay(c.buffer_capacity, obs_dim, act_dim)

    _STATE = ("actor", "encoder", "q1", "q2", "q1_target", "q2_target", "actor_opt", "q_opt", "encoder_opt")

    def state_dict(self, buffers: bool = False) -> dict[str, Any]:
        """Networks, target networks, optimisers and the noise generator; with ``buffers``
        also both replay buffers, so a resumed run continues exactly (RLlib's
        ``store_buffer_in_checkpoints``: off by default, as buffers can dwarf the networks)."""
        state: dict[str, Any] = {name: getattr(self, name).state_dict() for name in self._STATE}
        state["generator"] = self.generator.get_state()
        if buffers:
            state["replay"], state["encoder_replay"] = self.replay.state_dict(), self.encoder_replay.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Without buffers in ``state`` the replay stays empty and is collected afresh."""
        for name in self._STATE:
            getattr(self, name).load_state_dict(state[name])
        self.generator.set_state(state["generator"])
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])
            self.encoder_replay.load_state_dict(state["encoder_replay"])

    # -- parameters for the workers ---------------------------------------------------------
    def worker_params(self) -> torch.Tensor:
        """``[actor ; encoder]`` as one flat CPU float32 vector (one ``ray.put``)."""
        flat = [ParamLayout.of(m).flatten(dict(m.named_parameters())) for m in (self.actor, self.encoder)]
        return torch.cat(flat).detach().float().cpu()

    # -- data --------------------------------------------------------------------------------
    def add(self, task: Hashable, output: dict[str, Any]) -> None:
        """A :class:`PEARLPlan` output: prior episodes replace the task's encoder buffer
        (oyster clears it each iteration so context stays recent) and join its RL buffer;
        posterior episodes join the RL buffer only."""
        if "prior" in output:
            prior = transitions(output["prior"])
            self.encoder_replay[task].clear()
            self.encoder_replay[task].add(prior)
            self.replay[task].add(prior)
        if "posterior" in output:
            self.replay[task].add(transitions(output["posterior"]))

    def sample_batch(self, tasks: Sequence[Hashable], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """RL transitions [M, batch_size, ...] and context [M, context_size, context_dim], tasks in order."""
        c = self.config
        rl = [self.replay[t].sample(c.batch_size, rng) for t in tasks]
        ctx = [self.encoder_replay[t].sample(c.context_size, rng) for t in tasks]
        batch = {k: np.stack([b[k] for b in rl]) for k in rl[0]}
        batch["context"] = np.stack(
            [make_context(b["observations"], b["actions"], b["rewards"], b["next_observations"], c.use_next_obs) for b in ctx]
        )
        return batch

    # -- the update ------------------------------------------------------------------------
    def _actor_sample(self, obs_z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_std = self.actor(obs_z)
        noise = torch.randn(mean.shape, generator=self.generator, device=self.device)
        actions, logp = squash(mean, log_std, noise, self.low, self.high)
        return actions, logp, mean, log_std

    def update(self, batch: dict[str, np.ndarray | torch.Tensor]) -> dict[str, float]:
        """One gradient step of the Q functions with the encoder, then of the actor; soft target update."""
        c = self.config
        b = {k: torch.as_tensor(v, device=self.device, dtype=torch.float32) for k, v in batch.items()}
        m, n = b["rewards"].shape

        mu, var = encoder_posterior(self.encoder, b["context"])
        z = mu + var.sqrt() * torch.randn(mu.shape, generator=self.generator, device=self.device)
        kl = kl_to_unit_gaussian(mu, var).sum()  # summed over tasks, as oyster
        z_rows = z.repeat_interleave(n, 0)
        flat = lambda x: x.reshape(m * n, *x.shape[2:])  # noqa: E731
        obs, actions, next_obs = flat(b["observations"]), flat(b["actions"]), flat(b["next_observations"])
        rewards, terminated = flat(b["rewards"]), flat(b["terminated"])

        # Q functions and encoder: the encoder learns what the critic needs to know of the task
        with torch.no_grad():
            zd = z_rows.detach()
            next_a, next_logp, _, _ = self._actor_sample(torch.cat([next_obs, zd], -1))
            target_q = torch.min(self.q1_target(next_obs, next_a, zd), self.q2_target(next_obs, next_a, zd))
            y = c.reward_scale * rewards + (1.0 - terminated) * c.gamma * (target_q - c.alpha * next_logp)
        q1, q2 = self.q1(obs, actions, z_rows), self.q2(obs, actions, z_rows)
        q_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        self.q_opt.zero_grad(set_to_none=True)
        self.encoder_opt.zero_grad(set_to_none=True)
        (q_loss + c.kl_lambda * kl).backward()
        self.q_opt.step()
        self.encoder_opt.step()

        # actor: z is a constant here
        zd = z_rows.detach()
        new_a, logp, mean, log_std = self._actor_sample(torch.cat([obs, zd], -1))
        q_new = torch.min(self.q1(obs, new_a, zd), self.q2(obs, new_a, zd))
        policy_loss = (c.alpha * logp - q_new).mean()
        reg = c.mean_reg * mean.square().mean() + c.std_reg * log_std.square().mean()
        self.actor_opt.zero_grad(set_to_none=True)
        (policy_loss + reg).backward()
        self.actor_opt.step()

        with torch.no_grad():
            for net, target in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
                for p, tp in zip(net.parameters(), target.parameters()):
                    tp.lerp_(p, c.tau)
        return {
            "q_loss": float(q_loss.detach()),
            "policy_loss": float(policy_loss.detach()),
            "kl": float(kl.detach()) / m,
            "q_mean": float(q1.detach().mean()),
            "log_pi": float(logp.detach().mean()),
            "z_mean_abs": float(mu.detach().abs().mean()),
            "z_var": float(var.detach().mean()),
        }
