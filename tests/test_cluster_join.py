"""``metaorch train --address`` joins an existing cluster instead of starting one.

The cluster is real: the session's ``ray start --head`` on 127.0.0.1 (tests/conftest.py ``ray_head``).
"""

from __future__ import annotations

import subprocess
import sys


def test_train_joins_a_running_cluster(ray_head, workdir):
    logs = ray_head.temp_dir / "session_latest" / "logs"
    before = set(logs.glob("worker-*.out"))  # the session's head may have run other jobs already
    (workdir / "job.yaml").write_text(
        "outer: {iterations: 5, meta_batch: 4}\n"
        "workers: {num_workers: 2, num_cpus: 1, chunk_size: 2}\n"
        "eval: {tasks: 10, steps: [1], val_tasks: 4, plot_tasks: 0}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "metaorch.orchestrator.cli", "train", "job.yaml", "--address", ray_head.address, "--quiet"],
        cwd=workdir, env=ray_head.env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 iterations" in proc.stdout
    assert "meta-test MSE after 1 inner step(s)" in proc.stdout
    # it joined: the worker actors ran under the head's raylet, whose logs live in its temp dir
    assert sum(":actor_name:WorkerActor" in p.read_text(errors="replace") for p in set(logs.glob("worker-*.out")) - before) >= 2
