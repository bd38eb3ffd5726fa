"""The discrete tasks of RL² (Duan et al. 2016, §4.1): Bernoulli bandits and random tabular MDPs.

Both are meant to be played as trials of several episodes (:mod:`tasks.rl.trial`): a task's
parameters are hidden, and only experience within the trial reveals them.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from metaorch.tasks.rl.base import EnvFamily, EnvFamilyError, HorizonMixin, TaskParams, check_array, check_keys, check_option


class BanditEnv(gym.Env):
    """One pull per episode: action k pays 1 with probability ``probs[k]``, else 0."""

    metadata = {"render_modes": []}

    def __init__(self, probs: np.ndarray):
        self.set_task({"probs": probs})
        self.observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Discrete(len(self.probs))
        self.horizon = 1

    def set_task(self, params: TaskParams) -> None:
        self.probs = np.asarray(params["probs"], dtype=np.float64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        reward = float(self.np_random.uniform() < self.probs[int(action)])
        return np.zeros(1, np.float32), reward, True, False, {}


class _Tabular(gym.Env):
    """Starts in state 0 (as pytorch-maml-rl's TabularMDPEnv); the observation is the state one-hot;
    the reward of (s, a) is drawn from N(reward_means[s, a], 1)."""

    metadata = {"render_modes": []}

    def __init__(self, transitions: np.ndarray, reward_means: np.ndarray):
        self.set_task({"transitions": transitions, "reward_means": reward_means})
        self.num_states, self.num_actions = self.reward_means.shape
        self.observation_space = spaces.Box(0.0, 1.0, (self.num_states,), np.float32)
        self.action_space = spaces.Discrete(self.num_actions)
        self._state = 0

    def set_task(self, params: TaskParams) -> None:
        self.transitions = np.asarray(params["transitions"], dtype=np.float64)
        self.reward_means = np.asarray(params["reward_means"], dtype=np.float64)
        self._cdf = self.transitions.cumsum(-1)

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.num_states, np.float32)
        obs[self._state] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._state = 0
        return self._obs(), {}

    def step(self, action):
        a = int(action)
        reward = float(self.np_random.normal(self.reward_means[self._state, a], 1.0))
        cdf = self._cdf[self._state, a]
        self._state = min(int(np.searchsorted(cdf, self.np_random.uniform() * cdf[-1], side="right")), self.num_states - 1)
        return self._obs(), reward, False, False, {}


class TabularMDPEnv(HorizonMixin, _Tabular):
    def __init__(self, transitions: np.ndarray, reward_means: np.ndarray, horizon: int = 10):
        super().__init__(transitions, reward_means)
        self.horizon = horizon


class BernoulliBandits(EnvFamily):
    name = "bandit"
    horizon = 1

    def __init__(self, arms: int = 5):
        check_option(self.name, "arms", isinstance(arms, int) and arms >= 2, arms, "an integer >= 2")
        self.arms = arms

    def sample(self, rng: np.random.Generator) -> TaskParams:
        return {"probs": rng.uniform(size=self.arms)}

    def check(self, params: Any) -> TaskParams:
        check_keys(self.name, params, ["probs"])
        probs = check_array(self.name, "probs", params["probs"], (self.arms,))
        if not ((probs >= 0) & (probs <= 1)).all():
            raise EnvFamilyError(f"{self.name}: task parameter probs must lie in [0, 1], got {probs.tolist()}")
        return {"probs": probs}

    def build(self, params: TaskParams) -> BanditEnv:
        return BanditEnv(params["probs"])


class TabularMDPs(EnvFamily):
    name = "tabular_mdp"

    def __init__(self, states: int = 10, actions: int = 5, horizon: int = 10):
        for key, value in (("states", states), ("actions", actions), ("horizon", horizon)):
            check_option(self.name, key, isinstance(value, int) and value >= 1, value, "an integer >= 1")
        self.states, self.actions, self.horizon = states, actions, horizon

    def sample(self, rng: np.random.Generator) -> TaskParams:
        transitions = rng.dirichlet(np.ones(self.states), size=(self.states, self.actions))
        return {"transitions": transitions, "reward_means": rng.normal(1.0, 1.0, size=(self.states, self.actions))}

    def check(self, params: Any) -> TaskParams:
        check_keys(self.name, params, ["transitions", "reward_means"])
        s, a = self.states, self.actions
        transitions = check_array(self.name, "transitions", params["transitions"], (s, a, s))
        valid = (transitions >= 0).all() and np.allclose(transitions.sum(-1), 1.0, atol=1e-6)
        if not valid:
            raise EnvFamilyError(f"{self.name}: task parameter transitions must be non-negative with rows summing to 1")
        return {"transitions": transitions, "reward_means": check_array(self.name, "reward_means", params["reward_means"], (s, a))}

    def build(self, params: TaskParams) -> TabularMDPEnv:
        return TabularMDPEnv(params["transitions"], params["reward_means"], self.horizon)
