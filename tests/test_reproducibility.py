"""Bitwise reproducibility beyond the sinusoid MAML cases of test_orchestration.py: resume with
an annealed learning rate and after SIGTERM, and results independent of the worker count for
Conv-4 MAML, ProtoNet, RL² and PEARL (all compared with ``torch.equal``). MAML-TRPO's resume is
checked with its worker-count invariance in test_rl_training.py, on the same runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import omniglot_root
from metaorch.orchestrator.config import load_config
from metaorch.orchestrator.trainer import train
from omniglot_learning import omniglot_config
from test_rl_training import NAV, QUIET, rl_config

ANNEALED = (
    "outer: {iterations: 100, meta_batch: 8, lr: 0.01, final_lr: 0.0}\n"
    "workers: {num_workers: 1, num_cpus: 1, chunk_size: 4}\n"
    "eval: {at_end: false, plot_tasks: 0, val_every: 1000}\n"
    "checkpoint: {every: 5}\n"
    "ray: {num_cpus: 1}\n"
)


def test_resume_after_sigterm_with_an_annealed_lr_equals_an_uninterrupted_run(ray_session, workdir):
    """SIGTERM as soon as the first checkpoint is written; the checkpoint SIGTERM saves, resumed,
    ends where the uninterrupted run ends (the annealed lr depends on the iteration it resumes at)."""
    (workdir / "job.yaml").write_text(ANNEALED)
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metaorch.orchestrator.cli", "train", "job.yaml"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not list(workdir.glob("checkpoints/*/ckpt_00000005.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, "no first checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out
    (latest,) = workdir.glob("checkpoints/*/latest.pt")
    stopped_at = torch.load(latest, weights_only=True)["iteration"]
    assert 5 <= stopped_at < 100, f"stopped at {stopped_at}: the run must end after SIGTERM, not before"
    assert f"interrupted; checkpoint at iteration {stopped_at}" in out

    config = load_config(workdir / "job.yaml")
    resumed = train(config, resume=str(latest), progress=False)
    straight = train(config, progress=False)
    assert resumed.iterations == straight.iterations == 100
    assert torch.equal(straight.meta_params, resumed.meta_params)


@pytest.mark.parametrize("algorithm,task,model", [("rl2", {"name": "bandit", "trial_episodes": 10}, {"hidden": [16]}), ("pearl", NAV, {})], ids=["rl2", "pearl"])
def test_meta_rl_does_not_depend_on_the_number_of_workers(ray_session, workdir, algorithm, task, model):
    one, two = (
        train(rl_config(task, algorithm, model=model, workers={"num_workers": n}, eval=QUIET), progress=False).meta_params
        for n in (1, 2)
    )
    assert torch.equal(one, two)


@pytest.mark.parametrize("algorithm", [{"name": "maml", "inner_lr": 0.4}, {"name": "protonet"}], ids=["conv4-maml", "protonet"])
def test_omniglot_learners_do_not_depend_on_the_number_of_workers(ray_session, workdir, omniglot_cache, algorithm):
    omniglot_root()
    finals = [
        train(
            omniglot_config(omniglot_cache, algorithm, 2, outer={"meta_batch": 4}, workers={"num_workers": n, "chunk_size": 1}, eval={"at_end": False}),
            progress=False,
        ).meta_params
        for n in (1, 2)
    ]
    assert torch.equal(finals[0], finals[1])
