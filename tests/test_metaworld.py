"""Meta-World (ML1 / ML10 / ML45): the family, success, the meta-test protocol against
metaworld's own ``metalearning_evaluation``, and short runs of each algorithm through the product.

Episodes are shortened with the family's ``max_path_length`` option (the benchmark's 500
steps would take minutes); metaworld's own vector environments get the same limit.
"""

from __future__ import annotations

import warnings
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from metaorch.algorithms.rl import Trajectories, adapt
from metaorch.orchestrator import evaluate, train
from metaorch.orchestrator.components import build_policy, build_rl
from metaorch.orchestrator.config import deep_merge, from_dict
from metaorch.orchestrator.success import by_class, meta_test_estimates, training_metrics, trial_episode_success
from metaorch.orchestrator.mlflow_client import client
from metaorch.tasks.base import TaskDescriptor, descriptors
from metaorch.tasks.rl import make_family
from metaorch.tasks.rl.metaworld import MetaWorld, load_benchmark
from metaorch.workers import Resources
from metaorch.workers.rollout import MIN_ROWS, RolloutPool, episode_streams

H = 40  # steps per episode in these tests


def _strict_check(env: gym.Env) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=r".*A Box observation space (minimum|maximum) value is -?infinity")
        check_env(env, skip_render_check=True)


@pytest.fixture(scope="module")
def ml1():
    return make_family(MetaWorld, benchmark="ML1", env_name="reach-v3", max_path_length=H)


@pytest.mark.parametrize("benchmark", ["ML1", "ML10", "ML45"])
def test_every_benchmark_builds_and_its_envs_pass_the_strict_checker(benchmark):
    """ML45: metaworld builds it in ~75 s on the loaded 2-core machine (it resets each of 50
    classes 50 times to draw goals); once per process, so only this test pays it."""
    family = make_family(MetaWorld, benchmark=benchmark, max_path_length=H)
    bench = load_benchmark(benchmark, family.env_name, 0)
    assert family.classes["train"] == tuple(bench.train_classes) and family.classes["test"] == tuple(bench.test_classes)
    train = family.task(TaskDescriptor(0, "train", 0, 3))
    test = family.task(TaskDescriptor(0, "test", 0, 1))
    assert train["env_name"] in bench.train_classes and test["env_name"] in bench.test_classes
    if benchmark != "ML1":
        assert set(bench.train_classes).isdisjoint(bench.test_classes)
    for params in (train, test):
        env = family.make(params)
        _strict_check(env)
        assert env.observation_space == family.observation_space and env.action_space == family.action_space
        obs, _ = env.reset(seed=0)
        assert obs.shape == (39,) and np.all(obs[36:] == 0)  # the goal is hidden
        steps = 0
        while True:
            *_, term, trunc, info = env.step(env.action_space.sample())
            steps += 1
            if term or trunc:
                break
        assert steps == H and "success" in info


def test_descriptors_pick_classes_round_robin_and_goals_without_repeats(ml1):
    ml10 = make_family(MetaWorld, benchmark="ML10")
    batch = [ml10.task(d) for d in descriptors(3, "train", 7, 20)]
    assert [t["env_name"] for t in batch] == list(ml10.classes["train"]) * 2
    assert all(t["split"] == "train" for t in batch) and {t["split"] for t in map(ml10.task, descriptors(3, "test", 0, 5))} == {"test"}
    goals = [ml1.task(d)["task"] for d in descriptors(3, "train", 7, 50)]
    assert sorted(goals) == list(range(50))  # a meta-batch uses every goal once before repeating
    assert goals == [make_family(MetaWorld, max_path_length=H).task(d)["task"] for d in descriptors(3, "train", 7, 50)]
    assert goals != [ml1.task(d)["task"] for d in descriptors(3, "train", 8, 50)]


def _episode(env, seed: int, actions: np.ndarray):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((obs, r, info["success"]))
        if term or trunc:
            break
    return out


def test_a_task_gives_identical_episodes_on_a_fresh_and_a_reused_env(ml1):
    params = ml1.task(TaskDescriptor(0, "test", 0, 2))
    actions = np.random.default_rng(0).uniform(-1, 1, (H, 4)).astype(np.float32)
    fresh = _episode(ml1.make(params), 5, actions)
    used = ml1.make(ml1.task(TaskDescriptor(0, "train", 0, 0)))
    _episode(used, 1, actions[::-1])
    reused = _episode(ml1.assign(used, params), 5, actions)
    assert len(fresh) == H + 1
    np.testing.assert_array_equal(fresh[0], reused[0])
    for (o1, r1, s1), (o2, r2, s2) in zip(fresh[1:], reused[1:]):
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2 and s1 == s2


def test_a_worker_builds_each_class_once():
    ml10 = make_family(MetaWorld, benchmark="ML10", max_path_length=H)
    env = ml10.make(ml10.task(TaskDescriptor(0, "train", 0, 0)))
    trial = make_family(MetaWorld, benchmark="ML10", max_path_length=H, trial_episodes=2)
    inner = trial.make(trial.task(TaskDescriptor(0, "test", 0, 0)))
    seen = {id(env.sawyer)}
    for d in descriptors(0, "train", 1, 30):
        env = ml10.assign(env, ml10.task(d))
        seen.add(id(env.sawyer))
        assert env.sawyer.task_name == type(env.sawyer).__name__ and env.env_name == ml10.task(d)["env_name"]
    assert len(seen) == 10  # one metaworld environment per class, switched by set_task
    for d in descriptors(0, "test", 1, 5):  # RL² trials switch class through the trial env
        inner = trial.assign(inner, trial.task(d))
        assert inner.inner.env_name == trial.task(d)["env_name"]


def _traj(success: np.ndarray, rewards: np.ndarray | None = None, mask: np.ndarray | None = None, obs: np.ndarray | None = None) -> Trajectories:
    T, E = success.shape
    rewards = np.ones((T, E), np.float32) if rewards is None else rewards
    mask = np.ones((T, E), np.float32) if mask is None else mask
    obs = np.zeros((T, E, 1), np.float32) if obs is None else obs
    z = np.zeros((T, E), np.float32)
    return Trajectories(obs, z, rewards, z, obs, z.astype(bool), mask, success.astype(np.float32))


def test_success_is_any_step_and_aggregates_per_class():
    success = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], np.float32)  # [T, E]
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 0]], np.float32)  # episode 2 ended at t=1
    traj = _traj(success, mask=mask)
    np.testing.assert_array_equal(traj.successes(), [1, 0, 0])  # a success after the episode's end counts nothing
    np.testing.assert_array_equal(traj.returns_to_success(), [2, 4, 2])  # episode 0 ends at its success
    assert np.all(_traj(np.zeros((3, 2))).successes() == 0)

    labels = ["a", "a", "b"]
    per_task = [np.array([1.0, 1.0]), np.array([0.0, 1.0]), np.array([0.0, 0.0])]
    m = training_metrics({"post": per_task}, labels)
    assert m == {"train/success_post": 0.5, "train_class/success_post/a": 0.75, "train_class/success_post/b": 0.0}
    assert by_class([None, "x"], [1.0, 2.0]) == {"x": [2.0]}

    est = meta_test_estimates(np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0]], float), np.ones((5, 3)), ["a", "a", "a", "b", "b"])
    assert est["success/a"].mean == pytest.approx(4 / 9) and est["success/b"].mean == 0.5
    assert est["success"].mean == pytest.approx((4 / 9 + 0.5) / 2)  # the mean over classes, as metaworld's
    assert est["success/a"].n == 3 and est["success"].n == 5 and est["success/a"].ci95 > 0
    assert "success_pre" not in est

    before = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], float)
    paired = meta_test_estimates(np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0]], float), np.ones((5, 3)), ["a", "a", "a", "b", "b"], before)
    assert paired["success_pre"].mean == pytest.approx((1 / 9 + 0) / 2)  # over classes, as the adapted side
    assert paired["gain_success"].mean == pytest.approx((1 + 0 + 0 + 1 + 0) / 5) and paired["gain_success"].n == 5  # per task


def test_rl2_success_splits_the_trial_at_the_done_flag():
    flags = np.zeros((6, 1, 1), np.float32)
    flags[2, 0, 0] = flags[4, 0, 0] = 1.0  # episodes: steps 0-1, 2-3, 4-5
    success = np.array([[0], [0], [0], [1], [0], [0]], np.float32)
    np.testing.assert_array_equal(trial_episode_success(_traj(success, obs=flags), 3), [[0, 1, 0]])


# -- the oracle: metaworld's metalearning_evaluation in one process --------------------------


class OurMAMLAgent:
    """metaworld's MetaLearningAgent protocol over our MAML-TRPO policy, acting as our rollout
    worker does: float32 observations, forwards of at least MIN_ROWS rows, each episode's
    action noise from ``episode_streams`` of the test task's descriptor, the same inner step."""

    def __init__(self, policy, params, config, envs, descriptors, benchmark, horizon):
        self.policy, self.theta0, self.c, self.envs, self.horizon = policy, params, config, envs, horizon
        self.descriptors, self.round, self.chosen = iter(descriptors), -1, []
        self.tasks: dict[str, list[bytes]] = {}
        for t in benchmark.test_tasks:
            self.tasks.setdefault(t.env_name, []).append(t.data)

    def init(self) -> None:
        selector = _selector(self.envs.envs[0])  # the task metaworld chose for this round
        task = selector.tasks[selector.current_task_idx]
        self.chosen.append({"split": "test", "env_name": task.env_name, "task": self.tasks[task.env_name].index(task.data)})
        self.descriptor, self.theta, self.call = next(self.descriptors), self.theta0, 0
        self._start_round()

    def _start_round(self) -> None:
        self.episode, self.t, self.rows = 0, 0, {k: [] for k in ("obs", "act", "rew", "logp", "next", "term")}
        self.noise = episode_streams(self.descriptor, self.call, 0)[1].standard_normal((self.horizon, 4))
        self.episodes: list[dict] = []

    def _act(self, obs, deterministic, noise):
        o = torch.zeros((MIN_ROWS, obs.shape[-1]))
        o[0] = torch.as_tensor(np.asarray(obs, np.float32).reshape(-1))
        nz = torch.zeros((MIN_ROWS, 4))
        nz[0] = torch.as_tensor(noise, dtype=torch.float32)
        with torch.inference_mode():
            a, logp, _ = self.policy.act(self.theta, o, None, deterministic, noise=nz)
        return a[:1].numpy(), logp[:1].numpy()

    def adapt_action(self, obs):
        a, logp = self._act(obs, False, self.noise[self.t])
        self._last = (np.asarray(obs, np.float32).reshape(1, -1), a, logp)  # the worker keeps the unclipped action
        return np.clip(a, -1, 1), {}

    def step(self, ts) -> None:
        obs, act, logp = self._last
        for k, v in zip(("obs", "act", "rew", "logp", "term"), (obs, act, np.float32(ts.reward[0]), logp, bool(ts.terminated[0]))):
            self.rows[k].append(v)
        self.t += 1
        if ts.terminated[0] or ts.truncated[0]:
            self.episodes.append({k: v for k, v in self.rows.items()})
            self.rows = {k: [] for k in self.rows}
            self.episode, self.t = self.episode + 1, 0
            self.noise = episode_streams(self.descriptor, self.call, self.episode)[1].standard_normal((self.horizon, 4))

    def adapt(self) -> None:
        E, T = len(self.episodes), self.horizon
        obs = np.zeros((T, E, 39), np.float32)
        act, rew, logp, mask = np.zeros((T, E, 4), np.float32), np.zeros((T, E), np.float32), np.zeros((T, E), np.float32), np.zeros((T, E), np.float32)
        term = np.zeros((T, E), bool)
        for e, ep in enumerate(self.episodes):
            n = len(ep["rew"])
            obs[:n, e], act[:n, e] = np.concatenate(ep["obs"]), np.concatenate(ep["act"])
            rew[:n, e], logp[:n, e], term[:n, e], mask[:n, e] = ep["rew"], np.concatenate(ep["logp"]), ep["term"], 1.0
        traj = Trajectories(obs, act, rew, logp, obs, term, mask)  # next observations: the inner step does not read them
        c = self.c
        self.theta = adapt(
            self.policy, self.theta, traj, c.inner_lr, first_order=True, steps=c.inner_steps,
            gamma=c.gamma, gae_lambda=c.gae_lambda, normalize_advantages=c.normalize_advantages,
        )  # fmt: skip
        self.call += 1
        self._start_round()

    def eval_action(self, obs):
        return np.clip(self._act(obs, True, np.zeros(4))[0], -1, 1)

    def reset(self, env_mask) -> None:
        pass


def _selector(env):
    from metaworld.wrappers import PseudoRandomTaskSelectWrapper

    while not isinstance(env, PseudoRandomTaskSelectWrapper):
        env = env.env
    return env


def test_our_distributed_meta_test_matches_metaworlds_metalearning_evaluation(ray_session, workdir):
    """Both sides build ML1 reach-v3 (seed 4, ~4 s each) and run 3 test tasks."""
    import metaworld  # noqa: F401  (registers the Meta-World/* environments)
    from metaworld.evaluation import metalearning_evaluation

    from metaorch.orchestrator.rl_training import MAMLTRPORunner

    seed, rounds = 4, 3
    config = mw_config("maml_trpo", seed=seed, options={"seed": seed}, eval={"tasks": rounds, "steps": [1], "episodes": 3})
    family = make_family(MetaWorld, seed=seed, max_path_length=H)
    policy = build_policy(config, family)
    theta = policy.init_params(11).float()
    envs = gym.make_vec("Meta-World/ML1-test", env_name="reach-v3", seed=seed, meta_batch_size=1, max_episode_steps=H, vector_strategy="sync")
    agent = OurMAMLAgent(policy, theta, config.rl.maml_trpo, envs, descriptors(seed, "test", 0, rounds), load_benchmark("ML1", "reach-v3", seed), H)
    theirs = metalearning_evaluation(agent, envs, num_evals=rounds, adaptation_steps=1, adaptation_episodes=config.rl.maml_trpo.episodes_per_task, evaluation_episodes=3)

    config = from_dict(deep_merge(config.model_dump(mode="json"), {"eval": {"task_params": agent.chosen}}), "(test)")
    pool = RolloutPool(partial(build_rl, config), 2, Resources(num_cpus=0.5))
    try:
        ours = MAMLTRPORunner.meta_test(config, theta, pool)
    finally:
        pool.shutdown()
    assert ours["success"].mean == pytest.approx(theirs[0]) and ours["success/reach-v3"].mean == pytest.approx(theirs[2]["reach-v3"])
    assert ours["return_evaluation"].mean == pytest.approx(theirs[1], rel=1e-5)


# -- two iterations of each algorithm through the product -------------------------------------


def mw_config(algorithm: str, seed: int = 0, options: dict | None = None, **sections):
    base = {
        "seed": seed,
        "task": {"name": "metaworld", "options": {"benchmark": "ML1", "env_name": "reach-v3", "max_path_length": H} | (options or {})},
        "algorithm": {"name": algorithm},
        "model": {"hidden": [16] if algorithm == "rl2" else [16, 16]},
        "outer": {"meta_batch": 2, "iterations": 2},
        "workers": {"num_workers": 2, "num_cpus": 0.5, "chunk_size": 1},
        "eval": {"tasks": 2, "steps": [1], "episodes": 3},
        "checkpoint": {"every": 1},
        "rl": {
            "maml_trpo": {"episodes_per_task": 3},
            "ppo": {"epochs": 1, "minibatches": 1},
            "pearl": {
                "hidden": [16], "encoder_hidden": [16], "train_tasks": 2, "tasks_per_iteration": 1,
                "updates_per_iteration": 2, "batch_size": 8, "context_size": 8, "latent_dim": 7, "kl_lambda": 0.01,
            },
        },
    }  # fmt: skip
    if algorithm == "rl2":
        base["task"]["trial_episodes"] = 4
    return from_dict(deep_merge(base, sections), "(test)")


TRAIN_POINTS = {"maml_trpo": ("pre", "post"), "rl2": ("first", "last"), "pearl": ("prior", "posterior")}


@pytest.mark.parametrize("algorithm", ["maml_trpo", "rl2", "pearl"])
def test_two_iterations_log_success_and_pass_metaorch_eval(ray_session, workdir, algorithm):
    """In-process worker: the benchmark, built once in this process, serves all three runs
    (Ray actors would each build it again); the oracle test covers distributed workers."""
    run = train(mw_config(algorithm, workers={"num_workers": 1, "transport": "inprocess"}), progress=False)
    assert run.iterations == 2
    c = client(run.tracking_uri)
    metrics = c.get_run(run.run_id).data.metrics
    for point in TRAIN_POINTS[algorithm]:
        assert 0.0 <= metrics[f"train/success_{point}"] <= 1.0
        assert metrics[f"train_class/success_{point}/reach-v3"] == metrics[f"train/success_{point}"]
    assert 0.0 <= run.test["success"].mean <= 1.0 and run.test["success/reach-v3"].n == 2
    assert ("success_pre" in run.test) == (algorithm == "maml_trpo")  # the unadapted policy, evaluated the same way
    tested = c.get_run(run.test_run_id)
    assert {"test/success", "test/success_ci95", "test/success/reach-v3", "test/return_evaluation"} <= set(tested.data.metrics)
    assert {"adaptation_curve.png", "success_by_class.png"} <= {a.path for a in c.list_artifacts(run.test_run_id)}
    again = evaluate(run.checkpoint, tasks=2)
    assert again.estimates["success"].mean == run.test["success"].mean  # the same held-out tasks and episodes
