"""2-D point navigation (Finn et al. 2017, §5.3): reach a goal drawn from U[-0.5, 0.5]².

Two options make it oyster's point robot (PEARL, Rakelly et al. 2019, ``rlkit/envs/point_robot.py``):
``start: uniform`` (each episode starts uniformly in [-1, 1]², drawn from the episode's reset
seed) and ``early_end: false`` (never ends before the horizon), with ``low: -1, high: 1,
horizon: 20``. From the origin, a per-transition reward places the goal on a circle around
the agent; random starts spread the context, so PEARL's encoder can place the goal.
The defaults are MAML's task (pytorch-maml-rl): origin start, ending within 0.01 of the goal.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from metaorch.tasks.rl.base import EnvFamily, HorizonMixin, TaskParams, check_array, check_keys, check_option


START_HALF_WIDTH = 1.0  # start: uniform draws the start from [-1, 1]² (oyster's point robot)


class _Navigation(gym.Env):
    """The agent starts at the origin (or, ``start="uniform"``, anywhere in [-1, 1]²) and moves
    by its action, clipped to ±``max_step`` per axis; the reward is minus the distance to the
    goal after the move, and with ``early_end`` the episode ends when both coordinates are
    within 0.01 of the goal (pytorch-maml-rl's rule)."""

    metadata = {"render_modes": []}

    def __init__(self, goal: np.ndarray, max_step: float = 0.1, start: str = "origin", early_end: bool = True):
        self.goal = np.asarray(goal, dtype=np.float64)
        self.max_step = max_step
        self.start, self.early_end = start, early_end
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-max_step, max_step, (2,), np.float32)
        self._position = np.zeros(2)

    def set_task(self, params: TaskParams) -> None:
        self.goal = np.asarray(params["goal"], dtype=np.float64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self.start == "uniform":
            self._position = self.np_random.uniform(-START_HALF_WIDTH, START_HALF_WIDTH, size=2)
        else:
            self._position = np.zeros(2)
        return self._position.astype(np.float32), {}

    def step(self, action):
        self._position = self._position + np.clip(action, -self.max_step, self.max_step)
        offset = self._position - self.goal
        distance = float(np.sqrt(offset @ offset))
        terminated = self.early_end and bool((np.abs(offset) < 0.01).all())
        return self._position.astype(np.float32), -distance, terminated, False, {"distance": distance}


class NavigationEnv(HorizonMixin, _Navigation):
    def __init__(self, goal: np.ndarray, horizon: int = 100, max_step: float = 0.1, start: str = "origin", early_end: bool = True):
        super().__init__(goal, max_step, start, early_end)
        self.horizon = horizon


class Navigation2D(EnvFamily):
    name = "navigation_2d"

    def __init__(
        self, low: float = -0.5, high: float = 0.5, horizon: int = 100, max_step: float = 0.1, start: str = "origin", early_end: bool = True
    ):
        check_option(self.name, "high", float(low) <= float(high), (low, high), "at least low")
        check_option(self.name, "horizon", isinstance(horizon, int) and horizon >= 1, horizon, "an integer >= 1")
        check_option(self.name, "max_step", float(max_step) > 0, max_step, "positive")
        check_option(self.name, "start", start in ("origin", "uniform"), start, "origin or uniform")
        check_option(self.name, "early_end", isinstance(early_end, bool), early_end, "true or false")
        self.low, self.high, self.horizon, self.max_step = float(low), float(high), horizon, float(max_step)
        self.start, self.early_end = start, early_end

    def sample(self, rng: np.random.Generator) -> TaskParams:
        return {"goal": rng.uniform(self.low, self.high, size=2)}

    def check(self, params: Any) -> TaskParams:
        check_keys(self.name, params, ["goal"])
        return {"goal": check_array(self.name, "goal", params["goal"], (2,))}

    def build(self, params: TaskParams) -> NavigationEnv:
        return NavigationEnv(params["goal"], self.horizon, self.max_step, self.start, self.early_end)
