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
        self.starts: list[int] = []  # rows where episodes begin, while the ring has not wrapped (sample_sequence)
        self.wrapped = False

    def __len__(self) -> int:
        return self.size

    def add(self, batch: dict[str, np.ndarray], episode_lengths: np.ndarray | None = None) -> None:
        """``episode_lengths``: the batch is these whole episodes in order; their starts are kept for :meth:`sample_sequence`."""
        n = len(batch["rewards"])
        if episode_lengths is not None and int(np.sum(episode_lengths)) != n:
            raise ValueError(f"episode_lengths sum to {int(np.sum(episode_lengths))}, the batch holds {n} transitions")
        if self.size + n > self.capacity:
            self.wrapped = True  # rows are overwritten: episode boundaries are no longer tracked
        elif episode_lengths is not None:
            self.starts += (self.top + np.concatenate([[0], np.cumsum(episode_lengths)[:-1]])).astype(int).tolist()
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

    def sample_sequence(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` transitions in order: whole episodes from random starts, one after another,
        the last cut at ``n`` (rlkit's ``random_sequence``, oyster's context for a recurrent
        encoder). The context of a meta-test posterior is an episode in order, not a scatter."""
        if self.wrapped or not self.starts:
            raise ValueError("sequence sampling needs whole episodes added with their lengths to a buffer that has not wrapped")
        ends = [*self.starts[1:], self.size]
        rows: list[int] = []
        while len(rows) < n:
            e = int(rng.integers(len(self.starts)))
            rows += range(self.starts[e], ends[e])
        idx = np.asarray(rows[:n])
        return {k: v[idx] for k, v in self.data.items()}

    def clear(self) -> None:
        self.size = self.top = 0
        self.starts, self.wrapped = [], False

    def state_dict(self) -> dict[str, Any]:
        """The filled rows as tensors (checkpoints load with ``weights_only``) and the ring's position."""
        ring = {"size": self.size, "top": self.top, "wrapped": self.wrapped, "starts": torch.tensor(self.starts, dtype=torch.int64)}
        return ring | {k: torch.from_numpy(v[: self.size].copy()) for k, v in self.data.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size, top = int(state["size"]), int(state["top"])
        if size > self.capacity:
            raise ValueError(f"a replay buffer of {size} transitions does not fit capacity {self.capacity}")
        for k, buf in self.data.items():
            buf[:size] = state[k].numpy()
        self.size, self.top = size, top
        # checkpoints from before sequence sampling hold no starts: such a buffer samples transitions only
        self.starts, self.wrapped = state["starts"].tolist() if "starts" in state else [], bool(state.get("wrapped", True))


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

