"""PEARL's learner (oyster's ``PEARLSoftActorCritic``): twin Q functions with targets, the
actor and the encoder, their optimisers, the per-task replay buffers, and one SAC + encoder
update, on the driver's device.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metaorch.algorithms.models import mlp
from metaorch.algorithms.params import ParamLayout
from metaorch.algorithms.rl.batching import transitions
from metaorch.algorithms.rl.pearl.agent import PEARLPolicy, encoder_posterior, kl_to_unit_gaussian, make_context, squash
from metaorch.algorithms.rl.pearl.replay import MultiTaskReplay


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

        mu, var = encoder_posterior(self.encoder, b["context"], bottleneck=c.information_bottleneck)
        z = mu + var.sqrt() * torch.randn(mu.shape, generator=self.generator, device=self.device)
        kl = kl_to_unit_gaussian(mu, var).sum() if c.information_bottleneck else mu.new_zeros(())  # summed over tasks, as oyster
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
