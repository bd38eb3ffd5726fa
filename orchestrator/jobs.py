"""``metaorch submit``: metaorch as a Ray job, through Ray's job API (``job_api``).

The submitter creates the MLflow run before it submits and gives its id to the job
(``metaorch train --run-id``): it can print the run's URL at once, and never has to find
the run afterwards. A resubmission with ``--resume RUN_ID`` continues that run from its
newest checkpoint in the tracking store (the job's own files do not outlive it). Everything
that can be checked here (address, config, runtime environment, tracking URI) is checked
before anything is created or submitted.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from metaorch.orchestrator.config import Config, load_config, read_yaml_mapping
from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.job_api import STOP_WAIT_S, connect, follow, job_address
from metaorch.orchestrator.packaging import code_package
from metaorch.orchestrator.preflight import check_tracking_uri, redact, sqlite_path, tracking_uri_for
from metaorch.orchestrator.tracking_off import tracking_off

# Never uploaded: environments, tracking stores, checkpoints (a resumed job downloads its
# checkpoint from MLflow) and build litter. Merged with the runtime env's own excludes.
EXCLUDES = [
    ".git/", ".venv/", ".pytest_cache/", "**/__pycache__/", "*.egg-info/", "build/",
    "mlflow.db", "mlruns/", "mlartifacts/", "checkpoints/",
    # The source tree's package stub: in the job's working directory it would shadow the
    # complete package that travels in py_modules (see packaging.code_package).
    "/metaorch/",
]  # fmt: skip
ENV_VARS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PYTHONUNBUFFERED": "1",
    "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S),
}
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|(^|_)KEY$", re.IGNORECASE)
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


# -- checks that need no network ---------------------------------------------------------


def runtime_env(path: str | None) -> dict[str, Any]:
    """The runtime env of ``--runtime-env FILE`` (YAML), plus the working dir, excludes and env vars."""
    env = read_yaml_mapping(path, "--runtime-env") if path else {}
    where = f"--runtime-env {path}" if path else "runtime env"
    env.setdefault("working_dir", ".")
    if not isinstance(env["working_dir"], str):
        raise UserError(f"{where}: working_dir: expected a path or URI, got {env['working_dir']!r}")
    excludes = env.get("excludes") or []
    if not isinstance(excludes, list) or not all(isinstance(e, str) for e in excludes):
        raise UserError(f"{where}: excludes: expected a list of patterns, got {excludes!r}")
    env["excludes"] = list(dict.fromkeys([*excludes, *EXCLUDES]))
    env_vars = env.get("env_vars") or {}
    if not isinstance(env_vars, dict):
        raise UserError(f"{where}: env_vars: expected a mapping, got {type(env_vars).__name__}")
    for key, value in env_vars.items():
        if _SECRET_NAME.search(str(key)):
            raise UserError(
                f"{where}: env_vars.{key}: Ray stores runtime environments and shows them on the dashboard; "
                "give secrets to the nodes (their environment, ~/.mlflow/credentials), not to the job"
            )
        if not isinstance(value, (str, int, float, bool)):
            raise UserError(f"{where}: env_vars.{key}: expected a string, got {value!r}")
    env["env_vars"] = ENV_VARS | {str(k): str(v) for k, v in env_vars.items()}
    from ray.runtime_env import RuntimeEnv

    try:
        RuntimeEnv(**env)
    except Exception as exc:  # Ray's own validation, here rather than after the upload
        raise UserError(f"{where}: {exc}") from None
    return env


def _config_in(config_path: str, working_dir: str) -> str:
    """The config's path inside the uploaded working dir: where the job finds it."""
    if "://" in working_dir:  # a remote package: the path must already be relative to it
        return Path(config_path).as_posix()
    root = Path(working_dir).resolve()
    try:
        return Path(config_path).resolve().relative_to(root).as_posix()
    except ValueError:
        raise UserError(f"config {config_path}: outside the working directory {root} that is uploaded with the job") from None


def tracking_uri(given: str | None, config: Config) -> str:
    """The URI the job logs to, as ``metaorch train`` would choose it, without a password in it."""
    uri = tracking_uri_for(given, config.tracking.uri)
    if tracking_off(uri):  # submit creates the job's run before the job starts
        raise UserError("tracking URI none: metaorch submit creates the job's MLflow run; give it a tracking store")
    if redact(uri) != uri:
        raise UserError(
            f"tracking URI {redact(uri)}: holds a password, which Ray would store with the job and show on "
            "the dashboard; use the server's http(s) URI and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
        )
    return uri


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    if uri.startswith(("http://", "https://")):
        from metaorch.orchestrator.mlflow_client import TRAINING_VIEW

        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"
    from metaorch.orchestrator.mlflow_client import ui_command

    return f"run {run_id} in {uri} (open with: {ui_command(uri)})"


# -- commands ------------------------------------------------------------------------------
def submit(
    config_path: str,
    *,
    address: str | None,
    overrides: list[str],
    runtime_env_file: str | None = None,
    tracking: str | None = None,
    resume: str | None = None,
    wait: bool = True,
    num_gpus: float | None = None,
    resources: str | None = None,
    search: list[str] | None = None,  # metaorch tune's arguments (--space FILE ...): the job searches, in the run made here
) -> int:
    address = job_address(address)
    config = load_config(config_path, overrides)
    env = runtime_env(runtime_env_file)
    relative = _config_in(config_path, env["working_dir"])
    uri = tracking_uri(tracking, config)
    entry_resources = _resources(resources)
    if search is not None:  # SPACE.yaml travels in the working dir, like the config
        if resume is not None:
            raise UserError(f"--resume {resume}: continues a training run; --space starts a new search")
        search = [search[0], _config_in(search[1], env["working_dir"]), *search[2:]]
    if resume is not None and not _RUN_ID.match(resume):
        raise UserError(f"--resume {resume!r}: expected an MLflow run id (a local checkpoint file is not uploaded with the job)")
    jobs = connect(address)
    check_tracking_uri(uri)
    if sqlite_path(uri) is not None or "://" not in uri or uri.startswith("file:"):
        print(f"note: the job logs to {uri}, a path: the job must run on this machine (use an http(s) tracking server otherwise)", file=sys.stderr)

    from metaorch.orchestrator.lineage import git_tags
    from metaorch.orchestrator.mlflow_client import client, experiment_for

    # Ray uploads the package during submit_job; the local copy is not needed after it.
    with tempfile.TemporaryDirectory(prefix="metaorch-code-") as build:
        env["py_modules"] = [*env.get("py_modules", []), str(code_package(build))]
        mlflow = client(uri)
        submission_id = f"metaorch-{uuid.uuid4().hex[:12]}"
        # the job's copy of the code has no .git: the run's commit is the one submitted from
        tags = {"metaorch.submission_id": submission_id, "metaorch.job_api": address} | git_tags()
        if resume is not None:
            run_id, experiment_id = resume, _resumable(mlflow, resume, uri)
            for k, v in tags.items():
                mlflow.set_tag(run_id, k, v)
        else:
            experiment_id = experiment_for(mlflow, config.tracking.experiment)
            run_id = mlflow.create_run(experiment_id, run_name=config.tracking.run_name, tags=tags).info.run_id
        url = run_url(uri, experiment_id, run_id)

        command = ["python", "-m", "metaorch", "tune" if search else "train", relative, *(search or []), "--tracking-uri", uri, *(("--resume", run_id) if resume else ("--run-id", run_id))]
        command += [a for o in overrides for a in ("--set", o)]
        try:
            jobs.submit_job(
                entrypoint=shlex.join(command),
                submission_id=submission_id,
                runtime_env=env,
                metadata={"metaorch_run_id": run_id, "mlflow_run": url},
                entrypoint_num_gpus=num_gpus,
                entrypoint_resources=entry_resources,
            )
        except Exception as exc:
            if resume is None:
                mlflow.delete_run(run_id)  # nothing half-made: the run was only for this job
            raise UserError(f"submitting to {address} failed: {exc}") from None

    print(f"submitted job {submission_id} to {address}")
    print(f"  dashboard:  {address}/#/jobs/{submission_id}")
    print(f"  MLflow run: {url}")
    if not wait:
        print(f"  follow: metaorch jobs logs {submission_id} --address {address} --follow")
        return 0
    try:
        status = follow(jobs, submission_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on. Stop it with: metaorch jobs stop {submission_id} --address {address}")
        return 130
    return _report(jobs, mlflow, submission_id, run_id, status)


def _resources(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in value.values()):
        raise UserError(f"--entrypoint-resources {text!r}: expected a JSON object of amounts, e.g. '{{\"learner\": 1}}'")
    return value


def _resumable(mlflow, run_id: str, uri: str) -> str:
    """The run's experiment id, if the run exists and has a checkpoint in the store to continue from."""
    try:
        run = mlflow.get_run(run_id)
    except Exception:
        raise UserError(f"--resume {run_id}: no such run in tracking store {uri}") from None
    if not any(a.path.endswith(".pt") for a in mlflow.list_artifacts(run_id, "checkpoints")):
        raise UserError(f"--resume {run_id}: the run has no checkpoint in {uri} to continue from")
    return run.info.experiment_id


def _report(jobs, mlflow, submission_id: str, run_id: str, status: str) -> int:
    """The job's outcome; a run its killed driver left RUNNING is marked as ended."""
    from metaorch.orchestrator.mlflow_client import end_if_running

    if status == "SUCCEEDED":
        print(f"job {submission_id} SUCCEEDED")
        return 0
    message = jobs.get_job_info(submission_id).message or ""
    print(f"job {submission_id} {status}: {redact(message).strip()}")
    try:
        end_if_running(mlflow, run_id, "KILLED" if status == "STOPPED" else "FAILED")
    except Exception:
        pass  # the tracking server went away too; the run stays as the job left it
    return 1
