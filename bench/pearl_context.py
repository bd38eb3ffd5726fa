"""What one context episode tells a trained PEARL on 2-D navigation (issue 4's PEARL target).

For each goal: one episode with z from the prior (stochastic actions, as the meta-test's
first episode), then one with z at the posterior mean of that episode's transitions and
the mean action. Prints both returns, how close the context episode came to the goal,
where the posterior episode ended, and the posterior episode's result grouped by that
closest approach: if the encoder only localises the goal as well as the nearest point the
context visited, the two distances track each other. As a yardstick for the encoder it also
prints how well exact least squares locates the goal from the same context transitions,
i.e. how much the episode itself tells, and how far each goal lies off the straight line the
context path follows: rewards that are distances cannot tell a goal from its mirror image
across a straight path, so an encoder that missed the path's bends would end its posterior
episodes on the line, as far from the goal as the goal is from the line.

    python bench/pearl_context.py CHECKPOINT [--goals 100] [--seed 123] [--train]

CHECKPOINT: a ``navigation_2d`` PEARL checkpoint written by ``metaorch train``; ``--train``
takes the goals of the run's training tasks instead of fresh ones (do the held-out goals
fail because they are new?).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaorch.algorithms.rl.pearl import make_context  # noqa: E402
from metaorch.orchestrator.checkpoint import load  # noqa: E402
from metaorch.orchestrator.components import build_env_family, build_policy  # noqa: E402
from metaorch.orchestrator.errors import UserError  # noqa: E402
from metaorch.tasks.base import descriptors  # noqa: E402


def episode(policy, actor: torch.Tensor, z: torch.Tensor, env, seed: int, deterministic: bool) -> tuple[list[tuple], float]:
    """The episode's transitions as context rows' parts (obs, action, reward, next obs) and its return."""
    obs, _ = env.reset(seed=seed)
    rows, total = [], 0.0
    for _ in range(env.horizon):
        with torch.no_grad():
            action, _, _ = policy.act(policy.with_latent(actor, z), torch.as_tensor(obs)[None], None, deterministic)
        action = action[0].numpy()
        nxt, reward, terminated, truncated, _ = env.step(action)
        rows.append((obs, action, reward, nxt))
        total += reward
        obs = nxt
        if terminated or truncated:
            break
    return rows, total


def triangulate(next_obs: np.ndarray, rewards: np.ndarray) -> tuple[np.ndarray, float]:
    """The goal that explains every reward r = -|s' - g| exactly, and how well posed that is.

    ``r² = |s'|² - 2 s'·g + |g|²`` is linear in (g, |g|²), so three visited points off one
    line fix g. Returns g and the system's smallest singular value (0 when the points are
    collinear and the goal's mirror image explains the rewards as well).
    """
    s = next_obs.astype(np.float64)
    lhs = np.column_stack([2 * s, -np.ones(len(s))])
    rhs = (s**2).sum(1) - rewards.astype(np.float64) ** 2
    theta, _, _, singular = np.linalg.lstsq(lhs, rhs, rcond=None)
    return theta[:2], float(singular[-1])


def off_path(points: np.ndarray, goal: np.ndarray) -> tuple[float, float]:
    """How far the goal lies from the straight line that best fits the visited points, and how
    far those points spread off that line (its second singular value over the first).

    Rewards are distances, so along a straight path the goal and its mirror image across the
    path explain them equally well; an estimate that cannot tell the two apart settles on the
    line, the goal's distance from it away.
    """
    centre = points.astype(np.float64).mean(0)
    _, spread, axes = np.linalg.svd(points - centre, full_matrices=False)
    offset = goal - centre
    across = offset - (offset @ axes[0]) * axes[0]
    return float(np.linalg.norm(across)), float(spread[-1] / max(spread[0], 1e-12))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--goals", type=int, default=100)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--train", action="store_true", help="the run's training goals (at most rl.pearl.train_tasks of them)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # the actions' noise
    try:
        ckpt = load(args.checkpoint)
        config = ckpt.config(args.checkpoint)
        if config.algorithm.name != "pearl" or config.task.name != "navigation_2d":
            raise UserError(f"{args.checkpoint}: a PEARL navigation_2d checkpoint is needed, got {config.algorithm.name} on {config.task.name}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    family = build_env_family(config)
    policy = build_policy(config, family)
    actor, encoder = policy.split(ckpt.meta_params.float())
    rng, gen = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)
    if args.train:
        goals = [family.task(d)["goal"] for d in descriptors(config.seed, "train", 0, min(args.goals, config.rl.pearl.train_tasks))]
    else:
        goals = [family.sample(rng)["goal"] for _ in range(args.goals)]
    out = []
    for i, goal in enumerate(goals):
        env = family.build({"goal": goal})
        context, prior_return = episode(policy, actor, torch.randn(policy.config.latent_dim, generator=gen), env, i, False)
        obs, act, rew, nxt = (np.asarray(x, np.float32) for x in zip(*context))
        with torch.no_grad():
            mu, _ = policy.posterior(encoder, torch.as_tensor(make_context(obs, act, rew, nxt, policy.config.use_next_obs)))
        posterior, post_return = episode(policy, actor, mu, env, i, True)
        closest = float(np.linalg.norm(nxt - goal, axis=1).min())
        solved, conditioning = triangulate(nxt, rew)
        end = float(np.linalg.norm(posterior[-1][3] - goal))
        across, straightness = off_path(nxt, goal)
        out.append((prior_return, post_return, closest, end, float(np.linalg.norm(solved - goal)), conditioning, across, straightness))
    prior, post, closest, end, solved, conditioning, across, straightness = np.asarray(out).T
    print(f"{len(goals)} {'training' if args.train else 'held-out'} goals: return {prior.mean():.2f} in the context episode, {post.mean():.2f} after it")
    print(f"context episode's closest approach to the goal: median {np.median(closest):.3f}")
    print(f"posterior episode's final distance to the goal: median {np.median(end):.3f}; correlation with the closest approach {np.corrcoef(closest, end)[0, 1]:.2f}")
    print(
        f"exact least squares on the same context: within 0.01 of the goal for {(solved < 0.01).sum()} goals, "
        f"median error {np.median(solved):.1e}; smallest singular value median {np.median(conditioning):.3f}"
    )
    print(
        f"the goal's distance from the context path's line: median {np.median(across):.3f} (the path's spread off it: "
        f"median {np.median(straightness):.3f} of its length); the posterior episode's end against it: "
        f"correlation {np.corrcoef(across, end)[0, 1]:.2f}, median end / distance {np.median(end / np.maximum(across, 1e-6)):.2f}"
    )
    for bound in (0.05, 0.1, 0.2):
        near = closest < bound
        if near.any():
            print(f"  context within {bound}: {near.sum():3d} goals, posterior ends at median {np.median(end[near]):.3f}, return {post[near].mean():.2f}")


if __name__ == "__main__":
    main()
