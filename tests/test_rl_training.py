"""Meta-RL through the product's API: config -> rollout pool -> learner -> MLflow -> meta-test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaorch.algorithms.rl import Trajectories
from metaorch.algorithms.rl.rl2 import trial_episode_returns
from metaorch.orchestrator import evaluate, train
from metaorch.orchestrator.config import deep_merge, from_dict
from metaorch.orchestrator.mlflow_client import client

QUIET = {"at_end": False}


def rl_config(task: dict, algorithm: str, **sections):
    base = {
        "task": task,
        "algorithm": {"name": algorithm},
        "model": {"hidden": [16, 16]},
        "outer": {"meta_batch": 4, "iterations": 2},
        "workers": {"num_workers": 2, "num_cpus": 0.5, "chunk_size": 1},
        "eval": {"tasks": 4, "steps": [2], "episodes": 3},
        "checkpoint": {"every": 1},
        "rl": {
            "maml_trpo": {"episodes_per_task": 4},
            "ppo": {"epochs": 2, "minibatches": 2},
            "pearl": {
                "hidden": [16, 16], "encoder_hidden": [16], "train_tasks": 4, "tasks_per_iteration": 2,
                "updates_per_iteration": 3, "batch_size": 16, "context_size": 8,
            },
        },
    }  # fmt: skip
    return from_dict(deep_merge(base, sections), "(test)")


NAV = {"name": "navigation_2d", "options": {"horizon": 20}}


def test_maml_trpo_run_logs_curve_and_meta_test(ray_session, workdir):
    run = train(rl_config(NAV, "maml_trpo"), progress=False)
    assert run.iterations == 2
    assert list(run.test) == ["return_step_0", "return_step_1", "return_step_2", "gain_step_1", "gain_step_2"]
    assert all(np.isfinite(e.mean) and e.n == 4 for e in run.test.values())
    gain = run.test["return_step_2"].mean - run.test["return_step_0"].mean
    assert run.test["gain_step_2"].mean == pytest.approx(gain, abs=1e-6)
    c = client(run.tracking_uri)
    trained = c.get_run(run.run_id)
    assert {"train/return_pre", "train/return_post", "trpo/kl"} <= set(trained.data.metrics)
    m = trained.data.metrics
    assert 0 < m["time/sample_s"] < m["time/iteration_s"]  # the learner's step takes the rest
    assert trained.data.params["algorithm.name"] == "maml_trpo"
    nested = c.get_run(run.test_run_id)
    assert nested.data.tags["mlflow.parentRunId"] == run.run_id
    curve = c.get_metric_history(run.test_run_id, "test/return")
    assert [m.step for m in sorted(curve, key=lambda m: m.step)] == [0, 1, 2]
    assert "adaptation_curve.png" in [a.path for a in c.list_artifacts(run.test_run_id)]
    _assert_policy_served(run, obs_dim=2)


def _assert_policy_served(run, obs_dim: int) -> None:
    """The run's LoggedModel is its meta-policy: through the pyfunc, observations -> deterministic actions."""
    import mlflow.pyfunc
    from mlflow.artifacts import download_artifacts

    loaded = mlflow.pyfunc.load_model(download_artifacts(f"runs:/{run.run_id}/model", tracking_uri=run.tracking_uri, dst_path="served"))
    obs = np.random.default_rng(0).normal(size=(3, obs_dim)).astype(np.float32)
    model = loaded.unwrap_python_model()
    params = model.params if not hasattr(model.policy, "split") else torch.cat([model.policy.split(model.params)[0], torch.zeros(model.policy.config.latent_dim)])
    torch.testing.assert_close(model.params, run.meta_params)
    want = model.policy.act(params, torch.as_tensor(obs), None, deterministic=True)[0]
    torch.testing.assert_close(torch.as_tensor(loaded.predict({"observation": obs})), want)


def test_maml_trpo_does_not_depend_on_the_number_of_workers_or_a_resume(ray_session, workdir):
    """The runs serve both checks: 1 and 2 workers agree, and 1 iteration resumed to 2 equals 2 straight."""

    def run(iterations: int, resume: str | None = None, **workers):
        config = rl_config(NAV, "maml_trpo", outer={"iterations": iterations}, workers=workers, eval=QUIET)
        return train(config, resume=resume, progress=False)

    one, two = run(2, num_workers=1), run(2, num_workers=2)
    assert torch.equal(one.meta_params, two.meta_params)
    first = run(1)
    assert not torch.equal(one.meta_params, first.meta_params)
    resumed = run(2, resume=first.run_id)
    assert resumed.run_id == first.run_id and resumed.iterations == 2
    assert torch.equal(two.meta_params, resumed.meta_params)


@pytest.mark.parametrize("algorithm,task", [("rl2", {"name": "bandit", "trial_episodes": 10}), ("pearl", NAV)], ids=["rl2", "pearl"])
def test_resume_equals_an_uninterrupted_run(ray_session, workdir, algorithm, task):
    """RL²: parameters, Adam and minibatch order come back. PEARL: networks, optimisers, noise
    and (with ``checkpoint_buffers``) both replay buffers; without them the resumed run
    collects every training task afresh and so differs."""
    model = {"hidden": [16]} if algorithm == "rl2" else {}

    def run(iterations: int, resume: str | None = None, buffers: bool = True):
        rl = {"pearl": {"checkpoint_buffers": buffers}}
        config = rl_config(task, algorithm, model=model, outer={"iterations": iterations}, eval=QUIET, rl=rl)
        return train(config, resume=resume, progress=False)

    straight = run(3)
    resumed = run(3, resume=run(2).run_id)
    assert resumed.iterations == 3
    assert torch.equal(straight.meta_params, resumed.meta_params)
    if algorithm == "pearl":
        refilled = run(3, resume=run(2, buffers=False).run_id, buffers=False)
        assert refilled.iterations == 3 and not torch.equal(straight.meta_params, refilled.meta_params)


def test_rl2_meta_test_reports_every_episode_of_a_trial(ray_session, workdir):
    run = train(rl_config({"name": "bandit", "trial_episodes": 10}, "rl2", model={"hidden": [16]}), progress=False)
    assert [k for k in run.test][:11] == [f"return_episode_{k}" for k in range(1, 11)] + ["return_trial"]
    per_pull = sum(run.test[f"return_episode_{k}"].mean for k in range(1, 11))
    assert run.test["return_trial"].mean == pytest.approx(per_pull)


def test_pearl_meta_test_on_explicit_goals(ray_session, workdir):
    goals = [{"goal": [0.3, -0.2]}, {"goal": [-0.4, 0.4]}]
    run = train(rl_config(NAV, "pearl", eval={"task_params": goals}), progress=False)
    assert list(run.test)[:3] == ["return_episode_1", "return_episode_2", "return_episode_3"]
    assert all(e.n == 2 for e in run.test.values())
    _assert_policy_served(run, obs_dim=2)
    again = evaluate(run.run_id, tracking_uri=run.tracking_uri)  # the checkpoint alone is enough to meta-test again
    assert again.estimates["return_episode_1"].mean == pytest.approx(run.test["return_episode_1"].mean)
    assert again.run_id is not None and again.parent_run_id == run.run_id


def test_pearl_collects_oysters_schedule_on_the_point_robot():
    """oyster's schedule, in process (no Ray): the first iteration gives every training task its
    initial prior steps, then collects prior and extra posterior steps on ``tasks_per_iteration``
    of them; whole 20-step episodes of the point robot (no early end)."""
    from metaorch.orchestrator.rl_training import PEARLRunner

    point = {"name": "navigation_2d", "options": {"low": -1.0, "high": 1.0, "horizon": 20, "start": "uniform", "early_end": False}}
    schedule = {"num_initial_steps": 40, "num_steps_prior": 20, "num_extra_rl_steps_posterior": 30, "tasks_per_iteration": 2}
    config = rl_config(point, "pearl", workers={"num_workers": 1, "transport": "inprocess"}, rl={"pearl": schedule})
    runner = PEARLRunner(config)
    runner.start(runner.initial_params())
    pool = runner.make_pool(config, 1)
    try:
        metrics = runner.iteration(pool, 0)
    finally:
        pool.shutdown()
    rl = {i: len(runner.pearl.replay[i]) for i in range(4)}
    context = {i: len(runner.pearl.encoder_replay[i]) for i in range(4)}
    collected = [i for i in range(4) if rl[i] > 40]
    assert len(collected) == 2  # tasks_per_iteration of the 4
    for i in range(4):  # 2 initial episodes each; a collected task adds 1 prior and 2 posterior episodes
        assert rl[i] == (40 + 20 + 40 if i in collected else 40)
        assert context[i] == (20 if i in collected else 40)  # the prior episodes replace the context
    assert np.isfinite(metrics["train/return_prior"]) and metrics["train/return_prior"] < 0


def test_trial_episode_returns_split_at_the_done_flag():
    # 2 trials of 3 episodes; the last observation entry is the trial wrapper's done flag
    T = 6
    flags = np.array([[0, 0], [0, 1], [1, 0], [0, 0], [1, 1], [0, 0]], np.float32)  # episode starts after each flag
    rewards = np.arange(T * 2, dtype=np.float32).reshape(T, 2)
    mask = np.ones((T, 2), np.float32)
    mask[5, 1] = 0
    obs = np.concatenate([np.zeros((T, 2, 3), np.float32), flags[..., None]], -1)
    traj = Trajectories(obs, np.zeros((T, 2), np.int64), rewards, np.zeros((T, 2), np.float32), obs, np.zeros((T, 2), bool), mask)
    got = trial_episode_returns(traj, 3)
    np.testing.assert_allclose(got[0], [0 + 2, 4 + 6, 8 + 10])
    np.testing.assert_allclose(got[1], [1, 3 + 5 + 7, 9])


def test_bad_explicit_task_params_exit_before_training(empty_workdir):
    from metaorch.orchestrator.errors import UserError

    config = rl_config(NAV, "maml_trpo", eval={"task_params": [{"goal": [0.1, 0.2]}, {"goal": [0.1]}]})
    with pytest.raises(UserError, match=r"eval.task_params\[1\].*goal"):
        train(config, progress=False)
    assert sorted(empty_workdir.iterdir()) == []


def test_bad_family_option_names_the_field(empty_workdir):
    from metaorch.orchestrator.errors import UserError

    with pytest.raises(UserError, match=r"task.options.*arms"):
        train(rl_config({"name": "bandit", "options": {"arms": 1}, "trial_episodes": 5}, "rl2", model={"hidden": [8]}), progress=False)
    assert sorted(empty_workdir.iterdir()) == []
