"""Wall-clock of Meta-World's reference budgets on 4, 16 and 64 nodes of 16 cores, projected
from rates measured on this machine in one run (issue 17).

The reference budgets (the Meta-World+ authors' metaworld-algorithms configurations): ML10
MAML-TRPO 15 M environment steps, ML10 RL² 20 M, ML45 MAML-TRPO and ML45 RL² 90 M each, with
the hyperparameters of ``configs/metaworld_{ml10,ml45}_{maml_trpo,rl2}.yaml``.

Measured, per reference, on ``--workers`` rollout workers (1 CPU each) and then the driver:

  rollouts  the config's own runner builds the pool (``Runner.make_pool``: workers built by
            ``build_rl``, as training builds them) and runs its own plan (MAML-TRPO: episodes
            at θ, an inner step, episodes at θ′, with the 256-256 Gaussian MLP; RL²: a trial of
            10 episodes with the 256 GRU) through ``RolloutPool.run_plan``, one task per worker
            and call (a worker per task, as on a cluster with ``workers.chunk_size=1``), the
            train classes in turn, for ``--seconds``. From it: env steps per second per core
            (all tasks' steps over their time on the workers), the slowest task's rate (an
            iteration waits for its slowest task), the driver's time per step received (each
            call's time beyond its slowest task: parameters out, trajectories back) and the
            workers' peak memory.
  learner   one iteration of the runner's own ``iteration`` on the driver (MAML-TRPO: the
            TRPO outer step through the inner step; RL²: PPO epochs), the pool's outputs
            replaced by the real trajectories just collected, repeated to the config's
            meta-batch (``--learner-tasks N``, for smoke checks: on N tasks, scaled by
            meta-batch / N; close for MAML-TRPO, which builds a graph per task, too high for
            RL², whose GRU step costs about as much for a few trials as for one).

Projection, per reference and node count (``project``, no timing in it):

  steps / iteration  meta-batch x each task's steps (MAML-TRPO: 2 x rollouts per task x 500;
                     RL²: trials x 10 episodes x 500); iterations = budget / that, rounded up
  rollout            per iteration: the busiest worker's tasks (ceil(chunks / cores) chunks),
                     each at the slowest measured task's rate, plus the driver's time for the
                     iteration's steps
  learner            per iteration as measured, serial on one node (the head), after the rollouts
  wall-clock         iterations x (rollout + learner); learner share = learner / wall-clock
  all cores busy     the same with rollouts at steps / (rate per core x cores): what a run whose
                     tasks could be split over every core would take

Assumptions: rollouts scale linearly with workers (bench/scaling.py --env ml45 measures it for
1 and 2 nodes); the per-core rate is this machine's (2 cores, shared with the driver; an x86
16-vCPU instance such as c7i.4xlarge has 8 physical cores, so its per-vCPU rate is lower);
the learner runs on one node with ``--learner-threads`` torch threads, serially after each
iteration's rollouts (no overlap); meta-tests, checkpoints and MLflow logging are left out. A worker holds whole tasks,
so at most meta-batch / chunk_size workers are busy however large the cluster.

    python bench/projection.py [--seconds 20] [--workers 2] [--only ml10_maml_trpo,...]
        [--nodes 4,16,64] [--cores-per-node 16] [--learner-tasks N] [--max-path-length L (smoke checks)]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_env  # noqa: E402,F401  (Ray's and MLflow's environment, before either loads)

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Reference:
    key: str
    label: str
    config: str  # relative to the repository root
    budget: float  # environment steps


REFERENCES = (
    Reference("ml10_maml_trpo", "ML10 MAML-TRPO", "configs/metaworld_ml10_maml_trpo.yaml", 15e6),
    Reference("ml10_rl2", "ML10 RL²", "configs/metaworld_ml10_rl2.yaml", 20e6),
    Reference("ml45_maml_trpo", "ML45 MAML-TRPO", "configs/metaworld_ml45_maml_trpo.yaml", 90e6),
    Reference("ml45_rl2", "ML45 RL²", "configs/metaworld_ml45_rl2.yaml", 90e6),
)


@dataclass(frozen=True)
class Shape:
    """One iteration's work: ``tasks`` tasks (the meta-batch), each ``steps_per_task`` env steps."""

    tasks: int
    steps_per_task: int

    @property
    def steps(self) -> int:
        return self.tasks * self.steps_per_task


@dataclass(frozen=True)
class Measured:
    rate: float  # env steps / s per core, mean over tasks (worker time)
    slowest: float  # env steps / s of the slowest task measured
    driver_s_per_step: float  # driver time per step received, beyond the workers' time
    learner_s: float  # learner seconds per iteration


@dataclass(frozen=True)
class Row:
    nodes: int
    cores: int
    steps_per_iteration: int
    iterations: int
    busy: int  # workers with a task
    rollout_s: float  # all iterations
    learner_s: float
    wall_s: float
    learner_share: float
    all_busy_wall_s: float  # rollouts spread over every core


def shape(config: Any) -> Shape:
    """Tasks and env steps per task of one training iteration of ``config`` (episodes run to the horizon)."""
    from metaorch.orchestrator.components import build_env_family

    horizon = build_env_family(config).horizon  # RL²: the trial's, trial_episodes x max_path_length
    if config.algorithm.name == "maml_trpo":  # pre- and post-adaptation episodes; inner steps reuse the pre ones
        per_task = 2 * config.rl.maml_trpo.episodes_per_task * horizon
    elif config.algorithm.name == "rl2":
        per_task = config.rl.ppo.trials_per_task * horizon
    else:
        raise ValueError(f"algorithm.name={config.algorithm.name}: the projection knows maml_trpo and rl2")
    return Shape(config.outer.meta_batch, per_task)


def project(s: Shape, budget: float, m: Measured, nodes: int, cores_per_node: int = 16, chunk_size: int = 1) -> Row:
    """Wall-clock of ``budget`` env steps on ``nodes`` x ``cores_per_node`` cores (one worker per core)."""
    cores = nodes * cores_per_node
    iterations = math.ceil(budget / s.steps)
    chunks = math.ceil(s.tasks / chunk_size)
    busiest = math.ceil(chunks / cores) * min(chunk_size, s.tasks)  # tasks on the busiest worker
    driver = s.steps * m.driver_s_per_step
    rollout = busiest * s.steps_per_task / m.slowest + driver
    all_busy = s.steps / (m.rate * cores) + driver
    wall = iterations * (rollout + m.learner_s)
    return Row(
        nodes, cores, s.steps, iterations, min(cores, chunks), iterations * rollout, iterations * m.learner_s, wall,
        iterations * m.learner_s / wall, iterations * (all_busy + m.learner_s),
    )  # fmt: skip


# -- measurement -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    """The runner's plan, timed on the worker (one task per worker and call: the task's own time)."""

    plan: Any

    def __call__(self, sample, params) -> dict[str, Any]:
        start = time.perf_counter()
        out = self.plan(sample, params)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out | {"bench_seconds": time.perf_counter() - start, "bench_rss_mb": rss_mb}


class Replay:
    """The pool, for the runner's ``iteration``: real outputs, repeated to the meta-batch."""

    def __init__(self, outputs: list[dict[str, Any]]):
        self.outputs = outputs

    def run_plan(self, params, tasks, plan, chunk_size: int = 1) -> list[dict[str, Any]]:
        return [self.outputs[i % len(self.outputs)] for i in range(len(tasks))]


def _steps(output: dict[str, Any]) -> float:
    from metaorch.algorithms.rl.trajectories import Trajectories

    return sum(float(v.mask.sum()) for v in output.values() if isinstance(v, Trajectories))


def _runner(config: Any) -> Any:
    from metaorch.orchestrator import registry

    runner = registry.method(config.algorithm.name).runner_class()(config)
    runner.start(runner.initial_params())
    return runner


def measure_rollouts(config: Any, workers: int, seconds: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Rates of the config's plan on ``workers`` workers, and the last call's outputs (real trajectories)."""
    from metaorch.tasks.base import TaskDescriptor

    runner = _runner(config)
    pool = type(runner).make_pool(config, workers)
    plan, params = Timed(runner.plan), runner.worker_params()

    def tasks(call: int) -> list[TaskDescriptor]:  # indices go on from call to call: the classes take turns
        return [TaskDescriptor(config.seed, "train", call, call * workers + k) for k in range(workers)]

    try:
        t0 = time.perf_counter()
        pool.run_plan(params, tasks(0), plan)  # warm up: metaworld's benchmark and the envs built in each worker
        warm = time.perf_counter() - t0
        steps = task_s = driver_s = 0.0
        slowest, rss, call, start, classes = math.inf, 0.0, 0, time.perf_counter(), set()
        while time.perf_counter() - start < seconds:
            call += 1
            classes.update(runner.family.label(runner.family.task(d)) for d in tasks(call))
            t0 = time.perf_counter()
            outputs = pool.run_plan(params, tasks(call), plan)
            took = time.perf_counter() - t0
            for out in outputs:
                n = _steps(out)
                steps, task_s = steps + n, task_s + out["bench_seconds"]
                slowest, rss = min(slowest, n / out["bench_seconds"]), max(rss, out["bench_rss_mb"])
            driver_s += max(0.0, took - max(out["bench_seconds"] for out in outputs))
        outputs = copy.deepcopy(outputs)  # out of the object store, which goes with ray.shutdown
    finally:
        pool.shutdown()
    stats = {"rate": steps / task_s, "slowest": slowest, "driver_s_per_step": driver_s / steps, "steps_per_task": steps / (call * workers)}
    return stats | {"tasks": call * workers, "classes": len(classes), "warm_up_s": warm, "rss_mb": rss}, outputs


def measure_learner(config: Any, outputs: list[dict[str, Any]], tasks: int | None) -> float:
    """Seconds of one iteration of the runner's ``iteration`` on the driver, scaled to the meta-batch
    (``tasks``: measured on that many of the rollouts instead, where the full step does not fit)."""
    from metaorch.orchestrator.tune_space import trial_config

    measured = trial_config(config, {"outer.meta_batch": tasks}) if tasks else config
    runner = _runner(measured)
    start = time.perf_counter()
    runner.iteration(Replay(outputs), 0)
    return (time.perf_counter() - start) * config.outer.meta_batch / measured.outer.meta_batch


# -- the run ---------------------------------------------------------------------------------


def config_classes(config: Any) -> tuple[str, ...]:
    from metaorch.tasks.rl.metaworld import class_names

    options = config.task.options
    return class_names(options.get("benchmark", "ML1"), options.get("env_name", "reach-v3"))["train"]


def _fail(message: str) -> None:
    print(f"projection: {message}", file=sys.stderr)
    sys.exit(2)


def _positive_ints(text: str, field: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        _fail(f"{field}={text}: a comma-separated list of integers >= 1")
    return values


def table(label: str, s: Shape, budget: float, m: Measured, nodes: list[int], cores_per_node: int, chunk_size: int) -> list[str]:
    lines = []
    for n in nodes:
        r = project(s, budget, m, n, cores_per_node, chunk_size)
        lines.append(
            f"| {label} | {n} x {cores_per_node} | {r.steps_per_iteration:,} | {r.iterations} | {r.busy} | {r.rollout_s / 3600:.2f} | "
            f"{r.learner_s / 3600:.2f} | {r.wall_s / 3600:.2f} | {100 * r.learner_share:.0f}% | {r.all_busy_wall_s / 3600:.2f} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="rollout measurement per reference (after warm-up)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="rollout workers, 1 CPU each (default: this machine's cores)")
    p.add_argument("--only", default=",".join(r.key for r in REFERENCES), help="references to measure, comma-separated")
    p.add_argument("--nodes", default="4,16,64", help="node counts to project")
    p.add_argument("--cores-per-node", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=1, help="workers.chunk_size of the projected runs (tasks per chunk)")
    p.add_argument("--learner-tasks", type=int, default=None, help="smoke checks: the learner on this many tasks, scaled (default: the meta-batch)")
    p.add_argument("--learner-threads", type=int, default=os.cpu_count() or 2, help="torch threads of the learner")
    p.add_argument("--max-path-length", type=int, default=None, help="shorter Meta-World episodes: smoke checks only")
    args = p.parse_args()
    by_key = {r.key: r for r in REFERENCES}
    chosen = [k.strip() for k in args.only.split(",")]
    for key in chosen:
        if key not in by_key:
            _fail(f"--only={args.only}: {key!r} is not one of {list(by_key)}")
    nodes = _positive_ints(args.nodes, "--nodes")
    if not args.seconds > 0:
        _fail(f"--seconds={args.seconds}: must be > 0")
    counts = {"--workers": args.workers, "--cores-per-node": args.cores_per_node, "--chunk-size": args.chunk_size, "--learner-threads": args.learner_threads}
    for field, value in (counts | ({"--learner-tasks": args.learner_tasks} if args.learner_tasks is not None else {})).items():
        if value < 1:
            _fail(f"{field}={value}: must be an integer >= 1")
    if args.max_path_length is not None and not 1 <= args.max_path_length <= 500:
        _fail(f"--max-path-length={args.max_path_length}: an integer from 1 to 500")

    import ray
    import torch

    from metaorch.orchestrator.config import load_config

    overrides = ["workers.num_cpus=1", "workers.threads=1", "workers.chunk_size=1", f"workers.num_workers={args.workers}"]
    if args.max_path_length is not None:
        overrides.append(f"task.options.max_path_length={args.max_path_length}")
    began = time.perf_counter()
    print(f"{args.workers} rollout workers, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; learner: {args.learner_threads} torch threads", flush=True)
    results: list[tuple[Reference, Any, Shape, Measured, dict[str, float]]] = []
    for ref in (by_key[k] for k in chosen):
        config = load_config(ROOT / ref.config, overrides)
        ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="ERROR", address="local", log_to_driver=False)
        try:
            stats, outputs = measure_rollouts(config, args.workers, args.seconds)
        finally:
            ray.shutdown()
        torch.set_num_threads(args.learner_threads)
        learner_s = measure_learner(config, outputs, args.learner_tasks)
        m = Measured(stats["rate"], stats["slowest"], stats["driver_s_per_step"], learner_s)
        results.append((ref, config, shape(config), m, stats))
        print(
            f"  {ref.label}: {m.rate:.0f} env steps/s per core (slowest task {m.slowest:.0f}), {stats['tasks']} tasks, "
            f"learner {learner_s:.1f} s/iteration; warm-up {stats['warm_up_s']:.0f} s ({time.perf_counter() - began:.0f} s so far)",
            flush=True,
        )

    learner_note = f"measured on {args.learner_tasks} tasks, scaled to the meta-batch" if args.learner_tasks else "measured on the full meta-batch"
    print(f"\nmeasured on this machine (rollout workers: {args.workers} x 1 CPU, {args.seconds:g} s each; learner: {args.learner_threads} threads, {learner_note})")
    print(
        "| reference | env steps / s per core | slowest task, steps / s | tasks (classes) measured | driver us per step "
        "| steps per task (config / measured) | learner s / iteration | worker peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for ref, config, s, m, st in results:
        print(
            f"| {ref.label} | {m.rate:.0f} | {m.slowest:.0f} | {st['tasks']} ({st['classes']} of {len(config_classes(config))}) | "
            f"{1e6 * m.driver_s_per_step:.1f} | {s.steps_per_task:,} / {st['steps_per_task']:,.0f} | {m.learner_s:.1f} | {st['rss_mb']:.0f} |"
        )
    print(f"\nprojection: nodes of {args.cores_per_node} cores, one worker per core, workers.chunk_size={args.chunk_size}; hours")
    print("| reference | nodes x cores | steps / iteration | iterations | busy workers | rollout h | learner h | wall-clock h | learner share | wall-clock h if every core were busy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for ref, config, s, m, _ in results:
        print("\n".join(table(ref.label, s, ref.budget, m, nodes, args.cores_per_node, args.chunk_size)))
    for ref, _, s, _, _ in results:  # the measurement ran with chunk_size 1; the shipped config's own value:
        c = load_config(ROOT / ref.config).workers.chunk_size
        if c != args.chunk_size:
            print(f"note: {ref.config} has workers.chunk_size={c}, which keeps at most {math.ceil(s.tasks / c)} of its workers busy: run it with --set workers.chunk_size={args.chunk_size}")
    print(
        "\nassumptions: rollouts scale linearly with workers (bench/scaling.py --env ml45: 1 -> 2 nodes); per-core rates from this "
        f"{os.cpu_count()}-core machine (an x86 16-vCPU instance has 8 physical cores); the learner on one node, serial after each "
        "iteration's rollouts; no meta-test, checkpoint or logging time."
    )
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
