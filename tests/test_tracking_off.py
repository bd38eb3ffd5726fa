"""Tracking off (``tracking.uri: none``): the real trainer runs and prints with no MLflow import.

The GPU check's kit ships without MLflow, so the proof runs in a fresh interpreter: whatever a
training run imports shows in its ``sys.modules``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metaorch.orchestrator import checkpoint as ckpt_io
from metaorch.orchestrator import jobs
from metaorch.orchestrator.config import load_config
from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.preflight import check_tracking_uri
from metaorch.orchestrator.runs import resolve_checkpoint
from metaorch.orchestrator.tracking_off import METRICS_FILE, read_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "seed": 0,
    "model": {"hidden": [8]},
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
    "outer": {"lr": 0.001, "meta_batch": 4, "iterations": 3},
    "workers": {"num_workers": 2, "num_cpus": 0.5, "chunk_size": 2},
    "eval": {"tasks": 4, "steps": [1], "val_every": 2, "val_tasks": 2, "plot_tasks": 0},
    "checkpoint": {"every": 2},
    "ray": {"num_cpus": 2},
}
# Trains through the CLI, then reports which of the heavy optional packages were imported.
SCRIPT = """
import sys
from metaorch.orchestrator import cli
try:
    cli.main(sys.argv[1:])
finally:
    print("imported:", sorted({m.split(".")[0] for m in sys.modules} & {"mlflow", "matplotlib"}))
"""


def test_training_with_tracking_off_imports_no_mlflow(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, "train", "tiny.yaml", "--tracking-uri", "none", "--quiet"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "imported: []" in proc.stdout, proc.stdout
    assert "meta-test MSE after 1 inner step(s):" in proc.stdout, proc.stdout
    run_line = next(line for line in proc.stdout.splitlines() if line.startswith("run "))
    assert "3 iterations" in run_line, run_line
    run_id = run_line.split()[1].rstrip(":")
    run_dir = tmp_path / "checkpoints" / run_id
    assert f"tracking off: metrics in checkpoints/{run_id}/{METRICS_FILE}" in proc.stdout, proc.stdout
    records = read_metrics(run_dir / METRICS_FILE)
    assert [r["step"] for r in records if "time/iteration_s" in r] == [1, 2, 3]
    assert [r["step"] for r in records if "val/loss" in r] == [2, 3]  # val_every 2, and the last
    assert records[-1]["step"] == 3 and "time/train_s" in records[-1]
    # nothing of MLflow's was created: no database, no file store, no folder named "none"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "tiny.yaml"]
    # resuming by run id reads the local checkpoint, with no tracking store to ask
    assert resolve_checkpoint(run_id, "none", str(tmp_path / "checkpoints")).iteration == 3
    assert ckpt_io.load(run_dir / ckpt_io.LATEST).run_id == run_id


def test_config_and_preflight_accept_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert load_config(str(tmp_path / "tiny.yaml"), ["tracking.uri=none"]).tracking.uri == "none"
    check_tracking_uri("none")
    assert list(tmp_path.iterdir()) == [tmp_path / "tiny.yaml"]


def test_submit_refuses_tracking_off_before_it_contacts_anything():
    """``metaorch submit`` creates the job's run in the tracking store first: with none there is no store."""
    config = load_config(None, ["tracking.uri=none"])
    with pytest.raises(UserError, match="tracking URI none: metaorch submit creates the job's MLflow run"):
        jobs.tracking_uri(None, config)
