"""``metaorch train --address`` joins an existing cluster instead of starting one.

The cluster is real: ``ray start --head`` on 127.0.0.1, stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture
def head():
    """``ray start --head --block``: ending that one process stops this head and nothing else."""
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    temp_dir = Path("/tmp") / f"ray-metaorch-{port}"  # short: Ray's socket paths must fit 107 bytes
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(0.5)
        time.sleep(2)  # the raylet registers after the GCS listens
        yield f"127.0.0.1:{port}", env, temp_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_train_joins_a_running_cluster(head, workdir):
    address, env, head_dir = head
    (workdir / "job.yaml").write_text(
        "outer: {iterations: 5, meta_batch: 4}\n"
        "workers: {num_workers: 2, num_cpus: 1, chunk_size: 2}\n"
        "eval: {tasks: 10, steps: [1], val_tasks: 4, plot_tasks: 0}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "metaorch.orchestrator.cli", "train", "job.yaml", "--address", address, "--quiet"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 iterations" in proc.stdout
    assert "meta-test MSE after 1 inner step(s)" in proc.stdout
    # it joined: the worker actors ran under the head's raylet, whose logs live in its temp dir
    logs = (head_dir / "session_latest" / "logs").glob("worker-*.out")
    assert sum(":actor_name:WorkerActor" in p.read_text(errors="replace") for p in logs) >= 2
