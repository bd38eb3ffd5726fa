"""tasks/rl/batched.py: the batched HalfCheetah stepper is the gymnasium env, bit for bit.

Env level: the same float32 actions (as the worker sends them) through each env's own
``step`` and through ``HalfCheetahBatch`` give identical float32 observations, identical
float64 rewards and the same truncation, over a whole 200-step episode (where any drift
of the physics would have grown: ``mujoco.rollout``, which drops the solver's warm start,
is off by O(1) by then) and with only some rows stepped. Worker level: a RolloutWorker
gives identical trajectories on either path. A few seconds in all.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pytest

from metaorch.orchestrator.components import build_rl
from metaorch.orchestrator.config import from_dict
from metaorch.tasks.base import descriptors
from metaorch.tasks.rl import make_family
from metaorch.tasks.rl.batched import EnvLoop, HalfCheetahBatch, stepper
from metaorch.tasks.rl.locomotion import AntDir, HalfCheetahDir, HalfCheetahVel
from metaorch.workers.rollout import RolloutItem, RolloutWorker

FAMILIES = {"half_cheetah_vel": (HalfCheetahVel, [0.3, 1.0, 1.7, 2.0]), "half_cheetah_dir": (HalfCheetahDir, [-1.0, 1.0, 1.0, -1.0])}


def _envs(name: str):
    cls, tasks = FAMILIES[name]
    family = make_family(cls)
    key = "velocity" if name == "half_cheetah_vel" else "direction"
    envs = [family.make({key: task}) for task in tasks]
    for i, env in enumerate(envs):
        env.reset(seed=100 + i)
    return envs


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_batch_equals_gymnasium_step_for_step(name):
    reference, batched = _envs(name), _envs(name)
    n, horizon = len(reference), reference[0].horizon
    steps = stepper(batched, 17)
    assert isinstance(steps, HalfCheetahBatch)
    actions = np.random.default_rng(0).uniform(-1.2, 1.2, (horizon, n, 6)).clip(-1, 1).astype(np.float32)
    for t in range(horizon):
        rows = np.arange(n) if t % 7 else np.array([0, 2])  # every seventh step only some envs move
        step = steps.step(actions[t], rows)
        for j, i in enumerate(rows):
            o, reward, term, trunc, info = reference[i].step(actions[t, i])
            np.testing.assert_array_equal(step.observations[j], o.astype(np.float32))
            assert step.rewards[j] == reward and step.terminated[j] == term and step.truncated[j] == trunc
            assert step.success[j] == info.get("success", 0.0)
    elapsed = np.array([env._elapsed for env in reference])
    assert (elapsed < horizon).any() and np.array_equal(steps.elapsed, elapsed)  # the rows skipped are not truncated yet


def test_stepper_falls_back_to_each_envs_step():
    assert isinstance(stepper(_envs("half_cheetah_vel"), 17, batched=False), EnvLoop)
    mixed = _envs("half_cheetah_vel")[:1] + _envs("half_cheetah_dir")[:1]
    ants = [make_family(AntDir).make({"direction": 1.0})]
    other_horizon = _envs("half_cheetah_vel")[:1] + [make_family(HalfCheetahVel, horizon=30).make({"velocity": 1.0})]
    for envs in (mixed, ants, other_horizon):
        assert isinstance(stepper(envs, 27, batched=True), EnvLoop)


@dataclass(frozen=True)
class _Episodes:
    episodes: int

    def __call__(self, sample, params):
        return {"trajectories": sample(params, self.episodes)}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_rollout_worker_identical_on_either_path(name):
    build = partial(build_rl, from_dict({"task": {"name": name}, "algorithm": {"name": "maml_trpo"}, "model": {"hidden": [16, 16]}}))
    fast, reference = RolloutWorker(build), RolloutWorker(build, batched=False)
    params = fast.policy.init_params(0).numpy()
    items = [RolloutItem(0, tuple(descriptors(3, "train", 1, 2)), _Episodes(3))]
    got, want = fast.run(params, items), reference.run(params, items)
    assert isinstance(stepper(fast.envs, fast.obs_dim), HalfCheetahBatch)  # the fast worker did take the batch
    for a, b in zip(got[0].outputs, want[0].outputs):
        ta, tb = a["trajectories"], b["trajectories"]
        assert ta.mask.sum() == 3 * 200
        for field in ("observations", "actions", "rewards", "log_probs", "next_observations", "terminated", "mask", "success"):
            np.testing.assert_array_equal(getattr(ta, field), getattr(tb, field), err_msg=field)
