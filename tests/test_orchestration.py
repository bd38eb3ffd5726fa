"""The orchestrator's guarantees, on a real local Ray instance.

Results never depend on the number of workers, on a worker dying mid-iteration, or on a
run being stopped and resumed: all three are compared bitwise (``torch.equal``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from conftest import tiny_config
from metaorch.orchestrator.aggregation import chunk
from metaorch.orchestrator.components import build_components
from metaorch.orchestrator.trainer import train
from metaorch.tasks.base import descriptors
from metaorch.workers.pool import NAME_PREFIX, Resources, WorkerPool
from metaorch.workers.chunks import shard


def _train(config, **kw):
    return train(config, progress=False, **kw)


def test_shards_are_contiguous_and_cover_every_item():
    items = chunk(descriptors(0, "train", 0, 25), 4)
    for parts in (1, 2, 3, 4, 7, 10):
        shards = shard(items, parts)
        assert [i.index for s in shards for i in s] == list(range(len(items)))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


FAULTS = """
import resource, sys, torch
from metaorch.workers.worker import keep_freed_memory
kept = sys.argv[1] == "keep" and keep_freed_memory()
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def activations(): return [torch.ones(4_000_000) for _ in range(3)]  # 3 x 16 MB
activations()
f0 = faults()
for _ in range(10):
    activations()
print(kept, faults() - f0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_workers_keep_freed_memory_instead_of_faulting_it_in_again():
    """Reusing freed 16 MB blocks page-faults their 4,000 pages in again unless malloc keeps
    them (workers.worker.keep_freed_memory); in its own process, as the setting is global."""
    def run(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True).stdout.split()
        return out[0], int(out[1])

    (_, default), (kept, tuned) = run("default"), run("keep")
    assert kept == "True"
    # one round of 3 fresh blocks is ~11,700 faults; glibc's default refaults 15,000-80,000
    # over the 10 rounds (its thresholds adapt), kept memory at most one block's ~3,900
    assert tuned < 6_000 and default > 2 * tuned, (default, tuned)


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_same_parameters_with_1_2_and_4_workers(ray_session, workdir, algorithm):
    """Chunks fix the arithmetic; the learner reduces them in task order."""
    finals = []
    for n in (1, 2, 4):
        config = tiny_config(
            algorithm={"name": algorithm},
            outer={"iterations": 20, "meta_batch": 10},
            workers={"num_workers": n, "num_cpus": 0.5, "chunk_size": 3},
            eval={"at_end": False, "plot_tasks": 0},
        )
        finals.append(_train(config).meta_params)
    initial = build_components(tiny_config(algorithm={"name": algorithm}))[1].init_meta_params(0)
    assert not torch.equal(finals[0], initial)  # it trained
    assert torch.equal(finals[0], finals[1])
    assert torch.equal(finals[0], finals[2])


def test_compiled_transport_gives_the_same_parameters(ray_session, workdir):
    quiet = {"at_end": False, "plot_tasks": 0}
    calls = _train(tiny_config(eval=quiet)).meta_params
    for n in (1, 2):
        workers = {"num_workers": n, "num_cpus": 0.5, "chunk_size": 2, "transport": "compiled"}
        assert torch.equal(calls, _train(tiny_config(workers=workers, eval=quiet)).meta_params)


@pytest.mark.parametrize("transport", ["calls", "compiled"])
def test_pool_reruns_the_shard_of_a_killed_worker(ray_session, transport):
    config = tiny_config(outer={"meta_batch": 12}, workers={"chunk_size": 3})
    family, learner = build_components(config)
    params = learner.init_meta_params(0).numpy()
    items = chunk(descriptors(0, "train", 0, 12), 3)
    pool = WorkerPool(functools.partial(build_components, config), 2, Resources(num_cpus=0.5), transport=transport)
    try:
        undisturbed = pool.run(params, items)
        victim = pool.info()[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        rerun = pool.run(params, items)
        assert pool.restarts == 1
        assert [r.index for r in rerun] == [r.index for r in undisturbed]
        for a, b in zip(undisturbed, rerun):
            assert (a.direction == b.direction).all() and (a.post_loss == b.post_loss).all()
        assert pool.info()[1]["pid"] != victim
    finally:
        pool.shutdown()


def _kill_a_worker_at(checkpoint: Path, stop: threading.Event, killed: list[int]) -> None:
    """Once a run has written ``checkpoint`` (progress, whatever this machine's speed), SIGKILL
    one metaorch worker process from outside, as a crash would."""
    seen = set(Path().glob(str(checkpoint)))
    while not stop.is_set():
        if set(Path().glob(str(checkpoint))) - seen:
            names = sorted(n for n in ray.util.list_named_actors() if n.startswith(NAME_PREFIX))
            pid = ray.get(ray.get_actor(names[-1]).info.remote())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


def test_worker_killed_mid_run_is_replaced_and_result_unchanged(ray_session, workdir):
    config = tiny_config(outer={"iterations": 100, "meta_batch": 8}, eval={"at_end": False, "plot_tasks": 0, "val_every": 1000},
                         checkpoint={"every": 20})  # fmt: skip
    reference = _train(config)
    assert reference.restarts == 0

    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_a_worker_at, args=(Path("checkpoints/*/ckpt_00000020.pt"), stop, killed))
    killer.start()
    try:
        disturbed = _train(config)
    finally:
        stop.set()
        killer.join()
    assert killed, "the run ended before a worker could be killed"
    assert disturbed.restarts >= 1
    assert torch.equal(reference.meta_params, disturbed.meta_params)


def test_resume_by_run_id_then_from_a_checkpoint_file_equals_an_uninterrupted_run(ray_session, workdir):
    """30 iterations, resumed by run id to 45, then from that checkpoint file to 60: the same
    parameters as 60 in one go, all in the first run."""
    quiet = {"at_end": False, "plot_tasks": 0}
    straight = _train(tiny_config(outer={"iterations": 60}, eval=quiet))
    first = _train(tiny_config(outer={"iterations": 30}, eval=quiet))
    by_id = _train(tiny_config(outer={"iterations": 45}, eval=quiet), resume=first.run_id)
    assert by_id.run_id == first.run_id and by_id.iterations == 45
    assert torch.load(by_id.checkpoint, weights_only=True)["iteration"] == 45
    by_file = _train(tiny_config(outer={"iterations": 60}, eval=quiet), resume=str(by_id.checkpoint))
    assert by_file.run_id == first.run_id and by_file.iterations == 60
    assert torch.equal(straight.meta_params, by_file.meta_params)

    ckpt = torch.load(by_file.checkpoint, weights_only=True)
    assert ckpt["iteration"] == 60
    assert torch.equal(ckpt["meta_params"], by_file.meta_params)


@pytest.mark.parametrize("elapsed,last,stop", [(50.0, 9.0, False), (50.0, 11.0, True), (59.0, 0.5, False), (61.0, 0.0, True)])
def test_max_minutes_stops_before_an_iteration_would_end_past_it(elapsed, last, stop):
    from metaorch.orchestrator.config import OuterConfig
    from metaorch.orchestrator.loop import out_of_time

    assert out_of_time(OuterConfig(max_minutes=1.0), elapsed, last) is stop
    assert out_of_time(OuterConfig(), 10**6, 10**6) is False  # no budget


def test_a_budgeted_run_stops_early_and_keeps_its_last_iteration(ray_session, workdir):
    # The first iteration is never forecast (it runs whatever the budget) and includes the workers'
    # first-call warm-up: 2 s on this machine alone, 4.8 s with another training job beside it.
    budget_s = 6.0
    # A checkpoint every 3 iterations: the forecast adds the last checkpoint's time when one is due
    # (on a busy machine one took over a second, and a forecast of the iteration alone overran).
    result = _train(tiny_config(outer={"iterations": 10**6, "max_minutes": budget_s / 60},
                                eval={"at_end": False, "plot_tasks": 0, "val_every": 10**6}, checkpoint={"every": 3}))  # fmt: skip
    assert 0 < result.iterations < 10**6
    assert result.train_seconds < budget_s + 1.0  # inside it, unless the last pass took far longer than the one before
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["iteration"] == result.iterations and torch.equal(ckpt["meta_params"], result.meta_params)


def test_a_pool_out_of_restarts_fails_the_run_and_keeps_its_checkpoint(ray_session, workdir, monkeypatch, capsys):
    """Workers that die on every try from iteration 7 on: PoolExhausted. The CLI exits 1 with
    one line, the MLflow run is FAILED and the 7 iterations done are in the last checkpoint."""
    import faulty
    from mlflow.tracking import MlflowClient

    from metaorch.orchestrator import cli
    from metaorch.orchestrator.supervised import SupervisedRunner

    ray.cloudpickle.register_pickle_by_value(faulty)  # the workers need not import tests/
    monkeypatch.setattr(SupervisedRunner, "worker_build", staticmethod(functools.partial(faulty.dying_build, iteration=7)))
    (workdir / "job.yaml").write_text(
        "outer: {iterations: 20, meta_batch: 8}\n"
        "workers: {num_workers: 2, num_cpus: 0.5, chunk_size: 2, max_restarts: 1}\n"
        "eval: {at_end: false, plot_tasks: 0}\n"
        "checkpoint: {every: 5}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "job.yaml", "--quiet"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    # ours: "metaorch: error: ..." (Ray's raylet may add its own log lines about the dead workers)
    errors = [line for line in err.splitlines() if line.startswith("metaorch: error:")]
    assert len(errors) == 1 and "Traceback" not in err and "max_restarts" in errors[0], err
    (latest,) = workdir.glob("checkpoints/*/latest.pt")
    saved = torch.load(latest, weights_only=True)
    assert saved["iteration"] == 7
    run = MlflowClient("sqlite:///mlflow.db").get_run(latest.parent.name)
    assert run.info.status == "FAILED"


def test_workers_get_the_gpu_fraction_they_ask_for(ray_session):
    """Two workers share the session's one (logical) GPU; each computes on CUDA where it exists."""
    config = tiny_config()
    pool = WorkerPool(functools.partial(build_components, config), 2, Resources(num_cpus=0.5, num_gpus=0.5))
    try:
        infos = pool.info()
        assert all(len(i["gpu_ids"]) == 1 for i in infos)
        expected = "cuda:0" if torch.cuda.is_available() else "cpu"
        assert all(i["device"] == expected for i in infos)
        params = build_components(config)[1].init_meta_params(0).numpy()
        assert len(pool.run(params, chunk(descriptors(0, "train", 0, 4), 2))) == 2
    finally:
        pool.shutdown()


def _logged_iterations(db: Path) -> int:
    """Iterations whose time the run has logged to its sqlite store so far."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return con.execute("SELECT COUNT(*) FROM metrics WHERE key = 'time/iteration_s'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet, or locked
        return 0


def test_sigterm_inside_a_ray_call_still_exits_143():
    """Ray reports a wait that a signal interrupted as SystemExit(1); the exit stays SIGTERM's."""
    from metaorch.orchestrator.loop import sigterm_as_exit

    with pytest.raises(SystemExit) as exc:
        with sigterm_as_exit():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises here
            except SystemExit:
                raise SystemExit(1) from None  # what ray.wait raises instead
    assert exc.value.code == 128 + signal.SIGTERM


@pytest.mark.parametrize("first", [0, 3])
def test_an_interrupt_inside_the_first_iteration_says_nothing_was_checkpointed(capsys, first):
    """No checkpoint to point at: the message says so instead of staying silent."""
    from types import SimpleNamespace

    from metaorch.orchestrator.loop import run_loop
    from metaorch.orchestrator.tracking_off import NullTracker

    class Interrupted:
        def iteration(self, pool, it):
            raise KeyboardInterrupt

    pool = SimpleNamespace(size=2, restarts=0, stragglers=0, actors=[])
    with pytest.raises(KeyboardInterrupt):
        run_loop(tiny_config(), Interrupted(), pool, NullTracker("r" * 32), first, progress=False)
    expected = "no checkpoint written" if first == 0 else f"the checkpoint it resumed from (iteration {first}) is the latest"
    assert f"[metaorch] interrupted during iteration {first + 1}; {expected}" in capsys.readouterr().out


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(workdir):
    """``ray job stop`` or a scheduler sends SIGTERM: the work done so far must survive."""
    import subprocess
    import sys

    (workdir / "job.yaml").write_text(
        "outer: {iterations: 100000, meta_batch: 8}\n"
        "workers: {num_workers: 1, num_cpus: 1, chunk_size: 4}\n"
        "checkpoint: {every: 100000}\n"
        "ray: {num_cpus: 1}\n"
    )
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metaorch.orchestrator.cli", "train", "job.yaml"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 120
    while _logged_iterations(workdir / "mlflow.db") < 2 and time.monotonic() < deadline:  # progress, whatever the machine's speed
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "interrupted; checkpoint at iteration" in out
    (latest,) = workdir.glob("checkpoints/*/latest.pt")
    saved = torch.load(latest, weights_only=True)
    assert saved["iteration"] > 0
    assert saved["run_id"] == latest.parent.name
