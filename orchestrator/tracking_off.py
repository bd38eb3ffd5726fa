"""Tracking off (``tracking.uri: none``, ``--tracking-uri none``): a run without MLflow.

For a machine with no tracking server, or without MLflow installed at all (the GPU check's
kit ships without it: full MLflow does not fit beside Ray). Training, checkpoints and the
meta-test run and print as usual, and nothing imports ``mlflow``. The run's metrics go to
``<checkpoint dir>/<run id>/metrics.jsonl``, one JSON object per ``log_metrics`` call, so its
curve is not lost; params, tags, artifacts, figures and the model have nowhere to go and are
dropped. A resumed run appends: steps recomputed after its last checkpoint appear again.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from metaorch.orchestrator.tracking import Tracker

OFF = "none"
METRICS_FILE = "metrics.jsonl"


def tracking_off(uri: str) -> bool:
    return uri == OFF


class NullTracker(Tracker):
    """The :class:`Tracker` interface with no store behind it; ``client`` is None."""

    def __init__(self, run_id: str, metrics_file: Path | None = None):
        """Not ``Tracker.__init__``: that opens an MLflow client and starts the sink thread."""
        self.uri = OFF
        self.run_id = run_id
        self.experiment_id = OFF
        self.client = None
        self.spilled = 0
        self.metrics_file = metrics_file

    @classmethod
    def start(
        cls,
        uri: str,
        experiment: str,
        run_name: str | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        buffer_max: int = 10_000,
        spill_root: str | Path | None = None,
    ) -> NullTracker:
        """A new run id (32 hex digits, like MLflow's), or ``run_id`` (resume); metrics under ``spill_root``."""
        rid = run_id or uuid.uuid4().hex
        return cls(rid, Path(spill_root) / rid / METRICS_FILE if spill_root is not None else None)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.metrics_file is not None:
            self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
            with self.metrics_file.open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def delivered(self, timeout: float) -> bool:
        return True

    def log_inputs(self, datasets: list[Any], context: str) -> None:
        pass

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Closes the figure, as :meth:`Tracker.log_figure` does after uploading it."""
        import matplotlib.pyplot as plt

        plt.close(figure)

    def log_model(self, config: Any, meta_params: Any, step: int, test_run_id: str | None, estimates: Any) -> None:
        pass

    def close(self, status: str = "FINISHED", timeout: float | None = None) -> None:
        pass


def start_tracker(uri: str, experiment: str, **kwargs: Any) -> Tracker:
    """The run's tracker: MLflow's (:meth:`Tracker.start`), or a :class:`NullTracker` when tracking is off."""
    return (NullTracker if tracking_off(uri) else Tracker).start(uri, experiment, **kwargs)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The records a :class:`NullTracker` wrote, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
