"""Replay for PEARL (oyster's ``MultiTaskReplayBuffer``): a numpy ring of transitions per task.

The learner keeps two per task: RL transitions for SAC and recent prior episodes as context
for the encoder.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import torch


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

