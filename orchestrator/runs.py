"""Which run and checkpoint a command means: a checkpoint file, a run's checkpoint directory,
or an MLflow run id (its newest checkpoint that reached the tracking store)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from metaorch.orchestrator import checkpoint as ckpt_io
from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.preflight import sqlite_path
from metaorch.orchestrator.mlflow_client import client
from metaorch.orchestrator.tracking_off import tracking_off

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_CKPT_FILE = re.compile(r"^ckpt_\d+\.pt$")


def resolve_checkpoint(source: str, tracking_uri: str, checkpoint_dir: str) -> ckpt_io.Checkpoint:
    """A checkpoint file, a run's checkpoint directory, or an MLflow run id."""
    path = Path(source)
    if path.is_file():
        return ckpt_io.load(path)
    if path.is_dir():
        return ckpt_io.load(path / ckpt_io.LATEST)
    if not RUN_ID.match(source):
        raise UserError(f"{source}: no such checkpoint file or directory, and not an MLflow run id")
    local = Path(checkpoint_dir) / source / ckpt_io.LATEST
    if tracking_off(tracking_uri):
        if local.is_file():
            return ckpt_io.load(local)
        raise UserError(f"run {source}: tracking is off and {local} does not exist")
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        if local.is_file():
            return ckpt_io.load(local)
        raise UserError(f"run {source} not found: tracking store {tracking_uri} does not exist")  # and do not create it
    c = client(tracking_uri)
    try:
        c.get_run(source)
    except Exception:
        if local.is_file():
            return ckpt_io.load(local)
        raise UserError(f"run {source} not found in tracking store {tracking_uri}") from None
    uploaded = _newest_uploaded_checkpoint(c, source, Path(checkpoint_dir) / source)
    if uploaded is not None:
        return uploaded
    if local.is_file():
        return ckpt_io.load(local)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            got = c.download_artifacts(source, f"checkpoints/{ckpt_io.LATEST}", tmp)
        except Exception:
            raise UserError(f"run {source} has no checkpoint (checkpoints/{ckpt_io.LATEST}) in {tracking_uri}") from None
        return ckpt_io.load(got)


def _newest_uploaded_checkpoint(c, run_id: str, local_dir: Path) -> ckpt_io.Checkpoint | None:
    """The run's newest checkpoint in the tracking store (its local copy when there is one).

    The sink uploads a checkpoint after every metric logged before it, so all steps up to it
    are in MLflow. A newer local file may be ahead of what reached MLflow before the driver
    was killed; resuming from it would lose the steps in between.
    """
    try:
        names = [a.path.rpartition("/")[2] for a in c.list_artifacts(run_id, "checkpoints")]
    except Exception:
        return None
    saved = sorted(n for n in names if _CKPT_FILE.match(n))
    if not saved:
        return None
    if (local_dir / saved[-1]).is_file():
        return ckpt_io.load(local_dir / saved[-1])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return ckpt_io.load(c.download_artifacts(run_id, f"checkpoints/{saved[-1]}", tmp))
        except UserError:
            raise
        except Exception:
            return None


def check_empty_run(uri: str, run_id: str, resume: str | None) -> None:
    """``--run-id``: an existing run without metrics (``metaorch submit`` created it)."""
    if resume:
        raise UserError(f"--run-id {run_id} and --resume {resume}: give one (--resume continues its own run)")
    if not RUN_ID.match(run_id):
        raise UserError(f"--run-id {run_id!r}: not an MLflow run id (32 hexadecimal digits)")
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UserError(f"--run-id {run_id}: tracking store {uri} does not exist")  # and do not create it
    try:
        run = client(uri).get_run(run_id)
    except Exception:
        raise UserError(f"--run-id {run_id}: no such run in tracking store {uri}") from None
    if run.data.metrics:
        raise UserError(f"--run-id {run_id}: the run already has metrics; continue it with --resume {run_id}")
