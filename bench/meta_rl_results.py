"""Meta-RL results (issue 4): trains a shipped config through the product's API, meta-tests it
on held-out tasks, computes the comparison the target names in the same run, and prints both.

    python bench/meta_rl_results.py bandit            # RL² vs Thompson sampling and UCB1
    python bench/meta_rl_results.py navigation-maml   # MAML-TRPO: pre vs post adaptation
    python bench/meta_rl_results.py navigation-pearl  # PEARL vs an oracle that knows the goal
    python bench/meta_rl_results.py half-cheetah      # MAML-TRPO on HalfCheetahVel, learning curves
    python bench/meta_rl_results.py ml1-reach-maml --set outer.max_minutes=60   # Meta-World success, curves
Add ``--set KEY=VALUE`` to change the config (e.g. ``--set outer.max_minutes=5``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import bench_env  # noqa: E402,F401  (Ray's and MLflow's environment, before either loads)

from metaorch.orchestrator import load_config, train  # noqa: E402
from metaorch.orchestrator.components import build_env_family  # noqa: E402
from metaorch.orchestrator.evaluation import Estimate, estimate  # noqa: E402
from metaorch.orchestrator.rl_evaluation import test_tasks  # noqa: E402

CONFIGS = {
    "bandit": "bandit_rl2.yaml",
    "navigation-maml": "navigation_maml_trpo.yaml",
    "navigation-pearl": "navigation_pearl.yaml",
    "half-cheetah": "half_cheetah_vel_maml_trpo.yaml",
    "ml1-reach-maml": "metaworld_ml1_reach_maml_trpo.yaml",
    "ml1-reach-rl2": "metaworld_ml1_reach_rl2.yaml",
    "ml10-maml": "metaworld_ml10_maml_trpo.yaml",
}
# The training curves each result plots: (metric, label) pairs, the y axis, the PNG under docs/, its title.
PRE_POST = (("train/success_pre", "before adaptation"), ("train/success_post", "after 1 step"))
CURVES = {
    "half-cheetah": (
        (("train/return_pre", "before adaptation"), ("train/return_post", "after 1 step")),
        "mean return (training tasks)", "half_cheetah_vel_curve.png", "MAML-TRPO on HalfCheetahVel, 2 CPU cores",
    ),
    "ml1-reach-maml": (PRE_POST, "success rate (training tasks)", "ml1_reach_maml_trpo_curve.png", "MAML-TRPO on ML1 reach-v3, 2 CPU cores"),
    "ml10-maml": (PRE_POST, "success rate (training tasks)", "ml10_maml_trpo_curve.png", "MAML-TRPO on ML10, 2 CPU cores"),
    "ml1-reach-rl2": (
        (("train/success_first", "first episode of a trial"), ("train/success_last", "last episode")),
        "success rate (training tasks)", "ml1_reach_rl2_curve.png", "RL² on ML1 reach-v3, 2 CPU cores",
    ),
}  # fmt: skip


def thompson(probs: np.ndarray, pulls: int, rng: np.random.Generator) -> float:
    wins, losses, total = np.ones(len(probs)), np.ones(len(probs)), 0.0
    for _ in range(pulls):
        arm = int(np.argmax(rng.beta(wins, losses)))
        r = float(rng.random() < probs[arm])
        wins[arm] += r
        losses[arm] += 1 - r
        total += r
    return total


def ucb1(probs: np.ndarray, pulls: int, rng: np.random.Generator) -> float:
    k = len(probs)
    counts, sums, total = np.zeros(k), np.zeros(k), 0.0
    for t in range(pulls):
        if t < k:
            arm = t
        else:
            arm = int(np.argmax(sums / counts + np.sqrt(2 * np.log(t) / counts)))
        r = float(rng.random() < probs[arm])
        counts[arm] += 1
        sums[arm] += r
        total += r
    return total


STARTS = 50  # reset seeds per goal for the baselines: random starts (oyster's point robot) are averaged over


def navigation_return(env, goal: np.ndarray, seed: int, oracle: bool) -> float:
    """One episode from reset seed ``seed``: straight at the goal as fast as the action clip
    allows (the oracle), or standing still; until the episode ends."""
    pos, _ = env.reset(seed=seed)
    total = 0.0
    for _ in range(env.horizon):
        action = np.clip(goal - pos, -env.max_step, env.max_step) if oracle else np.zeros_like(pos)
        pos, reward, terminated, truncated, _ = env.step(action.astype(np.float32))
        total += reward
        if terminated or truncated:
            break
    return total


def navigation_baseline(family, goals: list[np.ndarray], oracle: bool) -> np.ndarray:
    """Per goal, the baseline's mean return over ``STARTS`` starts: the test episodes' starts are
    drawn from the same distribution (one start: MAML's origin, where every seed gives the same)."""
    return np.array([np.mean([navigation_return(family.build({"goal": g}), g, s, oracle) for s in range(STARTS)]) for g in goals])


def show(name: str, est: Estimate) -> str:
    return f"{name}: {est.mean:.3f} +/- {est.ci95:.3f} (95% CI, {est.n} tasks)"


def learning_curves(result: str, run_id: str, uri: str, out: Path | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    keys, ylabel, png, title = CURVES[result]
    out = out or ROOT / "docs" / png
    for key, label in keys:
        hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        ax.plot([m.step for m in hist], [m.value for m in hist], label=label)
        print(f"{key}: " + " ".join(f"{m.step}:{m.value:.3f}" for m in hist))
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"learning curves: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", choices=sorted(CONFIGS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="bench_out", help="tracking store and checkpoints go here")
    parser.add_argument("--curve", default=None, help="where the learning-curve PNG goes (default: under docs/)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)
    config = load_config(ROOT / "configs" / CONFIGS[args.result], args.overrides)
    uri = f"sqlite:///{out}/mlflow.db"
    t0 = time.perf_counter()
    run = train(config, tracking_uri=uri, progress=False)
    print(f"{args.result}: {run.iterations} iterations, {run.train_seconds / 60:.1f} min of training, run {run.run_id}")
    test = run.test
    if args.result != "bandit":  # a bandit trial has an estimate per pull: only its total is shown
        for key, est in test.items():
            print(show(key, est))
    if args.result == "bandit":
        family = build_env_family(config)
        pulls = config.task.trial_episodes
        probs = [family.task(t.descriptor)["probs"] for t in test_tasks(config)]
        rng = np.random.default_rng(12345)
        ts = estimate(np.array([thompson(p, pulls, rng) for p in probs]))
        ucb = estimate(np.array([ucb1(p, pulls, rng) for p in probs]))
        rl2 = test["return_trial"]
        print(show("RL2 total reward", rl2))
        print(show("Thompson sampling", ts))
        print(show("UCB1", ucb))
        print(f"RL2 / Thompson = {rl2.mean / ts.mean:.3f} (target >= 0.95); RL2 - UCB1 = {rl2.mean - ucb.mean:+.2f} (target > 0)")
    elif args.result in ("navigation-maml", "half-cheetah"):
        pre, post = test["return_step_0"], test["return_step_1"]
        if args.result == "navigation-maml":
            print(f"|post| / |pre| = {abs(post.mean) / abs(pre.mean):.3f} (target <= 0.5)")
        else:
            print(f"post - pre = {post.mean - pre.mean:+.1f}; CIs overlap: {pre.mean + pre.ci95 >= post.mean - post.ci95} (target: no)")
            print(show("paired gain after 1 step", test["gain_step_1"]))
    elif args.result == "navigation-pearl":
        family = build_env_family(config)
        goals = [family.task(t.descriptor)["goal"] for t in test_tasks(config)]
        oracle, still = estimate(navigation_baseline(family, goals, True)), estimate(navigation_baseline(family, goals, False))
        print(show("oracle (knows the goal)", oracle))
        print(show("standing still", still))
        after = test["return_episode_2"]
        print(f"PEARL after its context episode: {(after.mean - still.mean) / (oracle.mean - still.mean):.3f} "
              "of the way from standing still to the oracle (target >= 0.8)")
    if args.result in CURVES:
        learning_curves(args.result, run.run_id, uri, Path(args.curve) if args.curve else None)
    print(f"wall time {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
