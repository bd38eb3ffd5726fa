"""Sinusoid regression exactly as in Finn et al. 2017.

Amplitude ~ U[0.1, 5.0], phase ~ U[0, pi], inputs ~ U[-5, 5]; K support and Q query points.
"""

from __future__ import annotations

import numpy as np
import torch

from metaorch.tasks.base import TaskBatch, TaskDescriptor

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, np.pi)
INPUT = (-5.0, 5.0)


class SinusoidTasks:
    input_dim = 1
    output_dim = 1
    loss = "mse"

    def __init__(self, shots: int = 10, queries: int = 10):
        self.shots = shots
        self.queries = queries

    def sample(self, task: TaskDescriptor, queries: int) -> tuple[float, float, np.ndarray]:
        rng = task.rng()
        amplitude = rng.uniform(*AMPLITUDE)
        phase = rng.uniform(*PHASE)
        x = rng.uniform(*INPUT, size=self.shots + queries)
        return amplitude, phase, x

    def batch(self, tasks: list[TaskDescriptor], queries: int | None = None) -> TaskBatch:
        queries = self.queries if queries is None else queries
        drawn = [self.sample(t, queries) for t in tasks]
        amplitude = np.array([a for a, _, _ in drawn])[:, None]
        phase = np.array([p for _, p, _ in drawn])[:, None]
        x = np.stack([x for _, _, x in drawn])
        y = amplitude * np.sin(x - phase)
        x_t = torch.from_numpy(x).float().unsqueeze(-1)
        y_t = torch.from_numpy(y).float().unsqueeze(-1)
        k = self.shots
        return {
            "support_x": x_t[:, :k],
            "support_y": y_t[:, :k],
            "query_x": x_t[:, k:],
            "query_y": y_t[:, k:],
            "amplitude": torch.from_numpy(amplitude[:, 0]).float(),
            "phase": torch.from_numpy(phase[:, 0]).float(),
        }
