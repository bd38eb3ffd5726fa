"""PEARL's hyperparameters: one config for the agent (workers) and its SAC learner (driver)."""

from __future__ import annotations

from dataclasses import dataclass


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
