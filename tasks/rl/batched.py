"""Step a rollout worker's environments together: one call per policy step for all of them.

:func:`stepper` gives the worker an object whose ``step(actions, rows)`` steps the
environments ``rows`` with ``actions[rows]`` and returns their observations, rewards,
terminations, truncations and success flags as arrays.

- :class:`EnvLoop`, for any gymnasium environment: each one's own ``step``, one Python call
  (and a dozen inside gymnasium) per environment. The reference.
- :class:`HalfCheetahBatch`, for HalfCheetahVel and HalfCheetahDir: per environment only what
  MuJoCo must do (set its state, controls included, in the worker's one ``MjData``, ``mj_step``
  ``frame_skip`` times in C, read the state back into its array row), then observations,
  forward velocities and rewards of all of them in a few numpy operations. Its results are the
  gymnasium env's bit for bit (the same float64 arithmetic in the same order;
  ``tests/test_batched_rollout.py``).

Why not ``mujoco.rollout``, one C call for all environments: it starts every call from
``initial_state`` with ``qacc_warmstart`` zeroed (or given, but it never returns the one it
ends with), while gymnasium's env carries the warm start from step to step. The constraint
solver then converges to slightly different accelerations (1e-15 after one step), which
HalfCheetah's contacts amplify to 1e-6 after 50 steps and to O(1) differences in the
observation after 200. Carrying each environment's whole integration state, warm start
included, keeps it exact, and its Python cost (about 1.5 us per environment step, measured)
is what stays of the ~30 us the gymnasium path spent.
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


_INTEGRATION = int(mujoco.mjtState.mjSTATE_INTEGRATION)  # all that mj_step reads and carries: time, qpos, qvel, warm start, ctrl, ...


def _offset(model: mujoco.MjModel, component: mujoco.mjtState) -> int:
    """Where ``component`` starts in an integration-state row: MuJoCo lays the components out
    in the order of their bits (time, qpos, qvel, act, warm start, ctrl, ...)."""
    return mujoco.mj_stateSize(model, int(component) - 1)


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

    Every environment steps in one ``MjData``: its integration state (91 doubles, the warm
    start and the controls among them) is set, stepped and read back per environment. That is
    exactly what its own ``MjData`` would compute, while a worker's hundred MjData (half a MB
    of buffer each) no longer cycle through the core's cache every step: with two workers on
    two cores, 46,000 -> 53,000 environment steps per second per worker (docs/scaling.md).
    The envs' own ``MjData`` keep their reset state. The envs share one compiled model
    (:meth:`fits`: the same file and options; no task changes the model), so the first's is used.
    """

    def __init__(self, envs: Sequence[HalfCheetahVelEnv | HalfCheetahDirEnv]):
        first = envs[0]
        self.cls, self.frame_skip, self.dt = type(first), first.frame_skip, first.dt
        self.ctrl_cost_weight, self.horizon = first._ctrl_cost_weight, first.horizon
        self.model = first.model
        self.data = mujoco.MjData(self.model)
        self.task = np.array([getattr(env, self.cls.task_attribute) for env in envs], np.float64)
        self.state = np.zeros((len(envs), mujoco.mj_stateSize(self.model, _INTEGRATION)))
        self.state_rows = list(self.state)  # a view of each env's row of ``state``, made once
        for env, row in zip(envs, self.state_rows):
            mujoco.mj_getState(env.model, env.data, row, _INTEGRATION)
        S = mujoco.mjtState  # the columns of a row that hold x (qpos[0]), qpos and qvel, and ctrl
        self.x_column = _offset(self.model, S.mjSTATE_QPOS)
        self.qpos_qvel_columns = slice(self.x_column, _offset(self.model, S.mjSTATE_ACT))
        ctrl_at = _offset(self.model, S.mjSTATE_CTRL)
        self.ctrl_columns = slice(ctrl_at, ctrl_at + self.model.nu)
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
        x_before = self.state[rows, self.x_column]
        a = actions[rows]
        self.state[rows, self.ctrl_columns] = a
        each = self.state_rows if len(rows) == len(self.state_rows) else [self.state_rows[i] for i in rows.tolist()]
        m, d, skip = self.model, self.data, self.frame_skip
        mj_set_state, mj_step, mj_get_state = mujoco.mj_setState, mujoco.mj_step, mujoco.mj_getState
        for row in each:
            mj_set_state(m, d, row, _INTEGRATION)
            mj_step(m, d, skip)
            mj_get_state(m, d, row, _INTEGRATION)
        after = self.state[rows, self.qpos_qvel_columns]
        x_velocity = (after[:, 0] - x_before) / self.dt
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
