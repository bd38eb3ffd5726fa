"""The model registry against a real ``mlflow server``: ``tracking.register_as`` and ``metaorch eval
--register`` make versions tagged with their meta-test figures, and the alias ``champion`` moves
only to a version whose headline figure beats the holder's. Also: the run's LoggedModel and the
experiment's kind (the model-training view of the MLflow 3 UI)."""

from __future__ import annotations

import uuid

import pytest
from conftest import tiny_config

from metaorch.orchestrator import cli
from metaorch.orchestrator.evaluation import Estimate
from metaorch.orchestrator.model_registry import ALIAS, headline, register


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return exc.value.code


@pytest.fixture(scope="module")
def registered(ray_session, mlflow_service, tmp_path_factory):
    """One tiny sinusoid run with ``tracking.register_as``, in an experiment of its own."""
    from metaorch.orchestrator.trainer import train

    name, experiment = f"sine-{uuid.uuid4().hex[:8]}", f"registry-{uuid.uuid4().hex[:8]}"
    config = tiny_config(
        outer={"iterations": 2}, eval={"tasks": 10, "plot_tasks": 0}, tracking={"register_as": name, "experiment": experiment},
        checkpoint={"dir": str(tmp_path_factory.mktemp("registry") / "checkpoints")},
    )  # fmt: skip
    return name, config, train(config, tracking_uri=mlflow_service.url, progress=False)


def test_a_run_logs_its_model_linked_to_its_meta_test_in_a_model_training_experiment(registered, mlflow_service):
    from mlflow import MlflowClient

    _, config, run = registered
    c = MlflowClient(mlflow_service.url)
    experiment = c.get_experiment_by_name(config.tracking.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (output,) = c.get_run(run.run_id).outputs.model_outputs  # the run's Models
    model = c.get_logged_model(output.model_id)
    assert (model.name, model.source_run_id, model.experiment_id, model.status.value) == ("model", run.run_id, experiment.experiment_id, "READY")
    linked = {(m.key, m.run_id): m.value for m in model.metrics}
    assert linked[("test/loss_step_5", run.test_run_id)] == pytest.approx(run.test[5].mean)
    assert c.get_run(run.test_run_id).inputs.model_inputs[0].model_id == model.model_id


def test_register_as_makes_a_version_with_the_figures_and_the_first_is_champion(registered, mlflow_service, monkeypatch, tmp_path):
    import mlflow
    import numpy as np

    name, _, run = registered
    c = mlflow.MlflowClient(mlflow_service.url)
    (v1,) = c.search_model_versions(f"name = '{name}'")
    assert v1.run_id == run.run_id and v1.tags["metaorch.headline"] == "test/loss_step_5"
    assert float(v1.tags["metaorch.headline_value"]) == run.test[5].mean
    assert v1.tags["test/loss_step_1"] == f"{run.test[1].mean:.6g}" and v1.tags["test/loss_step_5_ci95"] == f"{run.test[5].ci95:.6g}"
    assert c.get_registered_model(name).aliases == {ALIAS: v1.version}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_service.url)
    path = mlflow.artifacts.download_artifacts(f"models:/{name}@{ALIAS}", dst_path=str(tmp_path))
    x = np.linspace(-5, 5, 4, dtype=np.float32)[:, None]
    out = mlflow.pyfunc.load_model(path).predict({"support_x": x, "support_y": np.sin(x), "query_x": x})
    assert out.shape == (4, 1) and np.isfinite(out).all()


def test_eval_register_adds_a_version_and_the_alias_follows_only_a_better_headline(registered, mlflow_service, capsys):
    from mlflow import MlflowClient

    name, config, run = registered
    c = MlflowClient(mlflow_service.url)
    before = c.get_registered_model(name).aliases[ALIAS]
    held = float(c.get_model_version(name, before).tags["metaorch.headline_value"])
    assert _exit_code(["eval", run.run_id, "--tracking-uri", mlflow_service.url, "--tasks", "12", "--register", name]) == 0
    out = capsys.readouterr().out
    (v2,) = [v for v in c.search_model_versions(f"name = '{name}'") if v.version not in ("1",)]
    value = float(v2.tags["metaorch.headline_value"])
    assert value != held  # 12 tasks, not 10: other figures of the same model
    want = v2.version if value < held else before
    assert c.get_registered_model(name).aliases == {ALIAS: want}
    assert f"registered model {name} version {v2.version}" in out and f"alias {ALIAS} -> version {want}" in out

    # the rule itself, on the same logged model: a worse headline leaves the alias, a better one takes it
    now = float(c.get_model_version(name, want).tags["metaorch.headline_value"])
    model_id = c.get_run(run.run_id).outputs.model_outputs[0].model_id
    for factor, moves in ((2.0, False), (0.5, True)):
        estimates = {1: Estimate(1.0, 0.1, 10), 5: Estimate(now * factor, 0.1, 10)}
        reg = register(c, name, model_id, run.run_id, config, estimates)
        assert c.get_registered_model(name).aliases[ALIAS] == (reg.version if moves else want)


def test_eval_register_refuses_a_bad_name_before_anything(registered, mlflow_service, capsys):
    from mlflow import MlflowClient

    name, _, run = registered
    versions = len(MlflowClient(mlflow_service.url).search_model_versions(f"name = '{name}'"))
    assert _exit_code(["eval", run.run_id, "--tracking-uri", mlflow_service.url, "--register", "a/b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--register 'a/b'" in err[0], err
    assert len(MlflowClient(mlflow_service.url).search_model_versions(f"name = '{name}'")) == versions


@pytest.mark.parametrize(
    "task, algorithm, estimates, want",
    [
        ({"name": "omniglot", "ways": 5, "shots": 1, "queries": 5}, "maml",
         {"acc_5way_1shot_step_1": 0.3, "acc_5way_1shot_step_5": 0.6, "acc_20way_1shot_step_5": 0.2}, ("test/acc_5way_1shot_step_5", True)),
        ({"name": "omniglot", "ways": 5, "shots": 1, "queries": 5}, "protonet", {"acc_5way_1shot": 0.9}, ("test/acc_5way_1shot", True)),
        ({"name": "bandit", "trial_episodes": 3}, "rl2", {"return_episode_1": 0.1, "return_episode_3": 0.5, "return_trial": 1.0}, ("test/return_trial", True)),
        ({"name": "navigation_2d"}, "maml_trpo", {"return_step_0": -9.0, "return_step_1": -7.0, "gain_step_1": 2.0}, ("test/return_step_1", True)),
    ],
)  # fmt: skip
def test_the_headline_is_the_trained_setting_after_the_most_adaptation(task, algorithm, estimates, want):
    from metaorch.orchestrator.config import from_dict

    config = from_dict({"task": task, "algorithm": {"name": algorithm}, "data": {"root": "."}, "eval": {"steps": [1, 5], "queries": 5}} | ({"model": {"hidden": [16]}} if algorithm == "rl2" else {}), "(test)")
    got = headline(config, {k: Estimate(v, 0.0, 10) for k, v in estimates.items()})
    assert (got.key, got.higher_is_better) == want
