"""How a trained PEARL's return grows with its context, through the product's meta-test path.

The meta-test's PEARL plan on the rollout pool (one episode with z from the prior, then each
episode with z inferred from all the episodes before it), with ``--episodes`` episodes instead
of ``eval.episodes``, on the run's held-out goals and on its first training goals, once at the
mean action (as the meta-test) and once sampling. Separates the three reasons a meta-test can
fall short of training: new goals, the mean action, or too little context.

    python bench/pearl_context_curve.py CHECKPOINT [--episodes 11] [--goals 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaorch.algorithms.rl.pearl.agent import PEARLPlan  # noqa: E402
from metaorch.orchestrator import registry  # noqa: E402
from metaorch.orchestrator.checkpoint import load  # noqa: E402
from metaorch.orchestrator.components import build_env_family, build_policy  # noqa: E402
from metaorch.orchestrator.errors import UserError  # noqa: E402
from metaorch.orchestrator.rl_evaluation import test_tasks  # noqa: E402
from metaorch.orchestrator.session import ray_session  # noqa: E402
from metaorch.tasks.base import descriptors  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--episodes", type=int, default=11, help="the prior episode and this many minus one after it")
    ap.add_argument("--goals", type=int, default=20, help="training goals (at most rl.pearl.train_tasks)")
    args = ap.parse_args()
    try:
        ckpt = load(args.checkpoint)
        config = ckpt.config(args.checkpoint)
        if config.algorithm.name != "pearl":
            raise UserError(f"{args.checkpoint}: a PEARL checkpoint is needed, got {config.algorithm.name}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    family = build_env_family(config)
    training = [family.task(d) for d in descriptors(config.seed, "train", 0, min(args.goals, config.rl.pearl.train_tasks))]
    runner = registry.method("pearl").runner_class()
    print("goals, actions: mean return of episode 1 (prior z), 2, 3, ... (z from all episodes before)")
    with ray_session(None, config.ray.num_cpus):
        pool = runner.make_pool(config, 1)  # one worker: the numbers do not depend on the pool's size
        try:
            for name, params in (("held-out", None), ("training", training)):
                tested = config.model_copy(update={"eval": config.eval.model_copy(update={"task_params": params})})
                tasks = test_tasks(tested, family)
                for deterministic in (True, False):
                    plan = PEARLPlan(build_policy(config, family), 1, args.episodes - 1, deterministic_posterior=deterministic)
                    outputs = pool.run_plan(ckpt.meta_params.float(), tasks, plan, config.workers.chunk_size)
                    returns = np.stack([np.concatenate([o["prior_returns"], o["posterior_returns"]]) for o in outputs])
                    label = f"{len(tasks)} {name}, {'mean action' if deterministic else 'sampled'}:"
                    print(f"{label:<28}" + " ".join(f"{r:7.2f}" for r in returns.mean(0)), flush=True)
        finally:
            pool.shutdown()


if __name__ == "__main__":
    main()
