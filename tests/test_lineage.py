"""Lineage: a run's source tags, requirements.txt and dataset inputs, in a real MLflow store.

One tiny sinusoid training run into the default sqlite store and one into the session's
``mlflow server``; Omniglot's and a meta-RL family's dataset records are logged to real runs
without training (their content is what differs, not how it travels).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import json

import git
import pytest
from conftest import OMNIGLOT_SMALL, omniglot_root, tiny_config

from metaorch.orchestrator.config import from_dict
from metaorch.orchestrator.lineage import CODE_ROOT, git_tags, log_lineage
from metaorch.orchestrator.mlflow_client import client
from metaorch.orchestrator.tracking import Tracker
from metaorch.orchestrator.tracking_off import NullTracker
from metaorch.orchestrator.trainer import train


def _inputs(uri: str, run_id: str) -> list[tuple[object, dict[str, str]]]:
    run = client(uri).get_run(run_id)
    return [(d.dataset, {t.key: t.value for t in d.tags}) for d in run.inputs.dataset_inputs]


@pytest.fixture(scope="module", params=["sqlite", "server"])
def trained(request, ray_session, tmp_path_factory):
    """A 3-iteration run, its worker in the driver (lineage does not depend on the pool)."""
    root = tmp_path_factory.mktemp(f"lineage-{request.param}")
    uri = f"sqlite:///{root / 'mlflow.db'}" if request.param == "sqlite" else request.getfixturevalue("mlflow_service").url
    config = tiny_config(
        outer={"iterations": 3, "meta_batch": 4},
        workers={"num_workers": 1, "transport": "inprocess", "chunk_size": 4},
        eval={"at_end": False, "plot_tasks": 0},
        checkpoint={"dir": str(root / "checkpoints")},
    )
    repo = git.Repo(CODE_ROOT, search_parent_directories=True)
    before = repo.head.commit.hexsha
    with contextlib.chdir(root):  # a sqlite store's artifacts go to ./mlruns
        result = train(config, tracking_uri=uri, progress=False)
    # other work may commit meanwhile: the run's commit is HEAD at some moment of the run
    heads = {before, *repo.git.rev_list(f"{before}..HEAD").split()}
    return uri, client(uri).get_run(result.run_id), heads


def test_source_tags_name_the_commit_branch_and_entry_point(trained):
    _, run, heads = trained
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] in heads
    assert tags["mlflow.source.git.branch"] == git.Repo(CODE_ROOT, search_parent_directories=True).active_branch.name
    assert tags["mlflow.source.git.dirty"] in ("true", "false")  # what it says: test_git_tags_of_a_checkout
    assert tags["mlflow.source.name"] == "metaorch train" and tags["mlflow.project.entryPoint"] == "train"


def test_git_tags_of_a_checkout(tmp_path):
    assert git_tags(tmp_path) == {}  # not a checkout (a job's working dir): no tags rather than wrong ones
    repo = git.Repo.init(tmp_path, initial_branch="exp")
    (tmp_path / "a.py").write_text("x = 1\n")
    repo.index.add(["a.py"])
    commit = repo.index.commit("one", author=git.Actor("t", "t@t"), committer=git.Actor("t", "t@t"))
    (tmp_path / "sub").mkdir()
    assert git_tags(tmp_path / "sub") == {
        "mlflow.source.git.commit": commit.hexsha, "mlflow.source.git.dirty": "false", "mlflow.source.git.branch": "exp",
    }  # fmt: skip
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_tags(tmp_path)["mlflow.source.git.dirty"] == "true"


def test_requirements_are_the_installed_distributions(trained, tmp_path):
    uri, run, _ = trained
    lines = open(client(uri).download_artifacts(run.info.run_id, "requirements.txt", str(tmp_path))).read().splitlines()
    for name in ("mlflow", "ray", "torch", "metaorch"):
        assert f"{name}=={md.version(name)}" in lines
    assert len(lines) == len({d.metadata["Name"] for d in md.distributions()})


def test_the_sinusoid_family_is_a_dataset_input(trained):
    uri, run, _ = trained
    [(dataset, tags)] = _inputs(uri, run.info.run_id)
    assert dataset.name == "sinusoid" and dataset.source_type == "code" and tags["mlflow.data.context"] == "training"
    profile = json.loads(dataset.profile)
    assert profile["family"] == "sinusoid" and profile["options"]["shots"] == 10 and profile["options"]["queries"] == 10


def _log(tmp_path, config) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with contextlib.chdir(tmp_path):  # a sqlite store's artifacts go to ./mlruns
        tracker = Tracker.start(uri, "lineage")
        log_lineage(tracker, config, "train")
        tracker.close()
    return uri, tracker.run_id


def test_omniglot_records_its_archives_sha256_and_split(tmp_path):
    root = omniglot_root()
    config = from_dict({"task": {"name": "omniglot", "shots": 1, "queries": 5}, "algorithm": {"name": "protonet"}, "data": {"root": str(root)}, "eval": {"queries": 5}})
    uri, run_id = _log(tmp_path, config)
    [(dataset, _)] = _inputs(uri, run_id)
    assert dataset.name == "omniglot" and json.loads(dataset.source)["uri"] == str(root)
    profile = json.loads(dataset.profile)
    expected = {f"{n}.zip": "sha256:" + hashlib.sha256((root / f"{n}.zip").read_bytes()).hexdigest() for n in OMNIGLOT_SMALL}
    assert profile["archives"] == expected and profile["split"] == "auto" and profile["set"] == "small"
    assert profile["options"]["ways"] == 5


def test_an_environment_family_records_its_options_and_versions(tmp_path):
    config = from_dict({"task": {"name": "half_cheetah_vel", "options": {"high": 2.5}}, "algorithm": {"name": "maml_trpo"}, "model": {"hidden": [64, 64]}})
    uri, run_id = _log(tmp_path, config)
    [(dataset, _)] = _inputs(uri, run_id)
    profile = json.loads(dataset.profile)
    assert profile["family"] == "half_cheetah_vel" and profile["options"]["high"] == 2.5 and "low" in profile["options"]
    assert profile["versions"]["gymnasium"] == md.version("gymnasium") and profile["versions"]["mujoco"] == md.version("mujoco")


def test_tracking_off_logs_no_lineage(tmp_path):
    tracker = NullTracker.start("none", "x", spill_root=tmp_path)
    log_lineage(tracker, tiny_config(), "train")  # nothing to send to, nothing raised
    assert not any(tmp_path.iterdir())
