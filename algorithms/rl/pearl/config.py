"""PEARL's hyperparameters: one config for the agent (workers) and its SAC learner (driver)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class PEARLConfig:
    """Defaults: oyster's ``configs/default.py`` (net_size 300, latent_size 5, ...)."""

    latent_dim: int = 5
    hidden: tuple[int, ...] = (300, 300, 300)  # actor and Q networks
    encoder_hidden: tuple[int, ...] = (200, 200, 200)
    use_next_obs: bool = True
    lr: float = 3e-4  # policy, Q functions and encoder alike
    kl_lambda: float = 0.1
    # oyster's use_information_bottleneck: q(z | c) a product of Gaussians with a KL to the prior;
    # False: z is the plain mean of the per-transition encodings (deterministic, no KL; z = 0 before any context)
    information_bottleneck: bool = True
    # product: oyster's encoder, one Gaussian factor (or, without the bottleneck, one z) per transition,
    # combined by their product (mean); set: a Deep Sets encoder, per-transition features averaged and
    # then read by an MLP, which can combine what several transitions say (one Gaussian, or one z)
    aggregator: Literal["product", "set"] = "product"
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
    # oyster's collection schedule in transitions (its names); set, a count takes the place of the
    # episodes above, rounded up to whole episodes of the family's horizon (:meth:`schedule`)
    num_initial_steps: int = 0  # per training task, z ~ prior, once before the first iteration's collection (both buffers)
    num_steps_prior: int | None = None  # per collected task and iteration, z ~ prior: prior_episodes
    num_extra_rl_steps_posterior: int | None = None  # z ~ posterior, RL buffer only: posterior_episodes
    train_tasks: int = 100  # the fixed set of training tasks whose buffers fill over the run
    tasks_per_iteration: int = 5  # tasks collected per iteration (all of them in the first)
    updates_per_iteration: int = 500  # gradient steps per iteration, each on outer.meta_batch tasks
    checkpoint_buffers: bool = False  # replay buffers in checkpoints: exact resumes, larger files

    def __post_init__(self) -> None:
        for name in ("num_initial_steps", "num_steps_prior", "num_extra_rl_steps_posterior"):
            steps = getattr(self, name)
            if steps is not None and steps < 0:
                raise ValueError(f"{name} must be a number of steps >= 0, got {steps}")

    def schedule(self, horizon: int) -> tuple[int, int, int]:
        """(initial, prior, posterior) episodes per task. oyster collects whole episodes until a
        step count is reached, so a count of steps becomes ``ceil(steps / horizon)`` episodes:
        exact where episodes never end early (the point robot), a lower bound of the steps elsewhere."""

        def episodes(steps: int | None, default: int) -> int:
            return default if steps is None else -(-steps // horizon)

        return episodes(self.num_initial_steps, 0), episodes(self.num_steps_prior, self.prior_episodes), episodes(
            self.num_extra_rl_steps_posterior, self.posterior_episodes
        )
