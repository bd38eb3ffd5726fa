"""Every supervised method learns Omniglot through the real orchestrator (Ray workers,
ordered reduction, MLflow), on a CI budget: meta-test accuracy on the held-out alphabet must
beat chance (20% at 5-way) by a wide margin. Also the one-shot runs suite and data errors."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OMNIGLOT, omniglot_root
from metaorch.orchestrator.components import build_components
from metaorch.orchestrator import registry
from metaorch.orchestrator.config import deep_merge, from_dict
from metaorch.orchestrator.evaluation import classification_test
from metaorch.orchestrator.trainer import evaluate, train
from metaorch.tasks import descriptors



@pytest.fixture(scope="module", autouse=True)
def _omniglot_present() -> Path:
    return omniglot_root()


def omniglot_config(cache: Path, algorithm: dict, iterations: int, **sections) -> object:
    base = {
        "task": {"name": "omniglot", "ways": 5, "shots": 1, "queries": 5},
        "data": {"root": str(OMNIGLOT), "cache_dir": str(cache)},
        "algorithm": algorithm,
        "outer": {"iterations": iterations, "meta_batch": 8},
        "workers": {"num_workers": 2, "num_cpus": 0.5, "chunk_size": 2},
        "eval": {"tasks": 60, "queries": 5, "steps": [algorithm.get("inner_steps", 1)], "val_every": 10**6, "val_tasks": 10},
        "checkpoint": {"every": 10**6},
    }
    return from_dict(deep_merge(base, sections), "(test)")


# Budgets: enough episodes that every method clears both bars with room on this machine.
METHODS = {
    "protonet": ({"name": "protonet"}, 20, {}),
    "matching": ({"name": "matching"}, 20, {}),
    "siamese": ({"name": "siamese"}, 40, {}),
    "maml": ({"name": "maml", "inner_lr": 0.4}, 60, {}),
    "fomaml": ({"name": "fomaml", "inner_lr": 0.4}, 100, {"eval": {"steps": [3]}}),
    "metasgd": ({"name": "metasgd", "inner_lr": 0.4}, 60, {}),
    "anil": ({"name": "anil", "inner_lr": 0.4}, 60, {}),
    "snail": ({"name": "snail"}, 280, {}),  # validation ~50% at 264 iterations, 59% at 396
    # 4 instances per class in training; a chunk's sequences share the core's steps.
    "mann": ({"name": "mann"}, 900, {"task": {"queries": 3}, "outer": {"lr": 3e-3, "meta_batch": 16}, "workers": {"chunk_size": 8}}),
    # Nichol et al.'s recipe: inner Adam on mini-batches of support + queries ("train shots").
    "reptile": (
        {"name": "reptile", "inner_optimizer": "adam", "inner_lr": 0.001, "inner_steps": 5, "inner_batch": 10},
        60,
        {"task": {"queries": 9}, "outer": {"optimizer": "sgd", "lr": 1.0, "final_lr": 0.0}, "eval": {"steps": [5]}},
    ),
}
CHANCE = 0.2  # 5-way


@pytest.fixture(scope="module")
def trained(ray_session, omniglot_cache, tmp_path_factory):
    """``trained(method)``: the method's config and its run, trained once per module (in a
    directory of its own) so that the one-shot runs suite reuses the learning test's runs."""
    root = tmp_path_factory.mktemp("omniglot-runs")
    runs: dict[str, tuple[object, object]] = {}

    def run(method: str) -> tuple[object, object]:
        if method not in runs:
            algorithm, iterations, sections = METHODS[method]
            home = {"tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}"}, "checkpoint": {"dir": str(root / "checkpoints")}}
            config = omniglot_config(omniglot_cache, algorithm, iterations, **deep_merge(sections, home))
            with contextlib.chdir(root):  # MLflow's artifact store too
                runs[method] = config, train(config, progress=False)
        return runs[method]

    return run


@pytest.mark.parametrize("method", list(METHODS))
def test_method_learns_omniglot(method, trained) -> None:
    """The trained meta-test accuracy beats chance by a wide margin (its 95% CI lies above
    2x chance) and beats the same method at its initial parameters: a random Conv-4 plus a
    few SGD steps already classifies Omniglot well above chance, so chance alone proves little."""
    config, result = trained(method)
    key = "acc_5way_1shot" + (f"_step_{config.eval.steps[0]}" if registry.method(config.algorithm.name).adapts else "")
    trained_acc = result.test[key]

    _, learner = build_components(config)
    tasks = descriptors(config.seed, "test", 0, config.eval.tasks)
    untrained = classification_test(config, learner, learner.init_meta_params(config.seed), tasks, config.eval.steps)[key]
    print(f"{method}: trained {trained_acc}, untrained {untrained}")
    assert trained_acc.mean - trained_acc.ci95 > 2 * CHANCE, f"{method}: 5-way 1-shot accuracy {trained_acc} (chance {CHANCE})"
    assert trained_acc.mean - trained_acc.ci95 > untrained.mean + untrained.ci95, f"{method}: trained {trained_acc}, untrained {untrained}"


def test_one_shot_runs_suite(trained, workdir, omniglot_cache) -> None:
    """``metaorch eval --suite omniglot-runs`` on runs written in the original format from the
    held-out alphabet: one error rate per run, logged as a nested run; a 5-way MAML checkpoint
    is refused on 20-way runs (exit 2) instead of guessing. The runs are the learning test's."""
    from metaorch.tasks.omniglot import write_runs

    runs = write_runs(str(OMNIGLOT), workdir / "runs", runs=3, ways=20, seed=0, cache_dir=str(omniglot_cache))
    config, proto = trained("protonet")
    result = evaluate(proto.run_id, suite="omniglot-runs", runs=str(runs), tracking_uri=config.tracking.uri, checkpoint_dir=config.checkpoint.dir)
    assert sorted(result.per_run) == ["run01", "run02", "run03"]
    assert result.estimates["runs_error_rate"].mean < 0.7, result.per_run  # chance: 0.95 at 20-way
    assert result.run_id is not None and result.parent_run_id == proto.run_id

    _, maml = trained("maml")
    cli = subprocess.run(
        [sys.executable, "-m", "metaorch.orchestrator.cli", "eval", str(maml.checkpoint), "--suite", "omniglot-runs", "--runs", str(runs)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 2 and "20-way" in cli.stderr and "task.ways" in cli.stderr, cli.stderr
