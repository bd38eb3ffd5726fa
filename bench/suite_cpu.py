"""Where the test suite's CPU goes: per test and per file, the CPU seconds of the pytest process
and every process under it (Ray's GCS, raylet and workers, CLI subprocesses, MLflow servers).

``--durations`` gives wall time, which on a busy 2-core machine mostly says what ran beside a
test: `make test` keeps both cores busy, so the suite's wall time is about its CPU seconds over
two. This pytest plugin samples each descendant process's CPU every 0.25 s (a process reaped by a
parent that ignores SIGCHLD, as Ray's raylet does, adds nothing to anyone's ``cutime``) and
appends one JSON line per test to ``$SUITE_CPU_OUT`` (default ``suite_cpu.jsonl``). A process
that lives under 0.25 s is missed, so the figures are a lower bound.

    PYTHONPATH=bench .venv/bin/python -m pytest -p suite_cpu -n 2 --dist loadfile --no-loadscope-reorder
    python bench/suite_cpu.py suite_cpu.jsonl      # per file, then the 25 costliest tests
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time

import pytest

TICKS = os.sysconf("SC_CLK_TCK")
OUT = os.environ.get("SUITE_CPU_OUT", "suite_cpu.jsonl")
_last: dict[tuple[int, int], int] = {}  # (pid, start time) -> CPU ticks (user + system) when last seen
_lock = threading.Lock()


def _sample() -> None:
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
        procs[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19]))
    children = collections.defaultdict(list)
    for pid, (ppid, _, _) in procs.items():
        children[ppid].append(pid)
    stack = [os.getpid()]
    with _lock:
        while stack:
            pid = stack.pop()
            if pid in procs:
                _last[(pid, procs[pid][2])] = procs[pid][1]
            stack.extend(children[pid])


def _ticks() -> int:
    _sample()
    with _lock:
        return sum(_last.values())


def pytest_configure(config) -> None:
    def loop() -> None:
        while True:
            _sample()
            time.sleep(0.25)

    threading.Thread(target=loop, daemon=True, name="suite-cpu").start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Around each test's setup, call and teardown."""
    start, t0 = _ticks(), time.time()
    yield
    row = {"id": item.nodeid, "cpu_s": round((_ticks() - start) / TICKS, 2), "wall_s": round(time.time() - t0, 2),
           "start": t0, "worker": os.environ.get("PYTEST_XDIST_WORKER", "")}  # fmt: skip
    with open(OUT, "a") as f:
        f.write(json.dumps(row) + "\n")


def summary(path: str, top: int = 25) -> None:
    rows = [json.loads(line) for line in open(path)]
    files: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for r in rows:
        f = files[r["id"].split("::")[0]]
        f[0], f[1], f[2] = f[0] + r["cpu_s"], f[1] + r["wall_s"], f[2] + 1
    total = sum(r["cpu_s"] for r in rows)
    print(f"{len(rows)} tests, {total / 60:.1f} CPU-min\n\n  CPU s   wall s  tests  file")
    for name, (cpu, wall, n) in sorted(files.items(), key=lambda kv: -kv[1][0]):
        print(f"{cpu:7.1f}  {wall:7.1f}  {n:5d}  {name}")
    print(f"\n  CPU s   wall s  test ({top} costliest)")
    for r in sorted(rows, key=lambda r: -r["cpu_s"])[:top]:
        print(f"{r['cpu_s']:7.1f}  {r['wall_s']:7.1f}  {r['id']}")


if __name__ == "__main__":
    summary(sys.argv[1] if len(sys.argv) > 1 else OUT)
