"""Where workers and the learner land, on a real 3-node ``ray.cluster_utils.Cluster``.

The nodes declare logical GPUs, so placement is checked on this CPU-only machine: the
cluster is a head (1 CPU, no GPU; the driver's node), a 2-CPU node and a 2-CPU node with
one GPU. It runs in its own process (tests/cluster_scenarios.py): this session's driver
already belongs to the local Ray instance of tests/conftest.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metaorch.orchestrator.config import LearnerConfig, WorkersConfig
from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.session import check_capacity, learner_in_actor, target_workers

SCENARIOS = Path(__file__).with_name("cluster_scenarios.py")


def run_scenario(name: str, workdir: Path, *args: str, timeout: float = 400) -> dict:
    proc = subprocess.run(
        [sys.executable, str(SCENARIOS), name, str(workdir), *args],
        cwd=workdir, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((workdir / "result.json").read_text())


@pytest.fixture(scope="module")
def placed(tmp_path_factory):
    return run_scenario("placement", tmp_path_factory.mktemp("placement"))


def test_workers_spread_across_nodes_by_default(placed):
    assert len(set(placed["spread"]["nodes"])) == 2


def test_workers_pack_onto_one_node_as_an_option(placed):
    assert len(set(placed["pack"]["nodes"])) == 1


def test_fractional_gpu_workers_share_the_gpu_node(placed):
    frac = placed["fractional_gpu"]
    assert frac["nodes"] == [placed["gpu_node"]] * 2
    assert all(len(ids) == 1 for ids in frac["gpu_ids"])


def test_learner_goes_to_the_gpu_node_when_the_driver_has_none(placed):
    assert placed["learner_auto_actor"] is True
    assert placed["learner_actor"]["node_id"] == placed["gpu_node"] != placed["head"]
    assert placed["learner_actor"]["gpu_ids"]
    # workers that take the only GPU leave none for a learner actor: it stays in the driver
    assert placed["learner_auto_actor_if_workers_take_the_gpu"] is False


def test_learner_actor_trains_to_the_same_parameters(placed):
    assert placed["trained"]
    assert placed["learner_actor_same_result"]


def test_learner_stays_in_the_driver_whose_node_has_the_gpu(ray_session):
    """The session's instance is one node with a logical GPU: the driver is on the GPU node."""
    assert learner_in_actor(LearnerConfig(), WorkersConfig()) is False
    assert learner_in_actor(LearnerConfig(placement="actor"), WorkersConfig()) is True


def test_capacity_fixed_pool_must_fit_and_auto_takes_what_fits(ray_session):
    # the session instance: 2 CPUs, 1 GPU
    assert check_capacity(WorkersConfig(num_workers=4, num_cpus=0.5)) == 4
    with pytest.raises(UserError, match=r"workers.num_cpus=1.0 x workers.num_workers=3 needs 3 CPU.*num_workers=auto"):
        check_capacity(WorkersConfig(num_workers=3, num_cpus=1))
    assert check_capacity(WorkersConfig(num_workers="auto", num_cpus=0.5)) == 4
    assert check_capacity(WorkersConfig(num_workers="auto", num_cpus=0.5, max_workers=3)) == 3
    assert target_workers(WorkersConfig(num_workers="auto", num_cpus=0.5, num_gpus=0.5)) == 2
    with pytest.raises(UserError, match="workers.num_gpus=1.0 x one worker"):
        check_capacity(WorkersConfig(num_workers="auto", num_cpus=0.5, num_gpus=1), reserved_gpus=0.5)
