"""Checkpoints: everything needed to continue a run bit-for-bit, and nothing executable.

Saved as plain tensors, numbers and strings so they load with ``torch.load(weights_only=True)``
(no pickle of arbitrary objects). Written to a temporary file and renamed, so a crash
while saving never leaves a half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from metaorch.orchestrator.config import Config, from_dict
from metaorch.orchestrator.errors import UserError

FORMAT_VERSION = 1
LATEST = "latest.pt"


@dataclass
class Checkpoint:
    iteration: int  # completed meta-iterations
    meta_params: torch.Tensor
    optimizer: dict[str, Any]
    torch_rng: torch.Tensor
    run_id: str | None
    config_yaml: str

    def config(self, source: str | Path) -> Config:
        """The run's configuration as it was saved (``source`` names the checkpoint in errors)."""
        return from_dict(yaml.safe_load(self.config_yaml), f"in checkpoint {source}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "iteration": self.iteration,
            "meta_params": self.meta_params.detach().cpu().clone(),
            "optimizer": self.optimizer,
            "torch_rng": self.torch_rng,
            "run_id": self.run_id or "",
            "config_yaml": self.config_yaml,
        }


def save(ckpt: Checkpoint, directory: Path) -> Path:
    """Write ``ckpt_<iteration>.pt`` and update ``latest.pt``, both atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"ckpt_{ckpt.iteration:08d}.pt"
    for path in (target, directory / LATEST):
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(ckpt.to_dict(), tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


def load(path: str | Path) -> Checkpoint:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns in paragraphs about pickle protocols it meets
            warnings.simplefilter("ignore")
            raw = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message is a page of advice that ends in "load it with weights_only=False",
        # which would run whatever code the file holds: one line, and no such advice.
        raise UserError(
            f"checkpoint {path} is not a readable metaorch checkpoint: it holds objects other than "
            "tensors, numbers and strings, which are not unpickled because that could run code"
        ) from None
    except Exception:
        raise UserError(f"checkpoint {path} is not a readable metaorch checkpoint: corrupt, truncated or not written by torch.save") from None
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        raise UserError(f"checkpoint {path}: not a metaorch checkpoint of format {FORMAT_VERSION}")
    try:
        return Checkpoint(
            iteration=int(raw["iteration"]),
            meta_params=raw["meta_params"],
            optimizer=raw["optimizer"],
            torch_rng=raw["torch_rng"],
            run_id=raw["run_id"] or None,
            config_yaml=str(raw["config_yaml"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"checkpoint {path}: missing or malformed field {exc}") from None
