"""MAML-TRPO under Meta-World's meta-test protocol (``metaworld.evaluation.metalearning_evaluation``).

Per task: ``adaptation_steps`` rounds, each of ``adaptation_episodes`` episodes at the
current θ′ followed by one adaptation (the same inner step as meta-training), then
``evaluation_episodes`` episodes with the mean action (metaworld's ``eval_action``). The
evaluation episodes come back whole; Meta-World ends them at the first success, so their
return is :meth:`Trajectories.returns_to_success`.

After the protocol, ``evaluation_episodes`` more with the mean action at the unadapted θ: the
same measurement before adaptation, so that the success gain of adapting is paired per task
(metaworld reports only the adapted side). They come last, so the protocol's own episodes
and their seeds are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metaorch.algorithms.rl.config import MAMLTRPOConfig
from metaorch.algorithms.rl.maml_trpo import adapt
from metaorch.algorithms.rl.trajectories import Sample


@dataclass(frozen=True)
class MAMLProtocolPlan:
    policy: Any
    config: MAMLTRPOConfig = MAMLTRPOConfig()
    adaptation_steps: int = 1
    evaluation_episodes: int = 3

    def __call__(self, sample: Sample, params: torch.Tensor) -> dict[str, Any]:
        c = self.config
        theta, returns = params.detach(), []
        for _ in range(self.adaptation_steps):
            episodes = sample(theta, c.episodes_per_task)
            returns.append(float(episodes.returns().mean()))
            theta = adapt(
                self.policy, theta, episodes, c.inner_lr, first_order=True, steps=c.inner_steps,
                gamma=c.gamma, gae_lambda=c.gae_lambda, normalize_advantages=c.normalize_advantages,
            )  # fmt: skip
        evaluation = sample(theta, self.evaluation_episodes, deterministic=True)
        returns.append(float(evaluation.returns().mean()))
        unadapted = sample(params.detach(), self.evaluation_episodes, deterministic=True)
        return {"returns": np.asarray(returns), "evaluation": evaluation, "unadapted": unadapted}
