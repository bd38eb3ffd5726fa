"""On a real CUDA GPU: workers, the learner and the meta-RL learners compute there, and agree with the CPU.

Marked ``gpu``: the default run deselects them (pyproject's addopts); ``pytest -m gpu`` (what
bench/gpu/check.sh runs) selects them, and then they FAIL on a machine without CUDA instead of
skipping, so a check that ran nowhere cannot pass. They go through the entry points the CPU
tests and the trainer use: MetaWorker, WorkerPool, Learner, the meta-RL runners and their pools.

Tolerance, GPU against CPU: float32 sums in a different order (cuBLAS and cuDNN kernels), so
``rtol=1e-4, atol=1e-5`` on a direction or an Adam step. Between worker counts on the GPU the
reduction is in task order on the driver, so the result is bit for bit the same.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from metaorch.orchestrator import registry
from metaorch.orchestrator.aggregation import chunk, reduce_in_order
from metaorch.orchestrator.components import build_components
from metaorch.orchestrator.config import from_dict
from metaorch.orchestrator.learner import Learner
from metaorch.tasks.base import descriptors
from metaorch.workers import MetaWorker, Resources, WorkerPool, device_for
from conftest import tiny_config

pytestmark = pytest.mark.gpu
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
TASKS, CHUNK = 16, 2


def require_cuda() -> None:
    """In the test, not a fixture: without CUDA the test fails (a fixture's assertion would be an error)."""
    assert torch.cuda.is_available(), "no CUDA device: the gpu tests run on a GPU machine (bench/gpu/check.sh)"


def _sinusoid():
    """Second-order MAML on sinusoids: its meta-parameters and the chunks of one iteration."""
    config = tiny_config(outer={"meta_batch": TASKS})
    params = build_components(config)[1].init_meta_params(config.seed).numpy()
    return config, params, chunk(descriptors(config.seed, "train", 0, TASKS), CHUNK)


def test_a_meta_worker_given_a_gpu_computes_on_it_like_on_the_cpu():
    require_cuda()
    config, params, items = _sinusoid()
    build = partial(build_components, config)
    on_gpu = MetaWorker(build, device_for(1.0))
    assert on_gpu.device.type == "cuda"  # the meta-parameters and each batch go there in run()
    gpu, cpu = on_gpu.run(params, items), MetaWorker(build).run(params, items)
    for g, c in zip(gpu, cpu, strict=True):
        np.testing.assert_allclose(g.direction, c.direction, **TOLERANCE)
        np.testing.assert_allclose(g.post_loss, c.post_loss, **TOLERANCE)


def test_four_quarter_gpu_workers_share_the_gpu_and_reduce_like_one_bit_for_bit(ray_session):
    require_cuda()
    config, params, items = _sinusoid()
    reduced = {}
    for workers, share in ((1, 1.0), (4, 0.25)):
        pool = WorkerPool(partial(build_components, config), workers, Resources(num_cpus=0.25, num_gpus=share))
        try:
            infos = pool.info()
            assert [i["device"] for i in infos] == ["cuda:0"] * workers
            assert len({tuple(i["gpu_ids"]) for i in infos}) == 1  # one GPU, shared
            reduced[workers] = reduce_in_order(pool.run(params, items), len(items), TASKS)
        finally:
            pool.shutdown()
    assert torch.equal(reduced[1].direction, reduced[4].direction)
    assert np.array_equal(reduced[1].post_loss, reduced[4].post_loss)


def test_the_learner_steps_on_the_gpu_like_on_the_cpu():
    require_cuda()
    config, params, _ = _sinusoid()
    direction = torch.randn(params.shape, generator=torch.Generator().manual_seed(0))
    gpu, cpu = Learner(torch.from_numpy(params), config.outer), Learner(torch.from_numpy(params), config.outer, device="cpu")
    assert gpu.device.type == "cuda"
    for it in range(3):
        gpu.step(direction, it)
        cpu.step(direction, it)
    torch.testing.assert_close(gpu.params.detach().cpu(), cpu.params.detach(), **TOLERANCE)


_RL = {
    "maml_trpo": ({"name": "navigation_2d"}, {"maml_trpo": {"episodes_per_task": 2}}, lambda r: r.learner.params),
    "rl2": ({"name": "bandit", "trial_episodes": 4, "options": {"arms": 2}}, {"ppo": {"trials_per_task": 2, "epochs": 1}}, lambda r: r.learner.params),
    "pearl": (
        {"name": "navigation_2d"},
        {"pearl": {"train_tasks": 4, "tasks_per_iteration": 2, "updates_per_iteration": 2, "batch_size": 8, "context_size": 4, "prior_episodes": 1, "posterior_episodes": 1}},
        lambda r: next(r.pearl.actor.parameters()),
    ),
}  # fmt: skip


@pytest.mark.parametrize("method", list(_RL))
def test_meta_rl_learner_steps_and_batched_rollouts_run_on_the_gpu(method):
    """One training iteration of the method's runner with an in-process rollout worker given the
    GPU: the worker's batched policy forward and the learner's step both on cuda."""
    require_cuda()
    task, rl, learner_tensor = _RL[method]
    config = from_dict(
        {
            "task": task, "algorithm": {"name": method}, "model": {"hidden": [16]}, "rl": rl,
            "outer": {"meta_batch": 4}, "workers": {"num_workers": 1, "transport": "inprocess", "num_gpus": 1.0, "chunk_size": 2},
        }
    )  # fmt: skip
    runner = registry.method(method).runner_class()(config)
    runner.start(runner.initial_params())
    pool = runner.make_pool(config, 1)
    try:
        assert pool.info()[0]["device"] == "cuda:0"
        metrics = runner.iteration(pool, 0)
    finally:
        pool.shutdown()
        runner.close()
    assert learner_tensor(runner).is_cuda
    assert not runner.worker_params().is_cuda  # what travels to workers stays on the CPU
    assert np.isfinite(list(metrics.values())).all(), metrics
