"""RL² trials (Duan et al. 2016): ``episodes`` episodes of one task played as one long episode.

The agent sees ``(obs, previous action, previous reward, done flag)``; the inner environment
is reset whenever an inner episode ends, with the done flag set on the first observation of
the next one. A recurrent policy's state therefore carries across the episodes of a trial
(the rollout worker keeps it for the whole wrapped episode) and starts afresh with each
trial. The trial terminates after its last inner episode: nothing follows it to bootstrap.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from metaorch.tasks.base import TaskDescriptor
from metaorch.tasks.rl.base import EnvFamily, TaskParams, check_option


def _flat_size(space: gym.Space) -> int:
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    raise TypeError(f"trials support Box and Discrete spaces, not {space}")


class TrialEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, inner: gym.Env, episodes: int):
        self.inner, self.episodes = inner, episodes
        self._obs_size = _flat_size(inner.observation_space)
        self._act_size = _flat_size(inner.action_space)
        size = self._obs_size + self._act_size + 2
        self.observation_space = spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self.action_space = inner.action_space
        self.horizon = episodes * getattr(inner, "horizon", getattr(inner.unwrapped, "horizon", 1))
        self._done_episodes = 0

    def set_task(self, params: TaskParams) -> None:
        self.inner.set_task(params)

    def _augment(self, obs: Any, action: Any, reward: float, done: bool) -> np.ndarray:
        out = np.zeros(self.observation_space.shape, np.float32)
        o, a = self._obs_size, self._act_size
        if isinstance(self.inner.observation_space, spaces.Discrete):
            out[int(obs)] = 1.0
        else:
            out[:o] = np.asarray(obs, np.float32).reshape(-1)
        if action is not None:
            if isinstance(self.action_space, spaces.Discrete):
                out[o + int(action)] = 1.0
            else:
                out[o : o + a] = np.asarray(action, np.float32).reshape(-1)
        out[o + a] = reward
        out[o + a + 1] = float(done)
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._done_episodes = 0
        obs, info = self.inner.reset(seed=seed, options=options)
        return self._augment(obs, None, 0.0, False), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.inner.step(action)
        done = terminated or truncated
        trial_over = False
        if done:
            self._done_episodes += 1
            trial_over = self._done_episodes >= self.episodes
            if not trial_over:
                obs, _ = self.inner.reset()  # continues the inner env's seeded stream
        info = {**info, "episode": self._done_episodes}
        return self._augment(obs, action, float(reward), done), float(reward), trial_over, False, info

    def close(self) -> None:
        self.inner.close()


class TrialFamily(EnvFamily):
    """Any family's tasks, each played as a trial of ``episodes`` episodes."""

    def __init__(self, inner: EnvFamily, episodes: int):
        check_option(inner.name, "trial_episodes", isinstance(episodes, int) and episodes >= 1, episodes, "an integer >= 1")
        self.inner, self.episodes = inner, episodes
        self.horizon = episodes * inner.horizon
        self.name = f"{inner.name}_trial"  # type: ignore[misc]

    def sample(self, rng: np.random.Generator) -> TaskParams:
        return self.inner.sample(rng)

    def task(self, descriptor: TaskDescriptor) -> TaskParams:
        return self.inner.task(descriptor)  # families that draw by split (Meta-World) keep doing so

    def label(self, params: TaskParams) -> str | None:
        return self.inner.label(params)

    def check(self, params: Any) -> TaskParams:
        return self.inner.check(params)

    def build(self, params: TaskParams) -> TrialEnv:
        return TrialEnv(self.inner.build(params), self.episodes)
