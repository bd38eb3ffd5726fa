"""MAML-TRPO's and RL²'s (PPO's) hyperparameters, PEARL's beside its code (``pearl/config.py``):
plain dataclasses without torch, so the driver's configuration validates without importing it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MAMLTRPOConfig:
    """Defaults: pytorch-maml-rl's (HalfCheetah-Vel / 2D-navigation configs)."""

    inner_lr: float = 0.1  # fast-lr
    inner_steps: int = 1  # num-steps, each on the same pre-adaptation episodes
    first_order: bool = False
    gamma: float = 0.99
    gae_lambda: float = 1.0
    normalize_advantages: bool = True
    episodes_per_task: int = 20  # fast-batch-size, before and after adaptation
    max_kl: float = 1e-2
    cg_iters: int = 10
    cg_damping: float = 1e-5
    # Fisher-vector products from this many of the batch's tasks, evenly spaced in task order
    # (None: all). The HVPs through the second-order inner steps are ~75% of the learner's
    # time; a subsample is the classic TRPO economy (rllab's subsample_factor, baselines' every
    # 5th step). The gradient and the line search's KL check still use every task.
    fvp_tasks: int | None = None
    ls_max_steps: int = 15
    ls_backtrack_ratio: float = 0.8

    def __post_init__(self) -> None:
        if self.fvp_tasks is not None and self.fvp_tasks < 1:
            raise ValueError(f"fvp_tasks must be at least 1 (or null for every task), got {self.fvp_tasks}")


@dataclass(frozen=True)
class PPOConfig:
    """Defaults: Schulman et al. 2017's MuJoCo settings where they apply, Duan et al.'s discount."""

    lr: float = 3e-4
    epochs: int = 10
    minibatches: int = 4  # per epoch, each a set of whole trials
    clip: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    gamma: float = 0.99
    gae_lambda: float = 0.95
    normalize_advantages: bool = True
    max_grad_norm: float = 0.5
    trials_per_task: int = 1
