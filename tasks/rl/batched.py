"""Step a rollout worker's environments together: one call per policy step for all of them.

:func:`stepper` gives the worker an object whose ``step(actions, rows)`` steps the
environments ``rows`` with ``actions[rows]`` and returns their observations, rewards,
terminations, truncations and success flags as arrays.

- :class:`EnvLoop`, for any gymnasium environment: each one's own ``step``, one Python call
  (and a dozen inside gymnasium) per environment. The reference.
- :class:`HalfCheetahBatch`, for HalfCheetahVel and HalfCheetahDir: per environment only what
  MuJoCo must do (set the controls, ``mj_step`` ``frame_skip`` times in C, read qpos and qvel
  into one array row), then observations, forward velocities and rewards of all of them in a
  few numpy operations. Its results are the gymnasium env's bit for bit (the same float64
  arithmetic in the same order; ``tests/test_batched_rollout.py``).

Why not ``mujoco.rollout``, one C call for all environments: it starts every call from
``initial_state`` with ``qacc_warmstart`` zeroed (or given, but it never returns the one it
ends with), while gymnasium's env carries the warm start from step to step. The constraint
solver then converges to slightly different accelerations (1e-15 after one step), which
HalfCheetah's contacts amplify to 1e-6 after 50 steps and to O(1) differences in the
observation after 200. Stepping each environment's own ``MjData`` keeps its warm start, and
its Python cost (about 1.5 us per environment step, measured) is what stays of the ~30 us the
gymnasium path spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import gymnasium as gym
import mujoco
import numpy as np

from metaorch.algorithms.rl.trajectories import SUCCESS_KEY
from metaorch.tasks.rl.locomotion import HalfCheetahDirEnv, HalfCheetahVelEnv


class Step(NamedTuple):
    """One step of the environments ``rows``, in the order of ``rows``."""

    observations: np.ndarray  # [k, obs_dim] float32, as the worker stores them
    rewards: np.ndarray  # [k] float64
    terminated: np.ndarray  # [k] bool
    truncated: np.ndarray  # [k] bool
    success: np.ndarray  # [k] float32: info["success"] where an env reports it, else 0


class EnvLoop:
    """Each environment's own gymnasium ``step``."""

    def __init__(self, envs: Sequence[gym.Env], obs_dim: int):
        self.envs, self.obs_dim = envs, obs_dim

    def step(self, actions: np.ndarray, rows: Sequence[int]) -> Step:
        k = len(rows)
        out = Step(np.zeros((k, self.obs_dim), np.float32), np.zeros(k), np.zeros(k, bool), np.zeros(k, bool), np.zeros(k, np.float32))
        for j, i in enumerate(rows):
            o, reward, term, trunc, info = self.envs[i].step(actions[i])
            out.observations[j] = o.reshape(-1) if isinstance(o, np.ndarray) else o
            out.rewards[j], out.terminated[j], out.truncated[j] = reward, term, trunc
            out.success[j] = info.get(SUCCESS_KEY, 0.0)
        return out


_QPOS_QVEL = int(mujoco.mjtState.mjSTATE_QPOS) | int(mujoco.mjtState.mjSTATE_QVEL)


class HalfCheetahBatch:
    """HalfCheetahVel / HalfCheetahDir environments (one class, just reset) stepped as one.

    Mirrors ``HalfCheetahEnv.step`` and the family's ``_get_rew``: x before and after
    ``frame_skip`` physics steps, ``forward_reward`` of the velocity (the env class's own
    function, applied to arrays), minus ``ctrl_cost_weight * sum(a²)`` in float32 as
    gymnasium computes it from the worker's float32 action; the observation is qpos[1:] and
    qvel. ``mj_rnePostConstraint``, which gymnasium calls after each step, is skipped: it only
    fills force outputs (cacc, cfrc_*) that HalfCheetah's observation and reward never read.
    Truncation at the env's horizon, counted here (the env's own counter is not advanced, so
    an env must be reset before it steps through gymnasium again, as the worker always does).
    """

    def __init__(self, envs: Sequence[HalfCheetahVelEnv | HalfCheetahDirEnv]):
        first = envs[0]
        self.cls, self.frame_skip, self.dt = type(first), first.frame_skip, first.dt
        self.ctrl_cost_weight, self.horizon = first._ctrl_cost_weight, first.horizon
        self.models, self.datas = [env.model for env in envs], [env.data for env in envs]
        self.ctrls = [d.ctrl for d in self.datas]  # views into each MjData, made once
        self.task = np.array([getattr(env, self.cls.task_attribute) for env in envs], np.float64)
        self.state = np.zeros((len(envs), first.model.nq + first.model.nv))
        self.state_rows = list(self.state)  # a view of each env's row of ``state``, made once
        for m, d, row in zip(self.models, self.datas, self.state_rows):
            mujoco.mj_getState(m, d, row, _QPOS_QVEL)
        self.elapsed = np.zeros(len(envs), np.int64)

    @staticmethod
    def fits(envs: Sequence[gym.Env]) -> bool:
        """The envs it steps exactly: one of the two classes, same model file and options, the x position hidden."""
        first = envs[0] if envs else None
        if type(first) not in (HalfCheetahVelEnv, HalfCheetahDirEnv):
            return False
        same = ("fullpath", "frame_skip", "_ctrl_cost_weight", "horizon", "_exclude_current_positions_from_observation")
        return first._exclude_current_positions_from_observation and all(
            type(env) is type(first) and all(getattr(env, a) == getattr(first, a) for a in same) for env in envs
        )

    def step(self, actions: np.ndarray, rows: Sequence[int]) -> Step:
        rows = np.asarray(rows, np.intp)
        x_before = self.state[rows, 0]
        if len(rows) == len(self.models):  # every env: the common case, no per-env indexing
            each = zip(self.models, self.datas, self.ctrls, self.state_rows, actions)
        else:
            each = ((self.models[i], self.datas[i], self.ctrls[i], self.state_rows[i], actions[i]) for i in rows.tolist())
        mj_step, mj_get_state, skip = mujoco.mj_step, mujoco.mj_getState, self.frame_skip
        for m, d, ctrl, row, a in each:
            ctrl[:] = a
            mj_step(m, d, skip)
            mj_get_state(m, d, row, _QPOS_QVEL)
        after = self.state[rows]
        x_velocity = (after[:, 0] - x_before) / self.dt
        a = actions[rows]
        ctrl_cost = self.ctrl_cost_weight * np.sum(np.square(a), axis=1)
        rewards = self.cls.forward_reward(x_velocity, self.task[rows]) - ctrl_cost
        self.elapsed[rows] += 1
        k = len(rows)
        obs = after[:, 1:].astype(np.float32)
        return Step(obs, rewards, np.zeros(k, bool), self.elapsed[rows] >= self.horizon, np.zeros(k, np.float32))


def stepper(envs: Sequence[gym.Env], obs_dim: int, batched: bool = True) -> EnvLoop | HalfCheetahBatch:
    """The fastest exact way to step ``envs`` (all just reset); ``batched=False``: the reference loop."""
    if batched and HalfCheetahBatch.fits(envs):
        return HalfCheetahBatch(envs)
    return EnvLoop(envs, obs_dim)
