"""A run's final model as an MLflow 3 LoggedModel: listed under the run's and the experiment's
Models, linked to its meta-test figures, loadable as ``runs:/<run id>/model``, registrable.

What is saved is described in :mod:`orchestrator.pyfunc_model` (models from code: a code file
of this package, the config, the meta-parameters as a tensor file; no pickle). The steps are
those of MLflow's own ``Model.log``, through the run's client rather than the process-wide
fluent state, so the tracker's background thread can log into any store.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from metaorch.orchestrator.config import Config
from metaorch.orchestrator.pyfunc_model import CONFIG, WEIGHTS, MetaorchModel, example_input, signature

MODEL_NAME = "model"  # runs:/<run id>/model
_MAX_BATCH = 1000


def requirements() -> list[str]:
    """What a fresh environment installs to load the model: the code is metaorch's, at this version."""
    import mlflow

    import metaorch

    return [f"mlflow=={mlflow.__version__}", f"metaorch=={metaorch.__version__}", f"torch=={torch.__version__.split('+')[0]}"]


@contextmanager
def _warnings_only(name: str) -> Iterator[None]:
    """Logger ``name`` at WARNING for the block: MLflow's INFO lines (e.g. "Validating input
    example against model signature") would otherwise land in every run's output."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def save(path: str | Path, config: Config, meta_params: torch.Tensor, mlflow_model: Any = None) -> None:
    """The model as an MLflow model directory at ``path`` (a pyfunc from code, with signature and example)."""
    import mlflow

    code = importlib.util.find_spec("metaorch.orchestrator.mlflow_model").origin  # not imported: MLflow runs it
    params = meta_params.detach().cpu().float().contiguous().clone()
    model = MetaorchModel()
    model.setup(config, params)
    example = example_input(config)
    output = model.predict(None, example)
    with tempfile.TemporaryDirectory() as tmp:
        weights, config_file = Path(tmp) / "weights.pt", Path(tmp) / "config.yaml"
        torch.save(params, weights)
        config_file.write_text(config.to_yaml())
        with _warnings_only("mlflow.pyfunc"):
            mlflow.pyfunc.save_model(
                str(path),
                python_model=code,
                artifacts={WEIGHTS: str(weights), CONFIG: str(config_file)},
                signature=signature(config, example, output),
                input_example=example,
                pip_requirements=requirements(),
                mlflow_model=mlflow_model,
            )


def log_model(client: Any, run_id: str, experiment_id: str, config: Config, meta_params: torch.Tensor, step: int) -> str:
    """Log ``meta_params`` as run ``run_id``'s model ``"model"`` (a LoggedModel, READY); its id."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    tags = {"metaorch.method": config.algorithm.name, "metaorch.task": config.task.name}
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id, tags=tags, model_type=config.algorithm.name)
    try:
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step)])
        meta = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id, model_id=logged.model_id)
        with tempfile.TemporaryDirectory() as tmp:
            save(Path(tmp) / MODEL_NAME, config, meta_params, meta)
            client.log_model_artifacts(logged.model_id, str(Path(tmp) / MODEL_NAME))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    return logged.model_id


def link_metrics(client: Any, model_id: str, test_run_id: str) -> None:
    """The meta-test run's figures (step 0) become the model's metrics, and the model that run's input.

    As MLflow's ``Model.log`` links a run's metrics: logged again with the model's id and their
    own timestamps, so the run's history gains no point; the store keeps the link."""
    from mlflow.entities import LoggedModelInput, Metric

    keys = client.get_run(test_run_id).data.metrics
    linked = [
        Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=test_run_id)
        for key in keys
        for m in client.get_metric_history(test_run_id, key)
        if m.step == 0 and m.model_id is None
    ]
    for i in range(0, len(linked), _MAX_BATCH):
        client.log_batch(test_run_id, metrics=linked[i : i + _MAX_BATCH])
    client.log_inputs(test_run_id, models=[LoggedModelInput(model_id)])


def find_model(client: Any, run_id: str) -> str | None:
    """The id of run ``run_id``'s READY model ``"model"``, the newest if there are several; None if none."""
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"name = '{MODEL_NAME}' AND source_run_id = '{run_id}' AND status = 'READY'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}], max_results=1,
    )  # fmt: skip
    return found[0].model_id if found else None
