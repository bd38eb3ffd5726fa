"""Meta-RL task families: gymnasium's API, the reward formulas, tasks as functions of descriptors."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from metaorch.orchestrator import registry
from metaorch.tasks.base import TaskDescriptor
from metaorch.tasks.rl import EnvFamilyError, TrialEnv
from metaorch.tasks.rl import make_family as _make

FAMILIES = registry.tasks_for(frozenset({"rl"}))


def make_family(name: str, trial_episodes: int | None = None, **options):
    """The family a config's ``task.name`` builds, through the registry as the trainer does."""
    return _make(registry.task(name).builder(), trial_episodes, **options)


def _strict_check(env: gym.Env) -> None:
    """gymnasium's checker with its warnings as errors: it reports a NaN reward or an observation
    outside its space only as a warning. Unbounded Box observations (positions, velocities, the
    trial's reward channel) are by design, so its two notes on infinite bounds alone are allowed."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=r".*A Box observation space (minimum|maximum) value is -?infinity")
        check_env(env, skip_render_check=True)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("trial", [None, 2])
def test_every_family_passes_gymnasiums_checker(name, trial):
    family = make_family(name, trial_episodes=trial)
    env = family.make(family.task(TaskDescriptor(0, "train", 0, 3)))
    _strict_check(env)
    assert env.observation_space == family.observation_space and env.action_space == family.action_space
    assert family.horizon == (trial or 1) * make_family(name).horizon


def _nan_reward(env: gym.Env) -> None:
    step = env.step

    def broken(action):
        obs, _, term, trunc, info = step(action)
        return obs, float("nan"), term, trunc, info

    env.step = broken


def _outside_space(env: gym.Env) -> None:
    env.observation_space = gym.spaces.Box(-1e-3, 1e-3, env.observation_space.shape, env.observation_space.dtype)


@pytest.mark.parametrize(
    "breaks,message",
    [(_nan_reward, "reward is a NaN"), (_outside_space, "not within the observation space")],
    ids=["nan-reward", "outside-space"],
)
def test_the_strict_checker_fails_a_broken_env(breaks, message):
    """Broken in place, not wrapped: the checker warns about any wrapper, which would pass for any env."""
    family = make_family("navigation_2d")
    env = family.make(family.task(TaskDescriptor(0, "train", 0, 3)))
    breaks(env)
    with pytest.raises(UserWarning, match=message):
        _strict_check(env)


def _rollout(env: gym.Env, seed: int, steps: int, action_seed: int = 0):
    """Random actions; yields (action, obs, reward, terminated, truncated, info)."""
    env.reset(seed=seed)
    env.action_space.seed(action_seed)
    for _ in range(steps):
        a = env.action_space.sample()
        obs, r, term, trunc, info = env.step(a)
        yield a, obs, r, term, trunc, info
        if term or trunc:
            return


def test_half_cheetah_vel_reward_and_unchanged_dynamics():
    family = make_family("half_cheetah_vel")
    env = family.make({"velocity": 3.5})  # outside the training range U[0, 2]: meta-test may ask for it
    reference = gym.make("HalfCheetah-v5").unwrapped
    steps = list(zip(_rollout(env, 7, 50), _rollout(reference, 7, 50)))
    assert len(steps) == 50
    for (a, obs, r, _, _, info), (_, ref_obs, _, _, _, ref_info) in steps:
        np.testing.assert_array_equal(obs, ref_obs)
        assert info["x_velocity"] == ref_info["x_velocity"]
        assert r == pytest.approx(-abs(info["x_velocity"] - 3.5) - 0.05 * np.sum(np.square(a)), abs=1e-9)


def test_half_cheetah_episodes_end_at_the_horizon():
    env = make_family("half_cheetah_vel", horizon=30).make({"velocity": 1.0})
    steps = list(_rollout(env, 0, 100))
    assert len(steps) == 30 and steps[-1][4] and not any(s[3] for s in steps)
    env.reset(seed=1)
    assert not env.step(env.action_space.sample())[3]  # a reset starts the count again


@pytest.mark.parametrize("direction", [-1.0, 1.0])
def test_half_cheetah_dir_reward(direction):
    env = make_family("half_cheetah_dir").make({"direction": direction})
    for a, _, r, _, _, info in _rollout(env, 3, 30):
        assert r == pytest.approx(direction * info["x_velocity"] - 0.05 * np.sum(np.square(a)), abs=1e-9)


@pytest.mark.parametrize("direction", [-1.0, 1.0])
def test_ant_dir_is_ant_v5_with_a_signed_forward_reward(direction):
    env = make_family("ant_dir").make({"direction": direction})
    reference = gym.make("Ant-v5", include_cfrc_ext_in_observation=False).unwrapped
    steps = list(zip(_rollout(env, 5, 40), _rollout(reference, 5, 40)))
    assert len(steps) > 5
    for (a, obs, r, term, _, info), (_, ref_obs, ref_r, ref_term, _, ref) in steps:
        np.testing.assert_array_equal(obs, ref_obs)
        assert term == ref_term
        costs = 0.5 * np.sum(np.square(a)) - ref["reward_contact"]
        assert r == pytest.approx(direction * ref["x_velocity"] + ref["reward_survive"] - costs, abs=1e-9)
        if direction == 1.0:
            assert r == pytest.approx(ref_r, abs=1e-12)


def test_ant_goal_reward_is_minus_l1_distance_and_costs():
    env = make_family("ant_goal").make({"goal": [1.5, -2.0]})
    n = 0
    for a, _, r, _, _, info in _rollout(env, 2, 40):
        l1 = abs(info["x_position"] - 1.5) + abs(info["y_position"] + 2.0)
        contact = 5e-4 * np.sum(np.square(np.clip(env.unwrapped.data.cfrc_ext, -1, 1)))
        assert r == pytest.approx(-l1 - 0.5 * np.sum(np.square(a)) - contact, abs=1e-6)
        n += 1
    assert n > 5


def test_ant_goals_are_uniform_on_the_disk():
    family = make_family("ant_goal")
    goals = np.array([family.task(TaskDescriptor(1, "train", 0, i))["goal"] for i in range(4000)])
    radius = np.linalg.norm(goals, axis=1)
    assert radius.max() <= 3.0
    assert radius.mean() == pytest.approx(2.0, abs=0.05)  # E|g| = 2R/3 for area-uniform goals
    assert np.mean(radius < 1.5) == pytest.approx(0.25, abs=0.03)
    assert abs(goals.mean(0)).max() < 0.1


def test_navigation_clips_actions_and_rewards_minus_the_distance():
    env = make_family("navigation_2d").make({"goal": [0.3, -0.05]})
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0, 0])
    obs, r, term, trunc, _ = env.step(np.array([1.0, -0.05], np.float32))
    np.testing.assert_allclose(obs, [0.1, -0.05], atol=1e-7)
    assert r == pytest.approx(-0.2, abs=1e-6) and not term
    env.step(np.array([0.1, 0.0], np.float32))
    obs, r, term, _, _ = env.step(np.array([0.1, 0.0], np.float32))
    assert term and r == pytest.approx(0.0, abs=1e-6)
    steps = list(_rollout(make_family("navigation_2d").make({"goal": [5.0, 5.0]}), 0, 500))
    assert len(steps) == 100 and steps[-1][4]


POINT_ROBOT = {"low": -1.0, "high": 1.0, "horizon": 20, "start": "uniform", "early_end": False}  # oyster's point robot


def test_point_robot_starts_anywhere_in_the_square_and_never_ends_early():
    """The navigation family's oyster variant: the start is drawn from the reset seed, uniform
    in [-1, 1]^2; steps add the clipped action; the reward is minus the distance to the goal
    after the move; at the goal the episode goes on, and ends by truncation at step 20."""
    family = make_family("navigation_2d", **POINT_ROBOT)
    env = family.make({"goal": [0.3, -0.05]})
    starts = np.array([env.reset(seed=k)[0] for k in range(2000)])
    assert starts.dtype == np.float32 and np.abs(starts).max() <= 1.0
    np.testing.assert_allclose(starts.mean(0), [0, 0], atol=0.05)
    assert np.mean(np.abs(starts) > 0.5) == pytest.approx(0.5, abs=0.03)  # uniform per axis, not clustered
    first, _ = env.reset(seed=7)
    np.testing.assert_array_equal(first, env.reset(seed=7)[0])  # a pure function of the reset seed
    assert not np.array_equal(first, env.reset(seed=8)[0])

    position = env.reset(seed=7)[0].astype(np.float64)
    goal = np.array([0.3, -0.05])
    for t in range(20):
        action = np.clip(goal - position, -0.1, 0.1) if t < 19 else np.array([0.5, 0.0])  # the last one is clipped
        obs, r, term, trunc, _ = env.step(action.astype(np.float32))
        position = position + np.clip(action.astype(np.float32), -0.1, 0.1)
        np.testing.assert_allclose(obs, position, atol=1e-6)
        assert r == pytest.approx(-np.linalg.norm(position - goal), abs=1e-6)
        assert not term and trunc == (t == 19)
    goals = np.array([family.task(TaskDescriptor(0, "train", 0, i))["goal"] for i in range(2000)])
    assert goals.min() >= -1 and goals.max() <= 1 and np.mean(np.abs(goals) > 0.5) == pytest.approx(0.5, abs=0.03)
    with pytest.raises(EnvFamilyError, match="start"):
        make_family("navigation_2d", start="corner")


def test_bandit_pays_each_arm_with_its_probability():
    probs = np.array([0.1, 0.5, 0.9])
    env = make_family("bandit", arms=3).make({"probs": probs})
    env.reset(seed=0)
    means = []
    for arm in range(3):
        pulls = []
        for _ in range(3000):
            _, r, term, _, _ = env.step(arm)
            assert term
            pulls.append(r)
        means.append(np.mean(pulls))
    np.testing.assert_allclose(means, probs, atol=0.03)


def test_tabular_mdp_follows_its_transitions_and_reward_means():
    family = make_family("tabular_mdp")
    params = family.task(TaskDescriptor(0, "train", 0, 0))
    assert params["transitions"].shape == (10, 5, 10) and params["reward_means"].shape == (10, 5)
    np.testing.assert_allclose(params["transitions"].sum(-1), 1.0)
    env = family.make(params)
    counts, rewards = np.zeros(10), []
    for k in range(4000):
        obs, _ = env.reset(seed=k)
        assert obs.argmax() == 0 and obs.sum() == 1
        obs, r, term, trunc, _ = env.step(2)
        counts[obs.argmax()] += 1
        rewards.append(r)
    np.testing.assert_allclose(counts / 4000, params["transitions"][0, 2], atol=0.025)
    assert np.mean(rewards) == pytest.approx(params["reward_means"][0, 2], abs=0.05)
    assert len(list(_rollout(env, 0, 50))) == 10


def test_a_trial_plays_several_episodes_as_one():
    env = make_family("bandit", arms=4, trial_episodes=3).make({"probs": [0.0, 1.0, 0.0, 0.0]})
    assert isinstance(env, TrialEnv) and env.observation_space.shape == (1 + 4 + 2,)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, np.zeros(7))
    for k in range(3):
        obs, r, term, trunc, info = env.step(1)
        np.testing.assert_array_equal(obs, [0, 0, 1, 0, 0, 1, 1])  # obs, one-hot previous action, reward, done
        assert r == 1.0 and term == (k == 2) and not trunc and info["episode"] == k + 1

    nav = make_family("navigation_2d", horizon=5, trial_episodes=2).make({"goal": [5.0, 5.0]})
    nav.reset(seed=0)
    flags, positions = [], []
    for t in range(10):
        obs, r, term, _, _ = nav.step(np.array([0.1, 0.1], np.float32))
        flags.append(obs[-1])
        positions.append(obs[:2].copy())
        assert obs[4] == pytest.approx(r) and term == (t == 9)
    assert flags == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    np.testing.assert_allclose(positions[4], [0, 0])  # the inner env was reset after its episode
    np.testing.assert_allclose(positions[5], [0.1, 0.1], atol=1e-6)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_task_is_a_pure_function_of_its_descriptor(name):
    family, other = make_family(name), make_family(name)
    a = family.task(TaskDescriptor(5, "train", 2, 1))
    b = other.task(TaskDescriptor(5, "train", 2, 1))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    draws = [family.task(TaskDescriptor(5, split, 2, i)) for split in ("train", "test") for i in range(8)]
    distinct = {tuple(np.concatenate([np.ravel(d[k]) for k in sorted(d)])) for d in draws}
    assert len(distinct) == (2 if name in ("half_cheetah_dir", "ant_dir") else 16)


def test_half_cheetah_velocities_follow_the_configured_range():
    velocities = [make_family("half_cheetah_vel", low=1.0, high=1.5).task(TaskDescriptor(0, "train", 0, i))["velocity"] for i in range(500)]
    assert 1.0 <= min(velocities) and max(velocities) <= 1.5 and np.std(velocities) > 0.1


def test_a_reused_env_behaves_like_a_fresh_one():
    family = make_family("half_cheetah_vel")
    used = family.make({"velocity": 0.5})
    list(_rollout(used, 1, 20))
    reused = family.assign(used, {"velocity": 1.7})
    fresh = family.make({"velocity": 1.7})
    for (_, o1, r1, *_), (_, o2, r2, *_) in zip(_rollout(reused, 9, 30), _rollout(fresh, 9, 30)):
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2


@pytest.mark.parametrize(
    "name, options, params, message",
    [
        ("half_cheetah_vel", {}, {"velocity": "fast"}, "velocity must be a number"),
        ("half_cheetah_vel", {}, {"velocity": float("nan")}, "velocity must be finite"),
        ("half_cheetah_vel", {}, {"speed": 1.0}, "missing \\['velocity'\\], unexpected \\['speed'\\]"),
        ("half_cheetah_dir", {}, {"direction": 0.5}, "direction must be one of \\[-1.0, 1.0\\]"),
        ("ant_goal", {}, {"goal": [1.0, 2.0, 3.0]}, "goal must have shape \\(2,\\)"),
        ("bandit", {"arms": 2}, {"probs": [0.5, 1.5]}, "probs must lie in \\[0, 1\\]"),
        ("tabular_mdp", {"states": 2, "actions": 1}, {"transitions": [[[0.5, 0.6]], [[1, 0]]], "reward_means": [[0], [1]]}, "rows summing to 1"),
    ],
)
def test_bad_task_parameters_name_the_field(name, options, params, message):
    with pytest.raises(EnvFamilyError, match=message):
        make_family(name, **options).make(params)


def test_bad_family_names_and_options_are_clear():
    with pytest.raises(EnvFamilyError, match="unknown options \\['velocity'\\]"):
        make_family("half_cheetah_vel", velocity=2.0)
    with pytest.raises(EnvFamilyError, match="horizon must be an integer >= 1, got 0"):
        make_family("navigation_2d", horizon=0)
    with pytest.raises(EnvFamilyError, match="trial_episodes must be an integer >= 1"):
        make_family("bandit", trial_episodes=0)


def test_mujoco_warnings_are_python_warnings_without_blank_lines(capfd):
    """MuJoCo's own handler printed every warning with a blank line after it: `--quiet` meta-RL
    runs showed workers' logs full of empty lines. Now a Python warning. The trigger is an
    unstable state (NaN velocity), which every MuJoCo version reports through its handler."""
    import mujoco

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = make_family("half_cheetah_vel").make({"velocity": 1.0})
        env.reset(seed=0)
        model, data = env.unwrapped.model, env.unwrapped.data
        data.qvel[0] = np.nan
        mujoco.mj_step(model, data)
        env.close()
    out, err = capfd.readouterr()
    assert "\n\n" not in out + err and not (out + err).startswith("\n"), repr(out + err)
    assert any("MuJoCo: " in str(w.message) for w in caught), [str(w.message) for w in caught]
