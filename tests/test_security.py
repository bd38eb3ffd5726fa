"""What an untrusted file or a secret in a URI can and cannot do.

- A checkpoint or config from an untrusted source cannot run code: each crafted file below
  first proves it runs code when loaded the unsafe way, then must be refused (exit 2) by
  metaorch with no code run.
- A password in a tracking URI reaches no MLflow param, artifact, checkpoint, error or log line,
  and ``metaorch submit`` refuses to put one where Ray stores and shows it: a password in the
  tracking URI (flag, environment or config) or a secret-looking name in ``env_vars``.
- ``metaorch eval`` never unpickles: the run's pickled MLflow model is replaced by a hostile
  one, and evaluating the run still runs no code.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_config
from metaorch.orchestrator import cli

SECRET = "S3cretPw"


class _Opens:
    """Unpickling this calls ``open(path, "w")``: creates ``path``, the sign that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return exc.value.code


def _write_hostile_pickle(path: Path, marker: Path) -> None:
    torch.save({"format_version": 1, "iteration": _Opens(marker)}, path)
    torch.load(path, weights_only=False).get("iteration").close()  # the unsafe way runs it...
    assert marker.exists()
    marker.unlink()  # ...so its absence below means metaorch did not


def test_pickled_checkpoint_is_refused_and_runs_no_code(workdir, capsys, no_ray_start):
    marker = workdir / "pwned"
    _write_hostile_pickle(workdir / "evil.pt", marker)
    (workdir / "job.yaml").write_text("outer: {iterations: 2}\n")

    assert _exit_code(["eval", "evil.pt"]) == 2
    _assert_one_line_naming(capsys.readouterr().err, "evil.pt")
    assert _exit_code(["train", "job.yaml", "--resume", "evil.pt"]) == 2
    _assert_one_line_naming(capsys.readouterr().err, "evil.pt")
    assert not marker.exists()
    assert not (workdir / "checkpoints").exists()


def _assert_one_line_naming(err: str, name: str) -> None:
    """One error line naming the file, without torch's advice to load it with ``weights_only=False``."""
    assert len(err.strip().splitlines()) == 1, err
    assert f"{name} is not a readable metaorch checkpoint" in err and "weights_only" not in err, err


def test_a_checkpoint_of_other_objects_gets_one_line(workdir, capsys, no_ray_start):
    """Not code, just not weights (a numpy array): refused in one line, no traceback, no advice."""
    import numpy as np

    torch.save({"format_version": 1, "meta_params": np.zeros(3)}, workdir / "arrays.pt")
    assert _exit_code(["eval", "arrays.pt"]) == 2
    _assert_one_line_naming(capsys.readouterr().err, "arrays.pt")


def test_yaml_with_python_tags_is_refused_and_runs_no_code(workdir, capsys, no_ray_start):
    marker = workdir / "pwned"
    tag = f"!!python/object/apply:builtins.open [{str(marker)!r}, w]"
    yaml.unsafe_load(tag).close()  # the unsafe loader runs it
    assert marker.exists()
    marker.unlink()

    (workdir / "evil.yaml").write_text(f"seed: {tag}\n")
    (workdir / "ok.yaml").write_text("seed: 1\n")
    assert _exit_code(["config", "show", "evil.yaml"]) == 2
    assert "evil.yaml is not valid YAML" in capsys.readouterr().err
    assert _exit_code(["config", "show", "ok.yaml", "--set", f"seed={tag}"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    # a runtime env file is read the same way, before anything is contacted (port 1: nothing there)
    assert _exit_code(["submit", "ok.yaml", "--address", "http://127.0.0.1:1", "--runtime-env", "evil.yaml"]) == 2
    assert "--runtime-env evil.yaml is not valid YAML" in capsys.readouterr().err
    assert not marker.exists()


def test_password_in_tracking_uri_reaches_no_param_artifact_checkpoint_or_message(ray_session, workdir, capsys):
    from mlflow.tracking import MlflowClient

    from metaorch.orchestrator.trainer import train

    secret_uri = f"postgresql://meta:{SECRET}@127.0.0.1:1/mlflow"
    config = tiny_config(outer={"iterations": 2}, eval={"at_end": False, "plot_tasks": 0, "val_every": 2}, tracking={"uri": secret_uri})
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    result = train(config, tracking_uri=store, progress=False)
    assert config.tracking.uri == secret_uri  # the driver itself still has it

    c = MlflowClient(store)
    assert c.get_run(result.run_id).data.params["tracking.uri"] == "postgresql://meta:***@127.0.0.1:1/mlflow"
    logged_config = Path(c.download_artifacts(result.run_id, "config.yaml", str(workdir)))
    assert "meta:***@" in logged_config.read_text()
    written = [logged_config, *workdir.glob("checkpoints/*/*.pt"), *workdir.glob("mlruns/**/*.pt")]
    assert len(written) >= 3
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    assert "meta:***@" in torch.load(result.checkpoint, weights_only=True)["config_yaml"]

    # error lines and log lines
    (workdir / "job.yaml").write_text("outer: {iterations: 2}\n")
    assert _exit_code(["train", "job.yaml", "--tracking-uri", secret_uri]) == 2
    err = capsys.readouterr().err
    assert "postgresql://meta:***@127.0.0.1:1/mlflow" in err and SECRET not in err
    assert _exit_code(["config", "show", "--set", f"tracking.uri={secret_uri}"]) == 0
    out = capsys.readouterr().out
    assert "meta:***@" in out and SECRET not in out
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "not logged to %s: %s", (secret_uri, "gone"), None)
    assert cli._Redact().filter(record)
    assert record.getMessage() == "not logged to postgresql://meta:***@127.0.0.1:1/mlflow: gone"


def test_the_logged_model_holds_no_pickle_and_loading_it_runs_no_code(ray_session, workdir):
    """The MLflow model is code from metaorch, a config and a tensor file read with weights_only:
    a hostile pickle put in place of the weights is refused by ``mlflow.pyfunc.load_model``
    without running; evaluation reads the checkpoint, not the model."""
    import mlflow.pyfunc
    from mlflow.artifacts import download_artifacts

    from metaorch.orchestrator.trainer import evaluate, train

    store = f"sqlite:///{workdir / 'mlflow.db'}"
    config = tiny_config(outer={"iterations": 2}, eval={"at_end": False, "plot_tasks": 0, "val_every": 2})
    run = train(config, tracking_uri=store, progress=False)
    model_dir = Path(download_artifacts(f"runs:/{run.run_id}/model", tracking_uri=store, dst_path=str(workdir / "model")))
    flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and not list(model_dir.rglob("*.pkl"))
    weights = model_dir / flavor["artifacts"]["weights"]["path"]
    assert isinstance(torch.load(weights, weights_only=True), torch.Tensor)
    marker = workdir / "pwned"
    _write_hostile_pickle(weights, marker)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        mlflow.pyfunc.load_model(str(model_dir))
    assert not marker.exists()

    result = evaluate(run.run_id, tasks=4, steps=[1], tracking_uri=store)
    assert result.estimates[1].n == 4
    assert not marker.exists()


# -- metaorch submit: Ray stores the entrypoint and the runtime env and shows them -------------
@pytest.fixture
def submitter(empty_workdir, monkeypatch, no_ray_start):
    """A job dir with ``ok.yaml``; reaching for the job API or starting Ray fails the test."""
    from metaorch.orchestrator import jobs

    def contacted(address: str):
        pytest.fail(f"the job API {address} was contacted before the refusal")

    monkeypatch.setattr(jobs, "connect", contacted)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (empty_workdir / "ok.yaml").write_text("outer: {iterations: 2}\n")
    return empty_workdir


@pytest.mark.parametrize("via", ["flag", "environment", "config"])
def test_submit_refuses_a_password_in_the_tracking_uri(submitter, capsys, monkeypatch, via):
    secret_uri = f"postgresql://meta:{SECRET}@db.example:5432/mlflow"
    argv = ["submit", "ok.yaml", "--address", "http://127.0.0.1:1"]
    if via == "flag":
        argv += ["--tracking-uri", secret_uri]
    elif via == "environment":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_uri)
    else:
        argv += ["--set", f"tracking.uri={secret_uri}"]
    assert _exit_code(argv) == 2
    out, err = capsys.readouterr()
    assert "tracking URI postgresql://meta:***@db.example:5432/mlflow: holds a password" in err, err
    assert SECRET not in out + err
    assert sorted(p.name for p in submitter.iterdir()) == ["ok.yaml"]  # no store, no run


@pytest.mark.parametrize(
    "name", ["DB_PASSWORD", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS", "SSH_PRIVATE_KEY_FILE", "API_KEY", "mlflow_tracking_password"]
)
def test_submit_refuses_secret_looking_env_vars(submitter, capsys, name):
    (submitter / "env.yaml").write_text(yaml.safe_dump({"env_vars": {"OMP_NUM_THREADS": "1", name: SECRET}}))
    assert _exit_code(["submit", "ok.yaml", "--address", "http://127.0.0.1:1", "--runtime-env", "env.yaml"]) == 2
    out, err = capsys.readouterr()
    assert f"--runtime-env env.yaml: env_vars.{name}: Ray stores runtime environments" in err, err
    assert SECRET not in out + err


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "KEYBOARD_LAYOUT", "MONKEY", "PYTHONHASHSEED"])
def test_ordinary_env_vars_go_with_the_job(tmp_path, name):
    from metaorch.orchestrator.jobs import runtime_env

    (tmp_path / "env.yaml").write_text(yaml.safe_dump({"env_vars": {name: "1"}}))
    assert runtime_env(str(tmp_path / "env.yaml"))["env_vars"][name] == "1"
