"""bench/projection.py's arithmetic on given rates (no timing), the steps per iteration it
reads from the shipped Meta-World configs, and the argument handling of bench/projection.py
and of bench/scaling.py's ``--env ml45`` (a real ML45 run builds metaworld's ML45 in every
worker, about a minute each: too slow for the suite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import projection  # noqa: E402  (bench/ is not a package)


def test_projection_by_hand():
    shape = projection.Shape(tasks=20, steps_per_task=10_000)  # ML10 MAML-TRPO's iteration
    measured = projection.Measured(rate=1000.0, slowest=800.0, driver_s_per_step=1e-5, learner_s=30.0)
    row = projection.project(shape, 15e6, measured, nodes=4, cores_per_node=16)
    # 15 M / 200,000 steps = 75 iterations. 64 cores for 20 tasks: one task per worker, at the
    # slowest task's 800 steps/s 12.5 s, plus 200,000 steps x 10 us received by the driver = 14.5 s;
    # with the learner's 30 s: 44.5 s an iteration, 3,337.5 s in all, the learner 2,250 s of it.
    assert (row.iterations, row.cores, row.busy, row.steps_per_iteration) == (75, 64, 20, 200_000)
    assert row.rollout_s == pytest.approx(75 * 14.5)
    assert row.learner_s == pytest.approx(2250.0)
    assert row.wall_s == pytest.approx(3337.5)
    assert row.learner_share == pytest.approx(2250.0 / 3337.5)
    # every core busy: 200,000 / (1,000 x 64) = 3.125 s of rollouts an iteration
    assert row.all_busy_wall_s == pytest.approx(75 * (3.125 + 2.0 + 30.0))


def test_projection_when_workers_hold_several_tasks():
    shape = projection.Shape(tasks=45, steps_per_task=20_000)
    measured = projection.Measured(rate=1000.0, slowest=1000.0, driver_s_per_step=0.0, learner_s=0.0)
    one_node = projection.project(shape, 90e6, measured, nodes=1, cores_per_node=16)
    assert one_node.busy == 16 and one_node.rollout_s == pytest.approx(100 * 3 * 20.0)  # ceil(45 / 16) = 3 tasks each
    chunked = projection.project(shape, 90e6, measured, nodes=64, chunk_size=13)
    assert chunked.busy == 4 and chunked.rollout_s == pytest.approx(100 * 13 * 20.0)  # 4 chunks: 13 tasks on a worker


def test_steps_per_iteration_of_the_shipped_configs():
    from metaorch.orchestrator.config import load_config

    shapes = {r.key: projection.shape(load_config(ROOT / r.config)) for r in projection.REFERENCES}
    assert shapes == {
        "ml10_maml_trpo": projection.Shape(20, 2 * 10 * 500),
        "ml10_rl2": projection.Shape(10, 10 * 500),
        "ml45_maml_trpo": projection.Shape(45, 2 * 20 * 500),
        "ml45_rl2": projection.Shape(25, 10 * 500),
    }


@pytest.mark.parametrize(
    ("argv", "named"),
    [(["--only", "ml10_maml_trpo,ml99"], "--only="), (["--nodes", "4,x"], "--nodes=4,x"), (["--max-path-length", "0"], "--max-path-length=0")],
)
def test_projection_refuses_bad_arguments_in_one_line(argv, named, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["projection.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        projection.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err


def test_scaling_ml45_rollouts_use_the_metaworld_family_and_check_their_arguments():
    """In a subprocess: importing bench/scaling.py sets Ray's environment for the whole process."""
    code = """
import json, sys
sys.path.insert(0, "bench")
import scaling
from metaorch.orchestrator.components import build_env_family
from metaorch.orchestrator.config import from_dict, load_config
config, per_worker, episodes, label = scaling.rollout_setup("ml45", 20, 500)
family = build_env_family(from_dict(config))
out = {"family": repr(family), "classes": len(family.classes["train"]), "per_worker": per_worker, "episodes": episodes,
       "hidden": config["model"]["hidden"] == list(load_config("configs/metaworld_ml45_maml_trpo.yaml").model.hidden), "cheetah": scaling.rollout_setup("half-cheetah", 20)[1:3]}
for key, argv in (("bad_env", ["--env", "ml46"]), ("bad_length", ["--env", "ml45", "--max-path-length", "0"])):
    sys.argv = ["scaling.py", *argv]
    try:
        scaling.main()
    except SystemExit as exc:
        out[key] = exc.code
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["family"] == "MetaWorld(ML45, seed=0, max_path_length=500)"
    assert out["classes"] == out["per_worker"] == 45 and out["episodes"] == 1  # every worker plays every train class
    assert out["hidden"] and out["cheetah"] == [1, 20]  # the ML45 MAML-TRPO config's policy; HalfCheetah as before
    assert out["bad_env"] == 2 and out["bad_length"] == 2
    assert "--env" in proc.stderr and "--max-path-length=0" in proc.stderr
