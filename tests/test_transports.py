"""The pool's three transports give the same results, bit for bit; the combinations that
cannot work are refused before anything starts.

``inprocess`` computes one worker in the driver (no Ray round trip): the same chunk
results as actor calls, and through ``train`` the same outer updates and metrics.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from conftest import tiny_config
from metaorch.orchestrator import cli
from metaorch.orchestrator.aggregation import chunk, reduce_in_order
from metaorch.orchestrator.components import build_components
from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.config import from_dict
from metaorch.tasks.base import descriptors
from metaorch.workers.pool import Resources, WorkerPool
from metaorch.workers.worker import MetaWorker


def _same(a, b) -> bool:
    return [r.index for r in a] == [r.index for r in b] and all(
        (x.direction == y.direction).all() and (x.pre_loss == y.pre_loss).all() and (x.post_loss == y.post_loss).all()
        for x, y in zip(a, b)
    )


class ThreadsSeen(MetaWorker):
    """The worker, noting the torch threads each chunk was computed with."""

    seen: list[int] = []

    def run(self, params, items):
        ThreadsSeen.seen.append(torch.get_num_threads())
        return super().run(params, items)


class ThreadsSeenPool(WorkerPool):
    worker_cls = ThreadsSeen


def test_inprocess_pool_returns_the_actors_chunk_results(ray_session):
    config = tiny_config(outer={"meta_batch": 12}, workers={"chunk_size": 3})
    build = functools.partial(build_components, config)
    params = build()[1].init_meta_params(0).numpy()
    items = chunk(descriptors(0, "train", 0, 12), 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    results = {}
    try:
        for transport, workers in (("calls", 2), ("inprocess", 1)):
            pool_cls = ThreadsSeenPool if transport == "inprocess" else WorkerPool
            pool = pool_cls(build, workers, Resources(num_cpus=0.5, threads=1), transport=transport)
            try:
                results[transport] = pool.run(params, items)
                infos = pool.info()
                # the worker's one thread is the chunks' only: the driver's own work (the meta-test,
                # whose convolutions' sums depend on the thread count) runs as with any transport
                assert torch.get_num_threads() == 2
            finally:
                pool.shutdown()
            assert (os.getpid() in {i["pid"] for i in infos}) == (transport == "inprocess")
    finally:
        torch.set_num_threads(threads)
    assert ThreadsSeen.seen == [1]  # the chunks with the worker's one thread, as in an actor
    assert [r.index for r in results["calls"]] == list(range(4))
    assert _same(results["calls"], results["inprocess"])
    reduced = [reduce_in_order(results[t], 4, 12).direction for t in ("calls", "inprocess")]
    assert torch.equal(*reduced)


def test_inprocess_training_matches_calls_outer_updates_and_metrics(ray_session, workdir):
    from mlflow.tracking import MlflowClient

    from metaorch.orchestrator.trainer import train

    quiet = {"at_end": False, "plot_tasks": 0, "val_every": 5}
    runs = {
        t: train(tiny_config(workers={"num_workers": 1, "transport": t}, eval=quiet), progress=False)
        for t in ("calls", "inprocess")
    }
    calls, inprocess = runs["calls"], runs["inprocess"]
    assert not torch.equal(calls.meta_params, build_components(tiny_config())[1].init_meta_params(0))  # it trained
    assert torch.equal(calls.meta_params, inprocess.meta_params)
    client = MlflowClient(calls.tracking_uri)
    for key in ("train/loss_pre", "train/loss_post", "outer/lr", "val/loss"):
        history = [sorted((m.step, m.value) for m in client.get_metric_history(r.run_id, key)) for r in (calls, inprocess)]
        assert history[0] and history[0] == history[1], key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["workers.transport=compiled", "workers.shard_timeout_s=5"],
         "workers.shard_timeout_s applies to workers.transport=calls, not workers.transport=compiled"),
        (["workers.transport=inprocess", "workers.shard_timeout_s=5", "workers.num_workers=1"],
         "workers.shard_timeout_s applies to workers.transport=calls, not workers.transport=inprocess"),
        (["workers.transport=inprocess"], "workers.transport=inprocess computes one worker in the driver: workers.num_workers must be 1"),
    ],
)
def test_transport_combinations_that_cannot_work_exit_2_in_one_line(capsys, overrides, message):
    args = [a for o in overrides for a in ("--set", o)]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["config", "show", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_the_pool_refuses_a_shard_timeout_without_the_calls_transport():
    """Direct users of the pool (no config) get the same refusal, before any actor starts."""
    build = functools.partial(build_components, tiny_config())
    for transport in ("compiled", "inprocess"):
        with pytest.raises(ValueError, match="shard_timeout_s needs the calls transport"):
            WorkerPool(build, 1, Resources(), transport=transport, shard_timeout_s=5.0)
    with pytest.raises(UserError):
        from_dict({"workers": {"transport": "compiled", "shard_timeout_s": 5}})
