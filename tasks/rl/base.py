"""The interface of a meta-RL task family, and the checks every family shares.

A family is a distribution over environments. ``task(descriptor)`` draws a task's
parameters (a target velocity, a goal, a bandit's arm probabilities) from the descriptor's
own random stream, so a task is a pure function of its descriptor; ``make(params)`` builds
the environment. Meta-test can skip the draw and hand ``make`` explicit parameters, e.g.
velocities outside the training range.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from metaorch.tasks.base import TaskDescriptor

TaskParams = dict[str, Any]  # floats, or numpy arrays for tabular tasks


class EnvFamilyError(ValueError):
    """Bad family name, option or task parameters; the message names the field and value."""


class EnvFamily(ABC):
    """A distribution over environments that share spaces and a horizon."""

    name: ClassVar[str]
    horizon: int
    # At most this many environments stepped together in a rollout worker (None: every episode
    # of its call at once); the rest wait for the next run of the same loop. Bounds a worker's memory.
    max_envs: ClassVar[int | None] = None

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> TaskParams:
        """One task's parameters drawn from ``rng``."""

    @abstractmethod
    def check(self, params: Mapping[str, Any]) -> TaskParams:
        """``params`` normalised (numbers as float, arrays as float64), or EnvFamilyError."""

    @abstractmethod
    def build(self, params: TaskParams) -> gym.Env:
        """The environment of already checked parameters."""

    def assign(self, env: gym.Env, params: TaskParams) -> gym.Env:
        """``env`` (one of this family's) switched to the task ``params``, or a new env when it
        cannot switch: rollout workers reuse environments, since building a MuJoCo model costs
        milliseconds. A switched env must be reset (with a seed) before it steps again."""
        if hasattr(env, "set_task"):
            env.set_task(params)
            return env
        env.close()
        return self.build(params)

    def task(self, descriptor: TaskDescriptor) -> TaskParams:
        return self.sample(descriptor.rng())

    def label(self, params: TaskParams) -> str | None:
        """The task's class where a family has classes (Meta-World's environments), so that
        results are also reported per class; None where it has none."""
        return None

    def make(self, params: Mapping[str, Any]) -> gym.Env:
        return self.build(self.check(params))

    def _probe(self) -> gym.Env:
        if getattr(self, "_probe_env", None) is None:
            self._probe_env = self.build(self.sample(np.random.default_rng(0)))
        return self._probe_env

    @property
    def observation_space(self) -> gym.Space:
        return self._probe().observation_space

    @property
    def action_space(self) -> gym.Space:
        return self._probe().action_space

    def __repr__(self) -> str:
        return f"{type(self).__name__}(horizon={self.horizon})"


class HorizonMixin:
    """Truncate episodes after ``self.horizon`` steps (put it before the env class in the bases)."""

    horizon: int
    _elapsed: int = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._elapsed = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self._elapsed += 1
        return obs, reward, terminated, truncated or self._elapsed >= self.horizon, info


def check_keys(family: str, params: Mapping[str, Any], keys: Sequence[str]) -> None:
    if not isinstance(params, Mapping):
        raise EnvFamilyError(f"{family}: task parameters must be a mapping with keys {list(keys)}, got {params!r}")
    missing, extra = set(keys) - set(params), set(params) - set(keys)
    if missing or extra:
        raise EnvFamilyError(
            f"{family}: task parameters need exactly the keys {list(keys)}; "
            f"missing {sorted(missing)}, unexpected {sorted(extra)}"
        )


def check_number(family: str, key: str, value: Any, choices: Sequence[float] | None = None) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EnvFamilyError(f"{family}: task parameter {key} must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise EnvFamilyError(f"{family}: task parameter {key} must be finite, got {value!r}")
    if choices is not None and number not in choices:
        raise EnvFamilyError(f"{family}: task parameter {key} must be one of {list(choices)}, got {value!r}")
    return number


def check_array(family: str, key: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise EnvFamilyError(f"{family}: task parameter {key} must be numbers of shape {shape}, got {value!r}") from None
    if array.shape != shape:
        raise EnvFamilyError(f"{family}: task parameter {key} must have shape {shape}, got {array.shape}")
    if not np.isfinite(array).all():
        raise EnvFamilyError(f"{family}: task parameter {key} must be finite")
    return array


def check_option(family: str, name: str, ok: bool, value: Any, expected: str) -> None:
    if not ok:
        raise EnvFamilyError(f"{family}: option {name} must be {expected}, got {value!r}")
