"""``metaorch submit`` and ``metaorch jobs`` against a real Ray head and a real MLflow server.

Both are the session's (tests/conftest.py: ``ray_head``, ``mlflow_service``): ``ray start --head``
with its job API on 127.0.0.1 and ``mlflow server`` on 127.0.0.1. Jobs upload this checkout
(the repository root is the working directory) and train ``configs/sinusoid_maml.yaml`` shrunk
with ``--set``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metaorch.orchestrator.job_api import wait_terminal
from metaorch.orchestrator import cli
from conftest import user_pids

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = "configs/sinusoid_maml.yaml"
JOB_S = 300.0
TINY = [
    "outer.iterations=20", "outer.meta_batch=4", "model.hidden=[8]",
    "workers.num_workers=1", "workers.chunk_size=2",
    "eval.tasks=10", "eval.steps=[1]", "eval.val_every=10", "eval.val_tasks=4", "eval.plot_tasks=0",
    "checkpoint.every=10", "tracking.experiment=submit-e2e",
]  # fmt: skip


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture
def services(ray_head, mlflow_service):
    """(job API URL, MLflow URL, environment for CLI subprocesses): the session's head and server."""
    return ray_head.job_api, mlflow_service.url, ray_head.env


def _run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    code = cli.run(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _steps(c, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in c.get_metric_history(run_id, key))


def test_submit_with_a_space_runs_the_search_as_a_job(services):
    """``metaorch submit --space``: the job is ``metaorch tune`` on the cluster, in the run the
    submitter made; its trials (the shipped example space: a grid of 2) nest under that run,
    which ends with the best config. About a minute: Tune starts inside the job."""
    from mlflow.tracking import MlflowClient

    job_api, tracking, env = services
    proc = subprocess.run(
        [str(BIN / "metaorch"), "submit", CONFIG, "--address", job_api, "--tracking-uri", tracking,
         "--runtime-env", "cluster/runtime_env.yaml", "--space", "configs/spaces/sinusoid_maml.yaml",
         "--samples", "1", "--scheduler", "fifo", *_sets(TINY)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=JOB_S,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    run_id = re.search(r"MLflow run: \S+/runs/([0-9a-f]{32})", out).group(1)
    c = MlflowClient(tracking)
    parent = c.get_run(run_id)
    assert parent.info.status == "FINISHED", out
    trials = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    lrs = sorted(float(t.data.params["algorithm.inner_lr"]) for t in trials if "metaorch.tune.trial" in t.data.tags)
    assert lrs == [0.001, 0.01], [t.data.tags for t in trials]
    assert "best_config.yaml" in [a.path for a in c.list_artifacts(run_id)]
    assert parent.data.tags["metaorch.tune.best_run_id"] in {t.info.run_id for t in trials}


def test_resume_passes_over_a_local_checkpoint_mlflow_never_got_and_logs_each_step_once(ray_session, workdir):
    """A driver killed after saving ``ckpt_30`` but before uploading it, with steps 21-30 in MLflow.

    Resuming must start from ``ckpt_20`` (the newest in MLflow: every step before it is there), not
    the newer local file, recompute 21-30 without logging them again, and go on to 40.
    """
    from mlflow.tracking import MlflowClient

    from conftest import tiny_config
    from metaorch.orchestrator.trainer import train

    store = f"sqlite:///{workdir / 'mlflow.db'}"
    quiet = {"at_end": False, "plot_tasks": 0, "val_every": 10}
    first = train(tiny_config(outer={"iterations": 30}, eval=quiet), tracking_uri=store, progress=False)
    c = MlflowClient(store)
    uploaded = Path(c.get_run(first.run_id).info.artifact_uri.removeprefix("file://")) / "checkpoints"
    for name in ("ckpt_00000030.pt", "latest.pt"):
        (uploaded / name).unlink()  # the uploads the kill cut off
    assert (workdir / "checkpoints" / first.run_id / "ckpt_00000030.pt").is_file()

    resumed = train(tiny_config(outer={"iterations": 40}, eval=quiet), resume=first.run_id, tracking_uri=store, progress=False)
    assert resumed.run_id == first.run_id and resumed.iterations == 40
    assert c.get_run(first.run_id).data.tags["metaorch.resumed_at_iteration"] == "20"
    for key in ("train/loss_post", "train/loss_pre", "outer/lr", "time/iteration_s"):
        assert _steps(c, first.run_id, key) == list(range(1, 41)), key
    assert _steps(c, first.run_id, "val/loss") == [10, 20, 30, 40]


def test_submit_runs_the_job_and_the_run_reads_back_from_mlflow(services, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobSubmissionClient

    job_api, tracking, env = services
    proc = subprocess.run(
        [str(BIN / "metaorch"), "submit", CONFIG, "--address", job_api, "--tracking-uri", tracking,
         "--runtime-env", "cluster/runtime_env.yaml", *_sets(TINY)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=JOB_S,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    submission_id = re.search(r"submitted job (\S+) to ", out).group(1)
    assert f"dashboard:  {job_api}/#/jobs/{submission_id}" in out
    url = re.search(r"MLflow run: (\S+)", out).group(1)
    assert url.startswith(f"{tracking}/#/experiments/")
    assert url.endswith("?workflowType=machine_learning")  # opens in the UI's model-training view
    run_id = re.search(r"/runs/([0-9a-f]{32})", url).group(1)
    assert "meta-test MSE after 1 inner step(s)" in out  # the job's own output, followed
    assert proc.stdout.rstrip().endswith(f"job {submission_id} SUCCEEDED")
    assert str(JobSubmissionClient(job_api).get_job_status(submission_id).value) == "SUCCEEDED"

    c = MlflowClient(tracking)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == c.get_experiment_by_name("submit-e2e").experiment_id
    assert run.data.params["outer.iterations"] == "20"  # the --set overrides reached the job
    assert run.data.params["model.hidden"] == "[8]"
    assert run.data.tags["metaorch.submission_id"] == submission_id
    assert _steps(c, run_id, "train/loss_post") == list(range(1, 21))
    assert _steps(c, run_id, "val/loss") == [10, 20]
    assert {a.path for a in c.list_artifacts(run_id, "checkpoints")} >= {"checkpoints/ckpt_00000010.pt", "checkpoints/ckpt_00000020.pt"}
    (child,) = c.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    assert "test/loss_step_1" in child.data.metrics

    # the jobs commands on it
    monkeypatch.chdir(ROOT)
    code, text = _run_cli(capsys, ["jobs", "list", "--address", job_api])
    assert code == 0 and re.search(rf"{submission_id}\s+SUCCEEDED\s+run {run_id}", text), text
    code, text = _run_cli(capsys, ["jobs", "status", submission_id, "--address", job_api])
    assert code == 0 and f"job {submission_id}: SUCCEEDED" in text and url in text, text
    code, text = _run_cli(capsys, ["jobs", "logs", submission_id, "--address", job_api])
    assert code == 0 and "meta-test MSE after 1 inner step(s)" in text
    code, text = _run_cli(capsys, ["jobs", "stop", submission_id, "--address", job_api])
    assert code == 0 and "had already ended: SUCCEEDED" in text
    with pytest.raises(cli.UserError, match="no such job"):
        cli.run(["jobs", "status", "metaorch-nosuchjob", "--address", job_api])


def _drivers(run_id: str) -> list[int]:
    """The job's driver: ``metaorch train ... --run-id RUN_ID`` (and the shell Ray started it in)."""
    return user_pids(lambda cmd: " train " in cmd and f"--run-id {run_id}" in cmd)


def _checkpointed(c, run_id: str) -> int:
    names = [a.path for a in c.list_artifacts(run_id, "checkpoints") if re.search(r"ckpt_\d+\.pt$", a.path)]
    return max((int(re.search(r"ckpt_(\d+)", n).group(1)) for n in names), default=0)


def test_driver_killed_then_submit_resume_continues_the_run_with_every_step_once(services, capsys, monkeypatch):
    """SIGKILL the driver once steps past its newest uploaded checkpoint are in MLflow; the
    submitter following the job reports it FAILED and ends the run the driver left RUNNING;
    resubmitting with --resume continues that run."""
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobSubmissionClient

    job_api, tracking, env = services
    monkeypatch.chdir(ROOT)
    n = 300
    job = [*TINY, f"outer.iterations={n}", "checkpoint.every=25", "eval.val_every=100", "eval.at_end=false", "tracking.experiment=submit-resume"]
    submitter = subprocess.Popen(
        [str(BIN / "metaorch"), "submit", CONFIG, "--address", job_api, "--tracking-uri", tracking, *_sets(job)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        head = ""
        while not (found := re.search(r"MLflow run: \S+/runs/([0-9a-f]{32})", head)):
            line = submitter.stdout.readline()
            assert line, head
            head += line
        submission_id, run_id = re.search(r"submitted job (\S+) to ", head).group(1), found.group(1)
        jobs, c = JobSubmissionClient(job_api), MlflowClient(tracking)

        # Freeze the driver to read a stable state; kill it only when MLflow holds steps beyond
        # its newest checkpoint there (those the resumed job recomputes and must not log again).
        killed_at = None
        deadline = time.monotonic() + JOB_S
        while killed_at is None:
            assert time.monotonic() < deadline, "no checkpoint with later steps in MLflow"
            assert str(jobs.get_job_status(submission_id).value) in ("PENDING", "RUNNING"), jobs.get_job_logs(submission_id)
            time.sleep(0.3)
            drivers = _drivers(run_id)
            if not drivers or not _checkpointed(c, run_id):
                continue
            for pid in drivers:
                _signal(pid, signal.SIGSTOP)
            time.sleep(1.0)  # requests already sent land
            checkpoint, steps = _checkpointed(c, run_id), _steps(c, run_id, "train/loss_post")
            if steps and steps[-1] > checkpoint:
                for pid in drivers:
                    _signal(pid, signal.SIGKILL)
                killed_at = (checkpoint, steps)
            else:
                for pid in drivers:
                    _signal(pid, signal.SIGCONT)
        out, _ = submitter.communicate(timeout=120)
    finally:
        if submitter.poll() is None:
            submitter.kill()
    checkpoint, before = killed_at
    assert checkpoint < n and before[-1] < n
    assert submitter.returncode == 1 and f"job {submission_id} FAILED" in out, out
    assert wait_terminal(jobs, submission_id, timeout_s=60) == "FAILED"
    assert c.get_run(run_id).info.status == "FAILED"  # the driver died; the submitter ended its run
    assert before == list(range(1, before[-1] + 1))

    code, out = _run_cli(capsys, ["submit", CONFIG, "--address", job_api, "--tracking-uri", tracking, "--resume", run_id, *_sets(job)])
    assert code == 0, out
    assert f"/runs/{run_id}" in out and "SUCCEEDED" in out

    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["metaorch.resumed_at_iteration"] == str(checkpoint)
    for key in ("train/loss_post", "train/loss_pre", "outer/lr", "time/iteration_s"):
        assert _steps(c, run_id, key) == list(range(1, n + 1)), key  # none lost, none twice
    assert _steps(c, run_id, "val/loss") == [100, 200, 300]
    assert _checkpointed(c, run_id) == n


def test_a_job_imports_the_submitters_code_not_the_clusters(services, tmp_path, monkeypatch):
    """The package `submit` ships in py_modules is the one the job imports, ahead of any
    metaorch installed on the cluster (here: this checkout's editable install)."""
    from ray.job_submission import JobSubmissionClient

    from metaorch.orchestrator.jobs import runtime_env
    from metaorch.orchestrator.packaging import code_package

    job_api, _, _ = services
    monkeypatch.chdir(ROOT)
    package = code_package(tmp_path)
    assert (package / "algorithms" / "maml.py").read_bytes() == (ROOT / "algorithms" / "maml.py").read_bytes()
    assert not (package.parent / "algorithms").exists()  # the layers travel inside metaorch/
    env = runtime_env(None) | {"py_modules": [str(package)]}
    probe = "import metaorch.algorithms as a, metaorch.orchestrator.cli; print('CODE-AT', a.__file__)"
    jobs = JobSubmissionClient(job_api)
    job = jobs.submit_job(entrypoint=f"python -c {probe!r}", runtime_env=env)
    assert wait_terminal(jobs, job, timeout_s=JOB_S) == "SUCCEEDED", jobs.get_job_logs(job)
    where = Path(re.search(r"CODE-AT (\S+)", jobs.get_job_logs(job)).group(1))
    assert ROOT not in where.parents and "runtime_resources" in where.parts, where
