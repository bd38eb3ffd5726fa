"""The metric and gradient-based methods learn Omniglot through the real orchestrator (its
in-process worker, ordered reduction, MLflow) on a CI budget (tests/omniglot_learning.py); also the
one-shot runs suite, on the learning test's runs. SNAIL and MANN: test_omniglot_sequence_training.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import OMNIGLOT
from metaorch.orchestrator.trainer import evaluate
from omniglot_learning import METHODS, SEQUENCE, assert_learns


@pytest.mark.parametrize("method", [m for m in METHODS if m not in SEQUENCE])
def test_method_learns_omniglot(method, omniglot_runs) -> None:
    assert_learns(method, omniglot_runs)


def test_one_shot_runs_suite(omniglot_runs, workdir, omniglot_cache) -> None:
    """``metaorch eval --suite omniglot-runs`` on runs written in the original format from the
    held-out alphabet: one error rate per run, logged as a nested run; a 5-way MAML checkpoint
    is refused on 20-way runs (exit 2) instead of guessing. The runs are the learning test's."""
    from metaorch.tasks.omniglot import write_runs

    runs = write_runs(str(OMNIGLOT), workdir / "runs", runs=3, ways=20, seed=0, cache_dir=str(omniglot_cache))
    config, proto = omniglot_runs("protonet")
    result = evaluate(proto.run_id, suite="omniglot-runs", runs=str(runs), tracking_uri=config.tracking.uri, checkpoint_dir=config.checkpoint.dir)
    assert sorted(result.per_run) == ["run01", "run02", "run03"]
    assert result.estimates["runs_error_rate"].mean < 0.7, result.per_run  # chance: 0.95 at 20-way
    assert result.run_id is not None and result.parent_run_id == proto.run_id

    _, maml = omniglot_runs("maml")
    cli = subprocess.run(
        [sys.executable, "-m", "metaorch.orchestrator.cli", "eval", str(maml.checkpoint), "--suite", "omniglot-runs", "--runs", str(runs)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 2 and "20-way" in cli.stderr and "task.ways" in cli.stderr, cli.stderr
