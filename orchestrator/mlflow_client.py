"""The driver's MLflow client: impatient retries, experiments made for the training view, and
what to type to open a store. Everything that talks to MLflow gets its client here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# Defaults for an impatient client; a user's own environment settings win.
_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a bar per model save/load in every run's output
}


def configure_client_env() -> None:
    for key, value in _CLIENT_ENV.items():
        os.environ.setdefault(key, value)


def client(uri: str):
    configure_client_env()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# The MLflow 3 UI opens an experiment in the view its kind names: "custom_model_development" is
# "Machine learning" (runs, models, metrics), not "genai_development" (traces). The tag is read
# as "mlflow.experimentKind" by the UI (enum ExperimentKind in mlflow/server/js) and set the same
# way by mlflow/demo/generators/traces.py.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# MLflow 3.17's UI follows a per-browser switch (GenAI by default) rather than that tag wherever
# its workflow switch is on (seen in Chromium: a tagged experiment still opened on GenAI's
# overview); a link can set the switch, so the links metaorch prints carry it.
TRAINING_VIEW = "workflowType=machine_learning"


def experiment_for(c: Any, name: str) -> str:
    """The id of experiment ``name``; created, tagged for the model-training view, if it does not exist."""
    exp = c.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else c.create_experiment(name, tags=EXPERIMENT_TAGS)


def end_if_running(c: Any, run_id: str, status: str) -> None:
    """End a run that a process gone before its end (a failed trial, a killed job driver) left
    RUNNING; a run that ended on its own keeps its status."""
    if c.get_run(run_id).info.status == "RUNNING":
        c.set_terminated(run_id, status=status)


def ui_command(uri: str) -> str:
    """What to type to look at ``uri``: the ``mlflow`` next to this interpreter (the venv's)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    exe = Path(sys.executable).parent / "mlflow"
    if exe.exists():
        try:
            exe = exe.relative_to(Path.cwd())
        except ValueError:
            pass
    return f"{exe if exe.exists() else 'mlflow'} ui --backend-store-uri {uri}"
