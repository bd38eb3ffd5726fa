"""Trajectories as tensors: stacking tasks' episodes and means over real steps only.

Workers return numpy :class:`Trajectories` padded to their own horizon; the learner
concatenates several tasks' episodes along the episode axis (padding to the longest
horizon, mask 0) so one batched forward pass covers them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

import numpy as np
import torch

from metaorch.algorithms.rl.trajectories import Trajectories


def concat_episodes(trajs: Sequence[Trajectories]) -> Trajectories:
    """One :class:`Trajectories` holding every episode of ``trajs``, padded to the longest horizon."""
    if not trajs:
        raise ValueError("no trajectories to concatenate")
    horizon = max(t.horizon for t in trajs)
    out = {}
    for f in fields(Trajectories):
        parts = []
        for t in trajs:
            a = getattr(t, f.name)
            pad = [(0, horizon - a.shape[0])] + [(0, 0)] * (a.ndim - 1)
            parts.append(np.pad(a, pad))
        out[f.name] = np.concatenate(parts, axis=1)
    return Trajectories(**out)


def to_tensors(traj: Trajectories | dict[str, torch.Tensor], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors on ``device``: mask and rewards as float, ``terminated`` as float (0/1) for arithmetic."""
    batch = traj.to_torch(device) if isinstance(traj, Trajectories) else {k: v.to(device) for k, v in traj.items()}
    batch["terminated"] = batch["terminated"].to(batch["rewards"].dtype)
    batch["mask"] = batch["mask"].to(batch["rewards"].dtype)
    return batch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over real steps; padding contributes nothing, whatever its value (even NaN)."""
    return torch.where(mask > 0, x, torch.zeros_like(x)).sum() / mask.sum().clamp_min(1.0)


def transitions(traj: Trajectories) -> dict[str, np.ndarray]:
    """The real steps of ``traj`` as flat transitions [N, ...], episode after episode (for replay buffers)."""
    real = traj.mask.T > 0  # episode-major, so one episode's steps stay together and in order
    return {
        "observations": traj.observations.swapaxes(0, 1)[real],
        "actions": traj.actions.swapaxes(0, 1)[real],
        "rewards": traj.rewards.T[real],
        "next_observations": traj.next_observations.swapaxes(0, 1)[real],
        "terminated": traj.terminated.T[real],
    }
