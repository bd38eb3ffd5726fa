"""MuJoCo locomotion task families (gymnasium's v5 models) as in MAML and PEARL.

Each environment subclasses gymnasium's own and replaces only its reward, so dynamics,
observations, resets and termination are exactly HalfCheetah-v5's and Ant-v5's:

- HalfCheetahVel: ``-|v - v*| - 0.05 |a|²``, v* ~ U[low, high] (Finn et al. 2017: U[0, 2]).
- HalfCheetahDir: ``d v - 0.05 |a|²``, d ∈ {-1, +1}.
- AntDir: Ant-v5's reward with the forward velocity times d ∈ {-1, +1}.
- AntGoal: ``-|xy - goal|₁`` minus Ant-v5's control and contact costs, goal uniform on a
  disk of radius 3 (Rakelly et al. 2019).

v is the forward velocity the v5 environments report (``info["x_velocity"]``).
"""

from __future__ import annotations

import warnings
from typing import Any

import mujoco
import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.utils import EzPickle

from metaorch.tasks.rl.base import EnvFamily, HorizonMixin, TaskParams, check_array, check_keys, check_number, check_option

DIRECTIONS = (-1.0, 1.0)


def _mujoco_warning(message: str) -> None:
    """MuJoCo's own handler prints each warning with a blank line after it, once per model
    compiled: a rollout worker's log filled with blank lines (gymnasium's v5 models set the
    deprecated ``settotalmass``). As a Python warning it shows once per process."""
    warnings.warn_explicit(f"MuJoCo: {message.strip()}", RuntimeWarning, "mujoco", 0, registry=_SHOWN)


_SHOWN: dict[Any, Any] = {}  # the warnings registry: each message once per process


if mujoco.get_mju_user_warning() is None:  # leave a handler the user installed alone
    mujoco.set_mju_user_warning(_mujoco_warning)


class HalfCheetahVelEnv(HorizonMixin, HalfCheetahEnv):
    task_attribute = "target_velocity"  # the task, as tasks/rl/batched.py reads it off each env

    def __init__(self, target_velocity: float, horizon: int = 200, ctrl_cost_weight: float = 0.05, **kwargs: Any):
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        EzPickle.__init__(self, target_velocity, horizon, ctrl_cost_weight, **kwargs)
        self.target_velocity, self.horizon = target_velocity, horizon

    def set_task(self, params: TaskParams) -> None:
        self.target_velocity = params["velocity"]

    @staticmethod
    def forward_reward(x_velocity, target_velocity):
        """Of floats, or of arrays (tasks/rl/batched.py): one definition for both paths."""
        return -abs(x_velocity - target_velocity)

    def _get_rew(self, x_velocity: float, action: np.ndarray):
        forward = self.forward_reward(x_velocity, self.target_velocity)
        ctrl = self.control_cost(action)
        return forward - ctrl, {"reward_forward": forward, "reward_ctrl": -ctrl}


class HalfCheetahDirEnv(HorizonMixin, HalfCheetahEnv):
    task_attribute = "direction"

    def __init__(self, direction: float, horizon: int = 200, ctrl_cost_weight: float = 0.05, **kwargs: Any):
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        EzPickle.__init__(self, direction, horizon, ctrl_cost_weight, **kwargs)
        self.direction, self.horizon = direction, horizon

    def set_task(self, params: TaskParams) -> None:
        self.direction = params["direction"]

    @staticmethod
    def forward_reward(x_velocity, direction):
        return direction * x_velocity

    def _get_rew(self, x_velocity: float, action: np.ndarray):
        forward = self.forward_reward(x_velocity, self.direction)
        ctrl = self.control_cost(action)
        return forward - ctrl, {"reward_forward": forward, "reward_ctrl": -ctrl}


class AntDirEnv(HorizonMixin, AntEnv):
    def __init__(self, direction: float, horizon: int = 200, **kwargs: Any):
        super().__init__(**kwargs)
        EzPickle.__init__(self, direction, horizon, **kwargs)
        self.direction, self.horizon = direction, horizon

    def set_task(self, params: TaskParams) -> None:
        self.direction = params["direction"]

    def _get_rew(self, x_velocity: float, action: np.ndarray):
        return super()._get_rew(self.direction * x_velocity, action)


class AntGoalEnv(HorizonMixin, AntEnv):
    def __init__(self, goal: np.ndarray, horizon: int = 200, **kwargs: Any):
        super().__init__(**kwargs)
        EzPickle.__init__(self, goal, horizon, **kwargs)
        self.goal, self.horizon = np.asarray(goal, dtype=np.float64), horizon

    def set_task(self, params: TaskParams) -> None:
        self.goal = np.asarray(params["goal"], dtype=np.float64)

    def _get_rew(self, x_velocity: float, action: np.ndarray):
        distance = np.abs(self.data.qpos[:2] - self.goal).sum()  # the torso's position after the step
        ctrl, contact = self.control_cost(action), self.contact_cost
        info = {"reward_goal": -distance, "reward_ctrl": -ctrl, "reward_contact": -contact, "goal_distance": distance}
        return -distance - ctrl - contact, info


def _check_horizon(family: str, horizon: int) -> int:
    check_option(family, "horizon", isinstance(horizon, int) and horizon >= 1, horizon, "an integer >= 1")
    return horizon


class HalfCheetahVel(EnvFamily):
    name = "half_cheetah_vel"

    def __init__(self, low: float = 0.0, high: float = 2.0, horizon: int = 200):
        check_option(self.name, "high", float(low) <= float(high), (low, high), "at least low")
        self.low, self.high, self.horizon = float(low), float(high), _check_horizon(self.name, horizon)

    def sample(self, rng: np.random.Generator) -> TaskParams:
        return {"velocity": float(rng.uniform(self.low, self.high))}

    def check(self, params: Any) -> TaskParams:
        check_keys(self.name, params, ["velocity"])
        return {"velocity": check_number(self.name, "velocity", params["velocity"])}

    def build(self, params: TaskParams) -> HalfCheetahVelEnv:
        return HalfCheetahVelEnv(params["velocity"], self.horizon)


class HalfCheetahDir(EnvFamily):
    name = "half_cheetah_dir"

    def __init__(self, horizon: int = 200):
        self.horizon = _check_horizon(self.name, horizon)

    def sample(self, rng: np.random.Generator) -> TaskParams:
        return {"direction": DIRECTIONS[int(rng.integers(2))]}

    def check(self, params: Any) -> TaskParams:
        check_keys(self.name, params, ["direction"])
        return {"direction": check_number(self.name, "direction", params["direction"], DIRECTIONS)}

    def build(self, params: TaskParams) -> HalfCheetahDirEnv:
        return HalfCheetahDirEnv(params["direction"], self.horizon)


class AntDir(EnvFamily):
    """``contact_forces`` adds Ant-v5's 78 clipped external forces to the 27-number observation
    (off by default, as in the MAML and PEARL experiments, whose Ant observed 27 numbers)."""

    name = "ant_dir"

    def __init__(self, horizon: int = 200, contact_forces: bool = False):
        self.horizon, self.contact_forces = _check_horizon(self.name, horizon), bool(contact_forces)

    def sample(self, rng: np.random.Generator) -> TaskParams:
        return {"direction": DIRECTIONS[int(rng.integers(2))]}

    def check(self, params: Any) -> TaskParams:
        check_keys(self.name, params, ["direction"])
        return {"direction": check_number(self.name, "direction", params["direction"], DIRECTIONS)}

    def build(self, params: TaskParams) -> AntDirEnv:
        return AntDirEnv(params["direction"], self.horizon, include_cfrc_ext_in_observation=self.contact_forces)


class AntGoal(EnvFamily):
    name = "ant_goal"

    def __init__(self, radius: float = 3.0, horizon: int = 200, contact_forces: bool = False):
        check_option(self.name, "radius", float(radius) > 0, radius, "positive")
        self.radius, self.horizon = float(radius), _check_horizon(self.name, horizon)
        self.contact_forces = bool(contact_forces)

    def sample(self, rng: np.random.Generator) -> TaskParams:
        # uniform over the disk's area: radius ∝ sqrt(u)
        r, angle = self.radius * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        return {"goal": np.array([r * np.cos(angle), r * np.sin(angle)])}

    def check(self, params: Any) -> TaskParams:
        check_keys(self.name, params, ["goal"])
        return {"goal": check_array(self.name, "goal", params["goal"], (2,))}

    def build(self, params: TaskParams) -> AntGoalEnv:
        return AntGoalEnv(params["goal"], self.horizon, include_cfrc_ext_in_observation=self.contact_forces)
