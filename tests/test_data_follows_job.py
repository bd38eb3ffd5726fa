"""Omniglot data follows the job: workers on other nodes get the driver's arrays through Ray's
object store, so a cluster needs no shared storage.

The scenario runs as its own process (``python tests/test_data_follows_job.py WORKDIR CACHE``;
a process drives one Ray instance and this session already drives one): a
``ray.cluster_utils.Cluster`` of a head with no CPUs (the driver's node) and two 1-CPU worker
nodes. The driver reads the data (``SupervisedRunner``), then the data directory and the cache
are moved away, and only then do the workers start on the two worker nodes. Their chunk
results must equal, bit for bit, those of a worker that read the files itself. About 30-40 s:
three raylets and two worker processes that import torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

SMALL = ("images_background_small1.zip", "images_background_small2.zip")


def scenario(workdir: Path, session_cache: Path) -> dict:
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true")
    os.environ.pop("RAY_ADDRESS", None)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np
    import ray
    import torch
    from ray.cluster_utils import Cluster

    from conftest import OMNIGLOT
    from metaorch.orchestrator.aggregation import chunk
    from metaorch.orchestrator.components import build_components
    from metaorch.orchestrator.config import from_dict
    from metaorch.orchestrator.supervised import SupervisedRunner
    from metaorch.tasks import descriptors
    from metaorch.workers.worker import MetaWorker

    data, cache = workdir / "data", workdir / "cache"
    data.mkdir()
    for name in SMALL:
        shutil.copy(OMNIGLOT / name, data / name)
    shutil.copytree(session_cache, cache)  # the session's preprocessed array, if built: no decoding here
    config = from_dict({
        "task": {"name": "omniglot", "ways": 5, "shots": 1, "queries": 2},
        "algorithm": {"name": "maml", "inner_lr": 0.4},
        "data": {"root": str(data), "cache_dir": str(cache)},
        "outer": {"meta_batch": 4, "iterations": 1},
        "workers": {"num_workers": 2, "num_cpus": 1, "chunk_size": 1},
        "eval": {"queries": 2, "at_end": False},
    })
    items = chunk(descriptors(config.seed, "train", 0, 4), 1)
    runner = SupervisedRunner(config)  # the driver reads the data here, once
    params = runner.initial_params()
    torch.set_num_threads(config.workers.threads)  # as the actors compute: the arithmetic depends on it
    reference = MetaWorker(partial(build_components, config)).run(params.numpy(), items)  # from the memory-mapped files
    for path in (data, cache):
        path.rename(workdir / f"moved-{path.name}")

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    try:
        runner.start(params)
        pool = runner.make_pool(config, 2, runner.worker_data)
        try:
            nodes = [i["node_id"] for i in pool.info()]
            results = pool.run(params.numpy(), items)
            metrics = runner.iteration(pool, 0)
        finally:
            pool.shutdown()
        head = ray.get_runtime_context().get_node_id()
    finally:
        ray.shutdown()
        cluster.shutdown()
    fields = ("direction", "pre_loss", "post_loss")
    return {
        "moved": not data.exists() and not cache.exists(),
        "nodes": nodes,
        "head": head,
        "results": len(results),
        "identical": [
            all(np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True) for f in fields)
            and a.metrics.keys() == b.metrics.keys() and all(np.array_equal(a.metrics[k], b.metrics[k]) for k in a.metrics)
            for a, b in zip(results, reference)
        ],
        "train_loss": metrics["train/loss_post"],
    }


@pytest.fixture(scope="module")
def followed(tmp_path_factory, omniglot_cache):
    from conftest import omniglot_root

    omniglot_root()
    workdir = tmp_path_factory.mktemp("follows")
    proc = subprocess.run(
        [sys.executable, __file__, str(workdir), str(omniglot_cache)],
        cwd=workdir, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((workdir / "result.json").read_text())


def test_workers_on_nodes_without_the_data_get_it_from_the_object_store(followed):
    assert followed["moved"]
    assert len(set(followed["nodes"])) == 2 and followed["head"] not in followed["nodes"]
    assert followed["results"] == 4 and followed["train_loss"] > 0


def test_their_results_are_bitwise_those_of_the_memory_mapped_files(followed):
    assert followed["identical"] == [True] * 4


if __name__ == "__main__":
    out = Path(sys.argv[1])
    (out / "result.json").write_text(json.dumps(scenario(out, Path(sys.argv[2]))))
