"""Meta-RL task families on gymnasium environments, built from task descriptors.

``make_family(HalfCheetahVel, high=3.0)`` gives a family; ``family.task(descriptor)`` its
task parameters; ``family.make(params)`` the environment. ``trial_episodes=n`` plays each
task as an RL² trial of n episodes. Config names map to these classes in one place, the
orchestrator's registry.
"""

from __future__ import annotations

import inspect
from typing import Any

from metaorch.tasks.rl.base import EnvFamily, EnvFamilyError, TaskParams
from metaorch.tasks.rl.locomotion import AntDir, AntGoal, HalfCheetahDir, HalfCheetahVel
from metaorch.tasks.rl.navigation import Navigation2D
from metaorch.tasks.rl.tabular import BernoulliBandits, TabularMDPs
from metaorch.tasks.rl.trial import TrialEnv, TrialFamily


def make_family(cls: type[EnvFamily], trial_episodes: int | None = None, **options: Any) -> EnvFamily:
    """Family ``cls`` with its ``options`` (as trials of ``trial_episodes`` episodes if given);
    EnvFamilyError names what is wrong."""
    name = cls.name
    try:
        inspect.signature(cls).bind(**options)
    except TypeError:
        allowed = list(inspect.signature(cls).parameters)
        raise EnvFamilyError(f"{name}: unknown options {sorted(set(options) - set(allowed))}; allowed: {allowed}") from None
    family = cls(**options)
    return family if trial_episodes is None else TrialFamily(family, trial_episodes)


__all__ = [
    "AntDir",
    "AntGoal",
    "BernoulliBandits",
    "EnvFamily",
    "EnvFamilyError",
    "HalfCheetahDir",
    "HalfCheetahVel",
    "Navigation2D",
    "TabularMDPs",
    "TaskParams",
    "TrialEnv",
    "TrialFamily",
    "make_family",
]
