"""Rollout workers: trajectory layout, per-descriptor determinism, plans, and the Ray pool."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from functools import partial

import numpy as np
import pytest
import torch

from metaorch.orchestrator.components import build_rl
from metaorch.orchestrator.config import from_dict
from metaorch.tasks.base import TaskDescriptor, descriptors
from metaorch.workers.rollout import RolloutPool, RolloutTask, RolloutWorker, episode_streams


def build(name: str, hidden=(16,), algorithm: str = "maml_trpo", trial_episodes: int | None = None, **options):
    """What the trainer gives a rollout pool: ``partial(build_rl, config)``."""
    task = {"name": name, "options": options, "trial_episodes": trial_episodes}
    return partial(build_rl, from_dict({"task": task, "algorithm": {"name": algorithm}, "model": {"hidden": list(hidden)}}))


@dataclass(frozen=True)
class Episodes:
    """The simplest plan: ``episodes`` episodes at the given parameters."""

    episodes: int
    deterministic: bool = False

    def __call__(self, sample, params):
        return {"trajectories": sample(params, self.episodes, deterministic=self.deterministic)}


def sample(worker: RolloutWorker, params, tasks, episodes: int, deterministic: bool = False):
    """Every task's episodes from one call of the worker's plan runner (all stepped together)."""
    outputs = worker.run_plans(torch.as_tensor(params), [(Episodes(episodes, deterministic), t) for t in tasks])
    return [out["trajectories"] for out in outputs]


def same(a, b) -> bool:
    return all(np.array_equal(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))


@pytest.fixture(scope="module")
def nav():
    worker = RolloutWorker(build("navigation_2d", horizon=40))
    return worker, worker.policy.init_params(0)


def test_half_cheetah_trajectories_have_the_contracts_layout():
    worker = RolloutWorker(build("half_cheetah_vel", horizon=50))
    params = worker.policy.init_params(0)
    trajs = sample(worker, params, descriptors(0, "train", 0, 2), episodes=3)
    assert len(trajs) == 2
    t = trajs[0]
    assert t.observations.shape == (50, 3, 17) and t.next_observations.shape == (50, 3, 17)
    assert t.actions.shape == (50, 3, 6) and t.actions.dtype == np.float32
    for name in ("rewards", "log_probs", "mask", "terminated"):
        assert getattr(t, name).shape == (50, 3)
    assert (t.mask == 1).all() and not t.terminated.any()
    np.testing.assert_array_equal(t.observations[1:], t.next_observations[:-1])
    assert len({tuple(t.observations[0, e]) for e in range(3)}) == 3  # episodes reset with their own seeds
    # the stored log-probabilities are the acting policy's, for the unclipped actions
    logp = worker.policy.log_prob(params, torch.as_tensor(t.observations), torch.as_tensor(t.actions))
    np.testing.assert_allclose(logp.numpy(), t.log_probs, rtol=1e-5, atol=1e-4)
    # rewards follow the task's formula with the clipped actions (checked against the env's own velocity)
    env = worker.family.make(worker.family.task(TaskDescriptor(0, "train", 0, 0)))
    env.reset(seed=episode_streams(TaskDescriptor(0, "train", 0, 0), 0, 1)[0])
    for step in range(5):
        obs, r, *_ = env.step(np.clip(t.actions[step, 1], -1, 1))
        np.testing.assert_allclose(obs, t.next_observations[step, 1], rtol=1e-6)
        assert r == pytest.approx(t.rewards[step, 1], rel=1e-6)


def test_masks_end_with_the_episode(nav):
    worker, params = nav
    near = RolloutTask(TaskDescriptor(0, "test", 0, 0), {"goal": [0.0, 0.0]})
    # a deterministic policy at params 0 outputs the bias (0): the agent stays at the origin = the goal
    trajs = sample(worker, torch.zeros_like(params), [near, TaskDescriptor(0, "test", 0, 1)], episodes=2, deterministic=True)
    t = trajs[0]
    assert t.mask[0].tolist() == [1, 1] and (t.mask[1:] == 0).all()
    assert t.terminated[0].all() and not t.terminated[1:].any()
    assert (t.observations[1:] == 0).all() and (t.rewards[1:] == 0).all() and (t.actions[1:] == 0).all()
    far = trajs[1]
    assert (far.mask == 1).all() and far.returns().shape == (2,)
    np.testing.assert_allclose(far.returns(), far.rewards.sum(0))


def test_episodes_depend_on_their_descriptor_only(nav):
    worker, params = nav
    tasks = descriptors(3, "train", 1, 5)
    together = sample(worker, params, tasks, episodes=4)
    alone = sample(worker, params, tasks[3:4], episodes=4)
    reordered = sample(worker, params, [tasks[4], tasks[0], tasks[3]], episodes=4)
    assert same(together[3], alone[0]) and same(together[3], reordered[2]) and same(together[0], reordered[1])
    assert not np.array_equal(together[0].actions, together[1].actions)
    again = sample(RolloutWorker(build("navigation_2d", horizon=40)), params, tasks[3:4], episodes=4)
    assert same(again[0], alone[0])


@dataclass(frozen=True)
class TwoSamples:
    """A MAML-shaped plan: sample, move the parameters by a task-dependent amount, sample again."""

    episodes: int

    def __call__(self, sample, params):
        pre = sample(params, self.episodes)
        shifted = params + 0.1 * float(pre.returns().mean())
        post = sample(shifted, self.episodes)
        return {"pre": pre, "post": post, "shift": float(pre.returns().mean())}


def test_plans_get_their_own_streams_and_parameters(nav):
    worker, params = nav
    tasks = descriptors(0, "train", 0, 4)
    jobs = [(TwoSamples(3), t) for t in tasks]
    together = worker.run_plans(params, jobs)
    alone = worker.run_plans(params, jobs[2:3])
    assert same(together[2]["pre"], alone[0]["pre"]) and same(together[2]["post"], alone[0]["post"])
    assert len({out["shift"] for out in together}) == 4  # each task's post-sample used its own parameters
    first = together[0]
    expected = sample(worker, params + 0.1 * first["shift"], tasks[:1], 3)[0]
    assert not same(expected, first["post"])  # same parameters, but call 0 instead of call 1


def test_a_family_caps_the_environments_a_worker_steps_together(nav, monkeypatch):
    """``max_envs``: the call's episodes run in consecutive parts (a request larger than the cap
    alone), the worker holds at most the cap of environments, and no trajectory changes."""
    worker, params = nav
    tasks = descriptors(5, "train", 2, 5)
    jobs = [(TwoSamples(3), t) for t in tasks] + [(Episodes(7), tasks[0])]
    free = worker.run_plans(params, jobs)
    capped = RolloutWorker(build("navigation_2d", horizon=40))
    monkeypatch.setattr(capped.family, "max_envs", 4)
    out = capped.run_plans(params, jobs)
    assert len(capped.envs) == 7  # the request of 7 alone; every other part held at most 4
    assert len(worker.envs) >= 15 + 7
    for a, b in zip(free[:5], out[:5]):
        assert same(a["pre"], b["pre"]) and same(a["post"], b["post"])
    assert same(free[5]["trajectories"], out[5]["trajectories"])


def test_a_failing_plan_raises_in_the_caller(nav):
    worker, params = nav

    def broken(sample, theta):
        sample(theta, 1)
        raise ValueError("plan failed on purpose")

    with pytest.raises(ValueError, match="on purpose"):
        worker.run_plans(params, [(broken, TaskDescriptor(0, "train", 0, 0)), (TwoSamples(1), TaskDescriptor(0, "train", 0, 1))])
    assert sample(worker, params, descriptors(0, "train", 0, 1), 1)[0].episodes == 1  # still usable


def test_rl2_trials_with_a_categorical_policy():
    """RL²'s GRU policy over the arms (categorical), as the trainer builds it."""
    worker = RolloutWorker(build("bandit", algorithm="rl2", trial_episodes=6, arms=3))
    params = worker.policy.init_params(1)
    (t,) = sample(worker, params, [RolloutTask(TaskDescriptor(0, "test", 0, 0), {"probs": [0.0, 1.0, 0.0]})], episodes=4)
    assert t.actions.shape == (6, 4) and t.actions.dtype == np.int64 and (t.mask == 1).all()
    assert t.terminated[-1].all() and not t.terminated[:-1].any()
    np.testing.assert_array_equal(t.rewards, (t.actions == 1).astype(np.float32))
    prev_action = t.next_observations[:, :, 1:4].argmax(-1)
    np.testing.assert_array_equal(prev_action, t.actions)
    np.testing.assert_array_equal(t.next_observations[:, :, -1], 1.0)


def test_pool_results_do_not_depend_on_the_number_of_workers(ray_session):
    """Two actors, a shard each, and the in-process transport, against one local worker
    stepping every task in one batch."""
    import ray
    import ray.cloudpickle

    from metaorch.workers import Resources

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors cannot import this test module
    tasks = descriptors(1, "train", 0, 6) + [RolloutTask(TaskDescriptor(1, "test", 0, 6), {"goal": [2.0, -1.0]})]
    make = build("navigation_2d", horizon=30)
    params = make()[1].init_params(4).numpy()
    local = RolloutWorker(make)
    reference = local.run_plans(torch.as_tensor(params), [(TwoSamples(2), t) for t in tasks])
    pool = RolloutPool(make, 2, Resources(num_cpus=0.5))
    try:
        outputs = {"two": pool.run_plan(params, tasks, TwoSamples(2), chunk_size=2)}
        assert len({info["pid"] for info in pool.info()}) == 2

        ray.kill(pool.actors[0])  # a worker lost between iterations: replaced, same results
        outputs["replaced"] = pool.run_plan(params, tasks, TwoSamples(2), chunk_size=3)
        assert pool.restarts == 1
        trajs = [out["trajectories"] for out in pool.run_plan(params, tasks, Episodes(2))]
    finally:
        pool.shutdown()
    inprocess = RolloutPool(make, 1, Resources(), transport="inprocess")  # one worker in this process
    try:
        outputs["inprocess"] = inprocess.run_plan(params, tasks, TwoSamples(2), chunk_size=2)
        assert inprocess.info()[0]["pid"] == os.getpid() and inprocess.restarts == 0
    finally:
        inprocess.shutdown()
    assert set(outputs) == {"two", "replaced", "inprocess"}
    for key in outputs:
        assert len(outputs[key]) == len(tasks)
        for got, want in zip(outputs[key], reference):
            assert same(got["pre"], want["pre"]) and same(got["post"], want["post"])
    for got, want in zip(trajs, sample(local, params, tasks, episodes=2)):
        assert same(got, want)
