"""``metaorch tune``: Ray Tune trials that are metaorch training runs, on the session's real local Ray.

One search (module fixture, through the CLI) of three tiny sinusoid trials run one at a time,
in grid order: a good outer learning rate first, then two that barely move. ASHA (grace
period one report) compares each trial at its first validation with those that got there
before: the poor ones fall below the good one's figure and are stopped there, every time.
"""

from __future__ import annotations

import contextlib

import yaml
import pytest

from metaorch.orchestrator import cli
from metaorch.orchestrator.mlflow_client import client
from metaorch.orchestrator.tune import STOPPED_TAG

ITERATIONS, VAL_EVERY = 4, 2
CONFIG = {
    "outer": {"iterations": ITERATIONS, "meta_batch": 8, "lr": 0.01},
    "workers": {"num_workers": 1, "num_cpus": 0.5, "chunk_size": 4},
    "eval": {"at_end": False, "val_every": VAL_EVERY, "val_tasks": 10, "plot_tasks": 0},
    "checkpoint": {"every": 100},
}
SPACE = {"outer.lr": {"grid": [0.01, 1.0e-5, 1.0e-5]}}


@pytest.fixture(scope="module")
def search(ray_session, tmp_path_factory):
    """About 30 s on 2 idle CPUs (three trials, each a trial actor, a worker actor and 4 iterations)."""
    root = tmp_path_factory.mktemp("tune")
    (root / "job.yaml").write_text(yaml.safe_dump(CONFIG | {"checkpoint": {"every": 100, "dir": str(root / "checkpoints")}}))
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    groups_before = set(ray_session.util.placement_group_table())
    with contextlib.chdir(root):  # a sqlite store's artifacts go to ./mlruns
        code = cli.run(["tune", str(root / "job.yaml"), "--space", str(root / "space.yaml"), "--max-concurrent", "1", "--tracking-uri", uri, "--quiet"])
    assert code == 0
    new_groups = [g for gid, g in ray_session.util.placement_group_table().items() if gid not in groups_before]
    c = client(uri)
    parent = next(r for r in c.search_runs([c.get_experiment_by_name("metaorch").experiment_id]) if r.data.tags.get("metaorch.tune") == "parent")
    children = c.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return c, parent, children, new_groups


def test_asha_stops_the_poor_trials_at_their_first_validation(search):
    c, parent, children, _ = search
    assert len(children) == 3
    by_lr = sorted(children, key=lambda r: float(r.data.params["outer.lr"]), reverse=True)
    good, *poor = by_lr
    assert [len(c.get_metric_history(good.info.run_id, "val/loss"))] == [ITERATIONS // VAL_EVERY]
    assert good.info.status == "FINISHED" and STOPPED_TAG not in good.data.tags
    for run in poor:
        assert len(c.get_metric_history(run.info.run_id, "val/loss")) == 1  # stopped after the first report
        assert run.data.tags[STOPPED_TAG] == "true" and run.info.status == "KILLED"
        assert run.data.metrics["val/loss"] > good.data.metrics["val/loss"]
    assert parent.data.tags["metaorch.tune.stopped_early"] == "2"


def test_the_parent_holds_the_best_config_and_figures(search, tmp_path):
    c, parent, children, _ = search
    good = max(children, key=lambda r: float(r.data.params["outer.lr"]))
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tune"
    assert parent.data.tags["metaorch.tune.best_run_id"] == good.info.run_id
    best = yaml.safe_load(open(c.download_artifacts(parent.info.run_id, "best_config.yaml", str(tmp_path))))
    assert best["outer"]["lr"] == 0.01 and best["outer"]["iterations"] == ITERATIONS
    assert parent.data.metrics["val/loss"] == pytest.approx(good.data.metrics["val/loss"])
    assert parent.data.params["tune.metric"] == "val/loss" and parent.data.params["tune.scheduler"] == "asha"
    assert parent.data.tags["mlflow.source.name"] == "metaorch tune" and "mlflow.source.git.commit" in parent.data.tags


def test_each_trial_places_its_workers_in_its_own_bundles(search):
    """Every placement group made during the search is a trial's (its driver's bundle, then its
    worker's; trials reuse a finished trial's actor and group): the pool made none of its own."""
    *_, groups = search
    assert groups
    for g in groups:
        assert [b for b in g["bundles"].values()] == [{"CPU": 1.0}, {"CPU": 0.5}]


@pytest.mark.parametrize(
    "space, named",
    [
        ({"algorithm.inner_lr": {"choice": [0.01, 0]}}, "algorithm.inner_lr: {'choice': [0.01, 0]}: 0 is not a valid value"),
        ({"algorithm.inner_rate": {"uniform": [0.1, 0.2]}}, "algorithm.inner_rate: no such config field"),
        ({"outer.lr": {"loguniform": [0, 0.1]}}, "outer.lr: {'loguniform': [0, 0.1]}: loguniform needs low > 0"),
        ({"outer.meta_batch": {"randint": [8, 4]}}, "outer.meta_batch: {'randint': [8, 4]}: expected [low, high] with low < high"),
        ({"outer.lr": {"normal": [0, 1]}}, "outer.lr: {'normal': [0, 1]}: expected one of"),
        ({"outer.lr": 0.1}, "outer.lr: 0.1: expected one of"),
    ],
)
def test_a_bad_space_is_one_line_naming_the_key_exit_2(space, named, tmp_path, no_ray_start, capsys):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(CONFIG))
    with pytest.raises(SystemExit) as exc:
        cli.main(["tune", str(tmp_path / "job.yaml"), "--space", str(tmp_path / "space.yaml"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert not (tmp_path / "m.db").exists()


def test_submit_checks_the_space_before_it_contacts_the_cluster(tmp_path, no_ray_start, capsys):
    """``metaorch submit --space`` runs ``metaorch tune`` as the job; a bad space never gets that far."""
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"algorithm.inner_lr": {"choice": [0.01, 0]}}))
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(CONFIG))
    with pytest.raises(SystemExit) as exc:
        cli.main(["submit", str(tmp_path / "job.yaml"), "--space", str(tmp_path / "space.yaml"), "--address", "http://127.0.0.1:9"])
    assert exc.value.code == 2
    assert "algorithm.inner_lr: {'choice': [0.01, 0]}: 0 is not a valid value" in capsys.readouterr().err


def test_a_trial_that_fails_before_it_trains_ends_its_run_failed(ray_session, tmp_path, monkeypatch):
    """A trial whose data is missing fails in ``train``'s checks, before the run is taken over:
    its nested run is FAILED (not left RUNNING in the MLflow UI), and so is the search's."""
    from metaorch.orchestrator.config import from_dict
    from metaorch.orchestrator.tune import tune

    config = from_dict(CONFIG | {"task": {"name": "omniglot", "ways": 2, "shots": 1, "queries": 1},
                                 "data": {"root": str(tmp_path), "cache_dir": str(tmp_path / "cache")}, "eval": CONFIG["eval"] | {"queries": 5},
                                 "checkpoint": {"every": 100, "dir": str(tmp_path / "checkpoints")}}, "(test)")  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # a sqlite store's artifacts go to ./mlruns
    with pytest.raises(RuntimeError, match="no trial reported val/accuracy"):
        tune(config, {"data.root": {"grid": [str(tmp_path / "missing")]}}, scheduler="fifo", tracking_uri=uri, progress=False)
    c = client(uri)
    runs = c.search_runs([c.get_experiment_by_name("metaorch").experiment_id])
    assert sorted((r.data.tags.get("metaorch.tune", "trial"), r.info.status) for r in runs) == [("parent", "FAILED"), ("trial", "FAILED")]
