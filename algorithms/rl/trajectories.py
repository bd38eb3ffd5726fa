"""The contract between rollout workers and meta-RL algorithms.

A worker owns environments and a :class:`Policy`; an algorithm owns a :data:`Plan`, the
per-task work a worker runs (MAML: sample, adapt, sample again; RL²: one trial; PEARL:
sample with a prior then a posterior context). The worker gives the plan a :data:`Sample`
callable bound to one task, so the plan never sees an environment and the worker never
knows the algorithm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch


@dataclass
class Trajectories:
    """``E`` episodes of one task, time-major and padded to the horizon ``T``.

    ``mask`` is 1 on real steps and 0 after an episode ended; ``terminated`` marks true
    terminal states (no bootstrapping), as opposed to the time limit. ``success`` is the
    environment's ``info["success"]`` at each step (0 where it reports none, e.g. HalfCheetah):
    the benchmarks that define success (Meta-World) count an episode as solved if it is 1 at
    any step.
    """

    observations: np.ndarray  # [T, E, obs_dim] float32
    actions: np.ndarray  # [T, E, act_dim] float32, or [T, E] int64 for discrete actions
    rewards: np.ndarray  # [T, E] float32
    log_probs: np.ndarray  # [T, E] float32, of the policy that acted
    next_observations: np.ndarray  # [T, E, obs_dim] float32
    terminated: np.ndarray  # [T, E] bool
    mask: np.ndarray  # [T, E] float32
    success: np.ndarray | None = None  # [T, E] float32; None: zeros (built without one)

    def __post_init__(self) -> None:
        if self.success is None:
            self.success = np.zeros_like(self.rewards)

    @property
    def horizon(self) -> int:
        return self.rewards.shape[0]

    @property
    def episodes(self) -> int:
        return self.rewards.shape[1]

    def returns(self) -> np.ndarray:
        """Undiscounted return of each episode, [E]."""
        return (self.rewards * self.mask).sum(0)

    def successes(self) -> np.ndarray:
        """1.0 for each episode that reported success at some step, else 0.0, [E]."""
        return ((self.success * self.mask) > 0).any(0).astype(np.float64)

    def returns_to_success(self) -> np.ndarray:
        """Each episode's return up to and including its first successful step, [E]: the
        return of an episode that terminates on success (Meta-World's evaluation episodes)."""
        solved = (self.success * self.mask) > 0
        before = np.cumsum(solved, 0) - solved  # successes strictly before each step
        return (self.rewards * self.mask * (before == 0)).sum(0)

    def to_torch(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        # arrays from the object store are read-only; torch wants writable memory
        return {f.name: torch.as_tensor(np.require(getattr(self, f.name), requirements="W"), device=device) for f in fields(self)}


class Policy(Protocol):
    """A batched policy evaluated at a flat parameter vector (see ``algorithms.models``).

    ``state`` is a recurrent policy's hidden state ([num_envs, hidden]) or None; the
    worker keeps it across steps of an episode and resets it where ``initial_state`` says.
    """

    num_params: int

    def init_params(self, seed: int) -> torch.Tensor: ...

    def initial_state(self, num_envs: int) -> torch.Tensor | None: ...

    def act(
        self, params: torch.Tensor, obs: torch.Tensor, state: torch.Tensor | None, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(actions, their log-probabilities, next state) for a batch of observations."""
        ...


SUCCESS_KEY = "success"  # the info key rollout workers record into Trajectories.success

# Roll out ``episodes`` episodes of the bound task with the policy at ``params``.
Sample = Callable[[torch.Tensor, int], Trajectories]
# An algorithm's per-task work on a worker: returns arrays (or Trajectories) for the learner.
Plan = Callable[[Sample, torch.Tensor], dict[str, Any]]
