"""Meta-RL algorithms (algorithms/rl) on trajectories built by hand: no Ray, no gymnasium.

Expected values come from other code paths: per-episode Python loops, closed forms,
explicit Hessians and finite differences, torch.distributions. The learning tests run each
algorithm on a toy task family written here as a few lines of tensor code (a 1-D goal, a
two-armed bandit) and compare against the same measure before training.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution, kl_divergence

from metaorch.algorithms.rl.batching import concat_episodes, masked_mean, to_tensors, transitions
from metaorch.algorithms.rl.maml_trpo import (
    MAMLPlan,
    MAMLTRPOConfig,
    MAMLTRPOLearner,
    _adapt,
    _prepare,
    adapt,
    conjugate_gradient,
    fisher_vector_product,
    fvp_subset,
    line_search,
    mean_kl,
    surrogate,
)
from metaorch.algorithms.rl.pearl import (
    PEARL,
    PEARLConfig,
    PEARLPlan,
    PEARLPolicy,
    ReplayBuffer,
    kl_to_unit_gaussian,
    make_context,
    product_of_gaussians,
    squash,
)
from metaorch.algorithms.rl.policies import GaussianMLPPolicy
from metaorch.algorithms.rl.returns import LinearFeatureBaseline, baseline_advantages, discounted_returns, gae, normalize
from metaorch.algorithms.rl.config import PPOConfig
from metaorch.algorithms.rl.rl2 import GRUPolicy, RL2Learner, RL2Plan, ppo_loss
from metaorch.algorithms.rl.trajectories import Trajectories
from metaorch.tasks.base import TaskDescriptor, descriptors

F64 = torch.float64


# -- toys: trajectories from a step function, sampled like a rollout worker ---------------------


def rollout(
    policy,
    params: torch.Tensor,
    episodes: int,
    horizon: int,
    reset: Callable[[int], torch.Tensor],
    step: Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]],
    gen: torch.Generator,
    discrete: bool = False,
    deterministic: bool = False,
) -> Trajectories:
    """``episodes`` episodes of a batched toy environment, stepping ``policy.act`` with its state."""
    obs = reset(episodes)
    state = policy.initial_state(episodes)
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("o", "a", "r", "lp", "n")}
    with torch.no_grad():
        for t in range(horizon):
            if discrete:
                noise = torch.rand(episodes, generator=gen)
            else:
                noise = torch.randn(episodes, policy.act_dim, generator=gen)
            a, lp, state = policy.act(params, obs, state, deterministic, noise=noise)
            nxt, r = step(obs, a, t)
            for k, v in zip("o a r lp n".split(), (obs, a, r, lp, nxt)):
                cols[k].append(v)
            obs = nxt
    st = lambda k: torch.stack(cols[k]).numpy()  # noqa: E731
    return Trajectories(
        observations=st("o").astype(np.float32),
        actions=st("a") if discrete else st("a").astype(np.float32),
        rewards=st("r").astype(np.float32),
        log_probs=st("lp").astype(np.float32),
        next_observations=st("n").astype(np.float32),
        terminated=np.zeros((horizon, episodes), bool),
        mask=np.ones((horizon, episodes), np.float32),
    )


def random_trajectories(T: int, E: int, obs_dim: int, act_dim: int, seed: int, ragged: bool = True) -> Trajectories:
    """Random episodes with random lengths (some terminated), zero-padded like a worker's."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, size=E) if ragged else np.full(E, T)
    mask = (np.arange(T)[:, None] < lengths[None, :]).astype(np.float32)
    terminated = np.zeros((T, E), bool)
    for e, n in enumerate(lengths):
        terminated[n - 1, e] = n < T and rng.random() < 0.5
    obs = rng.normal(size=(T, E, obs_dim)).astype(np.float32) * mask[..., None]
    return Trajectories(
        observations=obs,
        actions=rng.normal(size=(T, E, act_dim)).astype(np.float32) * mask[..., None],
        rewards=rng.normal(size=(T, E)).astype(np.float32) * mask,
        log_probs=np.zeros((T, E), np.float32),
        next_observations=np.roll(obs, -1, 0),
        terminated=terminated,
        mask=mask,
    )


# -- returns, GAE, baseline ----------------------------------------------------------------


def test_discounted_returns_and_gae_match_a_per_episode_loop():
    traj = random_trajectories(T=12, E=9, obs_dim=2, act_dim=1, seed=0)
    b = to_tensors(traj)
    b = {k: v.double() for k, v in b.items()}
    values = torch.randn(12, 9, dtype=F64, generator=torch.Generator().manual_seed(1))
    bootstrap = torch.randn(12, 9, dtype=F64, generator=torch.Generator().manual_seed(2))
    gamma, lam = 0.9, 0.8
    ret = discounted_returns(b["rewards"], b["mask"], gamma)
    adv = gae(b["rewards"], values, b["mask"], gamma, lam, b["terminated"], bootstrap)
    for e in range(9):
        n = int(traj.mask[:, e].sum())
        r, v = traj.rewards[:n, e].astype(float), values[:n, e].tolist()
        term = bool(traj.terminated[n - 1, e])
        g, a = 0.0, 0.0
        for t in reversed(range(n)):
            g = r[t] + gamma * g
            assert ret[t, e].item() == pytest.approx(g, abs=1e-9)
            if t == n - 1:
                nv = 0.0 if term else bootstrap[t, e].item()
                a = r[t] + gamma * nv - v[t]
            else:
                a = r[t] + gamma * v[t + 1] - v[t] + gamma * lam * a
            assert adv[t, e].item() == pytest.approx(a, abs=1e-9)
        assert torch.all(ret[n:, e] == 0) and torch.all(adv[n:, e] == 0)
    # lambda = 1 without bootstrap: returns minus values
    full = gae(b["rewards"], values, b["mask"], gamma, 1.0, b["terminated"])
    assert torch.allclose(full, (ret - values) * b["mask"])


def test_normalize_uses_real_steps_only():
    traj = random_trajectories(T=10, E=6, obs_dim=1, act_dim=1, seed=3)
    b = to_tensors(traj)
    x = torch.randn(10, 6) + 5.0
    x_padded = torch.where(b["mask"] > 0, x, torch.full_like(x, 1e6))
    out = normalize(x_padded, b["mask"])
    real = out[b["mask"] > 0]
    assert real.mean().abs() < 1e-5 and (real.var(unbiased=False) - 1).abs() < 1e-4
    assert torch.all(out[b["mask"] == 0] == 0)


def test_linear_baseline_recovers_a_target_linear_in_its_features():
    traj = random_trajectories(T=30, E=8, obs_dim=3, act_dim=1, seed=4)
    b = to_tensors(traj)
    feats = LinearFeatureBaseline.features(b["observations"], b["mask"])
    w = torch.randn(feats.shape[-1], generator=torch.Generator().manual_seed(5))
    target = feats @ w
    baseline = LinearFeatureBaseline(reg_coeff=1e-10).fit(b["observations"], target, b["mask"])
    pred = baseline.predict(b["observations"], b["mask"])
    assert torch.allclose(pred, target, atol=1e-3)
    assert torch.all(pred[b["mask"] == 0] == 0)


def test_linear_baseline_fits_degenerate_features_and_fails_loudly_on_nan():
    obs = torch.zeros(5, 4, 2)  # obs and obs² columns all zero: singular without the ridge
    mask = torch.ones(5, 4)
    returns = torch.arange(5.0).view(5, 1).expand(5, 4)
    pred = LinearFeatureBaseline().fit(obs, returns, mask).predict(obs, mask)
    assert torch.isfinite(pred).all() and torch.allclose(pred, returns, atol=1e-2)
    with pytest.raises(RuntimeError, match="baseline fit failed"):
        LinearFeatureBaseline().fit(obs, torch.full((5, 4), float("nan")), mask)


# -- TRPO machinery ------------------------------------------------------------------------


def test_conjugate_gradient_solves_an_spd_system():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 8, generator=g, dtype=F64)
    spd = a @ a.T + 0.5 * torch.eye(8, dtype=F64)
    b = torch.randn(8, generator=g, dtype=F64)
    x = conjugate_gradient(lambda v: spd @ v, b, iters=20)
    assert torch.allclose(x, torch.linalg.solve(spd, b), atol=1e-8)


def _tiny_maml_problem(seed: int = 0, tasks: int = 2) -> tuple[GaussianMLPPolicy, torch.Tensor, list]:
    """A 2-3-1 Gaussian policy in float64 and ``tasks`` tasks of random pre/post episodes."""
    policy = GaussianMLPPolicy(2, 1, hidden=(3,))
    theta = policy.init_params(seed).double() + 0.1 * torch.randn(policy.num_params, dtype=F64, generator=torch.Generator().manual_seed(seed))
    per_task = []
    for k in range(tasks):
        pre, post = random_trajectories(6, 5, 2, 1, seed=10 + k), random_trajectories(6, 5, 2, 1, seed=20 + k)
        adapted = adapt(policy, theta, as_double(pre), 0.1)  # the post-adaptation sampler: ratios start near 1
        logp = policy.log_prob(adapted, as_double(post)["observations"], as_double(post)["actions"])
        post.log_probs = logp.float().numpy() * post.mask
        per_task.append((pre, post))
    return policy, theta, per_task


def as_double(traj: Trajectories) -> dict[str, torch.Tensor]:
    return {k: (v.double() if v.is_floating_point() else v) for k, v in to_tensors(traj).items()}


def _double(tasks):
    for task in tasks:
        for d in (task.pre, task.post):
            for k, v in d.items():
                if v.is_floating_point():
                    d[k] = v.double()
        task.pre_adv, task.post_adv = task.pre_adv.double(), task.post_adv.double()
    return tasks


def outer_step(policy, theta: torch.Tensor, per_task: list, config: MAMLTRPOConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """One update of a fresh learner at ``theta`` (cast to float32, as the runner's): θ after it, and its metrics."""
    learner = MAMLTRPOLearner(policy, theta, config)
    metrics = learner.update(per_task)
    return learner.params, metrics


def _kl_through_adaptation(policy, th: torch.Tensor, tasks, old, inner_lr: float) -> torch.Tensor:
    """Written out again: a second-order inner step per task, then the mean KL to the old policies."""
    kls = []
    for task, ref in zip(tasks, old):
        loss = -masked_mean(policy.log_prob(th, task.pre["observations"], task.pre["actions"]) * task.pre_adv, task.pre["mask"])
        (g,) = torch.autograd.grad(loss, th, create_graph=True)
        new = policy.distribution(th - inner_lr * g, task.post["observations"])
        kls.append(masked_mean(kl_divergence(ref, new), task.post["mask"]))
    return torch.stack(kls).mean()


def test_fisher_vector_product_is_the_hessian_of_the_kl_through_adaptation():
    policy, theta0, per_task = _tiny_maml_problem()
    config = MAMLTRPOConfig(inner_lr=0.5)
    tasks = _double(_prepare(per_task, config, theta0.device))
    theta = theta0.clone().requires_grad_(True)
    _, kls, old = surrogate(policy, theta, tasks, config)
    damping = 1e-3
    fvp = fisher_vector_product(torch.stack(kls).mean(), theta, damping)

    hessian = torch.autograd.functional.hessian(lambda th: _kl_through_adaptation(policy, th, tasks, old, config.inner_lr), theta0.clone())
    v = torch.randn(theta0.shape, dtype=F64, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(fvp(v), hessian @ v + damping * v, rtol=1e-6, atol=1e-9)
    assert hessian.abs().max() > 1e-3  # a real check, not 0 == 0


def test_fvp_subset_is_evenly_spaced_and_defines_the_fisher_of_its_tasks():
    assert fvp_subset(20, None) == list(range(20)) and fvp_subset(3, 5) == [0, 1, 2]
    assert fvp_subset(20, 5) == [0, 5, 10, 14, 19] and fvp_subset(20, 1) == [0]
    with pytest.raises(ValueError, match="fvp_tasks must be at least 1"):
        MAMLTRPOConfig(fvp_tasks=0)

    policy, theta, per_task = _tiny_maml_problem(seed=4, tasks=4)
    config = MAMLTRPOConfig(inner_lr=0.5, max_kl=1e-3)
    # every task named explicitly is the same step as the default, bit for bit
    full, m_full = outer_step(policy, theta, per_task, config)
    same, m_same = outer_step(policy, theta, per_task, dataclasses.replace(config, fvp_tasks=4))
    assert torch.equal(full, same) and m_full == m_same
    # a subset changes the direction, not the guarantees: the surrogate falls and the KL on every task holds
    sub, m_sub = outer_step(policy, theta, per_task, dataclasses.replace(config, fvp_tasks=2))
    assert not torch.equal(sub, full)
    assert m_sub["step_accepted"] == 1.0 and 0 < m_sub["kl"] <= config.max_kl

    # and its Fisher-vector product is the Hessian of those tasks' mean KL alone
    tasks = _double(_prepare(per_task, config, theta.device))
    th = theta.clone().requires_grad_(True)
    _, kls, old = surrogate(policy, th, tasks, config)
    chosen = fvp_subset(4, 2)
    fvp = fisher_vector_product(torch.stack([kls[i] for i in chosen]).mean(), th, 0.0)

    sub_tasks, sub_old = [tasks[i] for i in chosen], [old[i] for i in chosen]
    hessian = torch.autograd.functional.hessian(lambda t: _kl_through_adaptation(policy, t, sub_tasks, sub_old, config.inner_lr), theta.clone())
    v = torch.randn(theta.shape, dtype=F64, generator=torch.Generator().manual_seed(8))
    assert torch.allclose(fvp(v), hessian @ v, rtol=1e-6, atol=1e-9)


def test_line_search_never_accepts_a_step_over_max_kl():
    x0 = torch.zeros(3, dtype=F64)
    direction = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    tried: list[tuple[float, float]] = []

    def evaluate(x):  # loss falls along -direction; the KL grows with the step
        loss, kl = float(x @ direction), float((x - x0).square().sum())
        tried.append((loss, kl))
        return loss, kl

    params, loss, kl, steps = line_search(evaluate, x0, 10 * direction, 0.0, max_kl=0.01, max_steps=50, backtrack_ratio=0.8)
    assert 0 < kl <= 0.01 and loss < 0 and steps > 1
    assert all(k > 0.01 for _, k in tried[:-1])  # every rejected step was over the limit
    # an uphill direction is never taken: the old parameters come back
    params, loss, kl, steps = line_search(evaluate, x0, -direction, 0.0, max_kl=0.01, max_steps=10, backtrack_ratio=0.5)
    assert torch.equal(params, x0) and loss == 0.0 and steps == 10


def test_outer_step_respects_max_kl_and_improves_the_surrogate():
    policy, theta, per_task = _tiny_maml_problem(seed=1)
    config = MAMLTRPOConfig(inner_lr=0.5, max_kl=1e-3)
    per_task_f = [(pre, post) for pre, post in per_task]
    new_theta, metrics = outer_step(policy, theta, per_task_f, config)
    assert metrics["step_accepted"] == 1.0 and metrics["surrogate_after"] < metrics["surrogate_before"]
    assert not torch.equal(new_theta, theta.float())
    # the KL between old and new post-adaptation policies, recomputed here
    tasks = _prepare(per_task_f, config, theta.device)
    kls = []
    for task in tasks:
        old = policy.distribution(_adapt(policy, theta.float(), task.pre, task.pre_adv, config.inner_lr, 1, False), task.post["observations"])
        new = policy.distribution(_adapt(policy, new_theta, task.pre, task.pre_adv, config.inner_lr, 1, False), task.post["observations"])
        kls.append(mean_kl(old, new, task.post["mask"]))
    kl = float(torch.stack(kls).mean())
    assert 0 < kl <= config.max_kl * 1.001
    assert kl == pytest.approx(metrics["kl"], rel=1e-3)


# -- MAML's inner step ------------------------------------------------------------------------


def test_adapt_is_one_policy_gradient_step_and_differentiable_to_second_order():
    policy, theta0, per_task = _tiny_maml_problem(seed=2)
    b = as_double(per_task[0][0])
    lr = 0.3

    # value: theta - lr * d/dtheta of the REINFORCE loss, written out with the baseline's advantages
    adv = baseline_advantages(b, 0.99, 1.0)
    th = theta0.clone().requires_grad_(True)
    loss = -(policy.log_prob(th, b["observations"], b["actions"]) * adv * b["mask"]).sum() / b["mask"].sum()
    (g,) = torch.autograd.grad(loss, th)
    adapted = adapt(policy, theta0, b, lr)
    assert not adapted.requires_grad
    assert torch.allclose(adapted, theta0 - lr * g, atol=1e-12)

    # gradient through the step: autograd (second order) against central finite differences
    w = torch.randn(theta0.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    f = lambda t: (w * adapt(policy, t, b, lr)).sum()  # noqa: E731
    th = theta0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(th), th)
    eps = 1e-6
    for _ in range(4):
        d = torch.randn(theta0.shape, dtype=F64, generator=torch.Generator().manual_seed(_ + 10))
        fd = (f(theta0 + eps * d) - f(theta0 - eps * d)) / (2 * eps)
        assert float(grad @ d) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)
    # first order treats the inner gradient as a constant: d theta' / d theta = I
    th = theta0.clone().requires_grad_(True)
    (fo,) = torch.autograd.grad((w * adapt(policy, th, b, lr, first_order=True)).sum(), th)
    assert torch.allclose(fo, w) and not torch.allclose(grad, w)


def goal_env(goal: float):
    """1-D point: x' = x + 0.2·clip(a), reward -|x' - goal|, start at 0 (a 1-D 2D-navigation)."""

    def reset(n):
        return torch.zeros(n, 1)

    def step(x, a, t):
        nxt = x + 0.2 * a.clamp(-1, 1)
        return nxt, -(nxt - goal).abs().squeeze(-1)

    return reset, step


def test_maml_plan_samples_after_adapting():
    policy = GaussianMLPPolicy(1, 1, hidden=(8,))
    theta = policy.init_params(0)
    config = MAMLTRPOConfig(episodes_per_task=4)
    seen = []
    reset, step = goal_env(0.5)
    gen = torch.Generator().manual_seed(0)

    def sample(params, episodes):
        seen.append(params.clone())
        return rollout(policy, params, episodes, 5, reset, step, gen)

    out = MAMLPlan(policy, config)(sample, theta)
    assert torch.equal(seen[0], theta)
    assert torch.allclose(seen[1], adapt(policy, theta, out["pre"], config.inner_lr))
    assert out["post"].episodes == 4 and np.allclose(out["post_returns"], out["post"].returns())


def test_maml_trpo_learns_to_adapt_to_goals():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(1, 1, hidden=(16, 16))
    theta = policy.init_params(0)
    config = MAMLTRPOConfig(episodes_per_task=10, inner_lr=0.1)
    plan = MAMLPlan(policy, config)
    rng = np.random.default_rng(0)

    def run(theta, goals, seed):
        gen = torch.Generator().manual_seed(seed)
        return [plan(lambda p, n, g=g: rollout(policy, p, n, 10, *goal_env(g), gen), theta) for g in goals]

    def post_return(theta):
        outs = run(theta, np.linspace(-1, 1, 4), seed=123)
        return float(np.mean([o["post_returns"].mean() for o in outs])), float(np.mean([o["pre_returns"].mean() for o in outs]))

    before, _ = post_return(theta)
    learner = MAMLTRPOLearner(policy, theta, config)
    for it in range(6):
        outs = run(learner.params, rng.uniform(-1, 1, size=4), seed=it)
        metrics = learner.update([(o["pre"], o["post"]) for o in outs])
        assert metrics["kl"] <= config.max_kl
    after, pre_after = post_return(learner.params)
    assert after > before + 1.0, (before, after)
    assert after > pre_after + 1.0, (pre_after, after)  # the gain comes from adapting


# -- RL² ---------------------------------------------------------------------------------


@pytest.mark.parametrize("discrete", [True, False])
def test_rl2_sequence_evaluation_equals_stepping_act(discrete):
    policy = GRUPolicy(5, num_actions=3, hidden=8) if discrete else GRUPolicy(5, act_dim=2, hidden=8)
    params = policy.init_params(0) + 0.3 * torch.randn(policy.num_params, generator=torch.Generator().manual_seed(1))
    T, E = 7, 4
    obs = torch.randn(T, E, 5, generator=torch.Generator().manual_seed(2))
    state = policy.initial_state(E)
    steps_logp, steps_actions = [], []
    for t in range(T):
        noise = torch.rand(E) if discrete else torch.randn(E, 2)
        a, lp, state = policy.act(params, obs[t], state, noise=noise)
        steps_actions.append(a)
        steps_logp.append(lp)
    actions = torch.stack(steps_actions)
    logp, entropy, values = policy.evaluate(params, obs, actions)
    assert torch.allclose(logp, torch.stack(steps_logp), atol=1e-5)
    assert values.shape == (T, E) and entropy.shape == (T, E) and (entropy > 0).all()
    # the carried state matters: restarting the GRU at every step gives other log-probs
    restarted = torch.stack([policy.evaluate(params, obs[t : t + 1], actions[t : t + 1])[0][0] for t in range(T)])
    assert not torch.allclose(restarted[1:], logp[1:], atol=1e-3)


def test_ppo_clipping_stops_the_gradient_outside_the_trust_region():
    policy = GRUPolicy(3, num_actions=2, hidden=4)
    params = policy.init_params(0).requires_grad_(True)
    T, E = 5, 3
    obs = torch.randn(T, E, 3, generator=torch.Generator().manual_seed(0))
    actions = torch.randint(0, 2, (T, E), generator=torch.Generator().manual_seed(1))
    logp, _, _ = policy.evaluate(params.detach(), obs, actions)
    mask = torch.ones(T, E)
    config = PPOConfig(clip=0.2, value_coef=0.0, entropy_coef=0.0)
    batch = {"observations": obs, "actions": actions, "mask": mask, "log_probs": logp - 1.0}  # ratio e > 1.2
    targets = torch.zeros(T, E)

    def grad(adv):
        loss, stats = ppo_loss(policy, params, batch, adv, targets, config)
        (g,) = torch.autograd.grad(loss, params)
        return loss.detach(), g, stats

    loss, g, stats = grad(torch.ones(T, E))  # ratio above 1 + clip with positive advantage: clipped, flat
    assert float(loss) == pytest.approx(-1.2, abs=1e-6) and g.abs().max() == 0
    assert float(stats["clip_fraction"]) == 1.0
    loss, g, _ = grad(-torch.ones(T, E))  # negative advantage: the unclipped (pessimistic) term, with gradient
    assert float(loss) == pytest.approx(math.e, rel=1e-5) and g.abs().max() > 0
    batch["log_probs"] = logp.clone()  # ratio 1: the plain policy-gradient surrogate
    loss, g, _ = grad(torch.ones(T, E))
    assert float(loss) == pytest.approx(-1.0, abs=1e-6) and g.abs().max() > 0


def bandit_trials(policy, params, trials: int, best: int, gen: torch.Generator, horizon: int = 10) -> Trajectories:
    """A two-armed bandit played as one trial of ``horizon`` pulls; obs = (1, last action one-hot, last reward)."""

    def reset(n):
        o = torch.zeros(n, 4)
        o[:, 0] = 1.0
        return o

    def step(obs, a, t):
        r = (a == best).float()
        nxt = reset(a.shape[0])
        nxt[torch.arange(a.shape[0]), 1 + a] = 1.0
        nxt[:, 3] = r
        return nxt, r

    return rollout(policy, params, trials, horizon, reset, step, gen, discrete=True)


def test_rl2_learns_to_exploit_a_two_armed_bandit():
    torch.manual_seed(0)
    policy = GRUPolicy(4, num_actions=2, hidden=32)
    learner = RL2Learner(policy, policy.init_params(0), PPOConfig(lr=1e-2, epochs=8, minibatches=2, entropy_coef=0.0), seed=0)
    plan = RL2Plan(trials=8)
    rng = np.random.default_rng(0)

    def score(params):
        gen = torch.Generator().manual_seed(99)
        return float(np.mean([plan(lambda p, n: bandit_trials(policy, p, n, best, gen), params)["returns"].mean() for best in (0, 1, 0, 1)]))

    before = score(learner.params.detach())
    for it in range(40):
        gen = torch.Generator().manual_seed(it)
        outs = [plan(lambda p, n, b=int(rng.integers(2)): bandit_trials(policy, p, n, b, gen), learner.params.detach()) for _ in range(4)]
        learner.update([o["trials"] for o in outs])
    after = score(learner.params.detach())
    assert before < 6.0 and after > 7.5, (before, after)  # random play earns ~5 of 10; the best strategy 9.5


# -- PEARL ---------------------------------------------------------------------------------


def test_product_of_gaussians_matches_the_closed_form():
    mu = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    var = torch.tensor([[1.0, 4.0], [0.25, 2.0]])
    m, v = product_of_gaussians(mu, var)
    v_ref = var[0] * var[1] / (var[0] + var[1])
    m_ref = (mu[0] * var[1] + mu[1] * var[0]) / (var[0] + var[1])
    assert torch.allclose(v, v_ref) and torch.allclose(m, m_ref)
    m2, v2 = product_of_gaussians(mu.flip(0), var.flip(0))
    assert torch.allclose(m, m2) and torch.allclose(v, v2)  # order-free
    kl = kl_to_unit_gaussian(m, v)
    ref = kl_divergence(Normal(m, v.sqrt()), Normal(torch.zeros(2), torch.ones(2))).sum()
    assert torch.allclose(kl, ref)


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, log_std = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g) * 0.5
    low, high = torch.tensor([-0.1, -2.0]), torch.tensor([0.1, 1.0])
    noise = torch.randn(6, 2, generator=g)
    a, logp = squash(mean, log_std, noise, low, high)
    dist = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform(), AffineTransform((high + low) / 2, (high - low) / 2)])
    assert torch.allclose(logp, dist.log_prob(a).sum(-1), atol=1e-4)
    assert (a > low).all() and (a < high).all()


def test_replay_buffer_keeps_the_newest_transitions():
    buf = ReplayBuffer(5, obs_dim=1, act_dim=1)
    traj = random_trajectories(4, 2, 1, 1, seed=0, ragged=False)  # 8 transitions into a ring of 5
    t = transitions(traj)
    buf.add(t)
    assert len(buf) == 5
    assert sorted(buf.data["rewards"].tolist()) == sorted(t["rewards"][-5:].tolist())
    s = buf.sample(100, np.random.default_rng(0))
    assert set(s["rewards"].tolist()) <= set(t["rewards"][-5:].tolist())


@pytest.mark.parametrize("added", [3, 8], ids=["partly-filled", "wrapped"])
def test_replay_buffer_state_round_trips_through_a_weights_only_checkpoint(added: int, tmp_path):
    """A restored ring samples and overwrites exactly as the original would."""
    t = transitions(random_trajectories(added // 2 + added % 2, 2, 1, 1, seed=0, ragged=False))
    buf = ReplayBuffer(5, obs_dim=1, act_dim=1)
    buf.add({k: v[:added] for k, v in t.items()})
    torch.save(buf.state_dict(), tmp_path / "b.pt")
    back = ReplayBuffer(5, obs_dim=1, act_dim=1)
    back.load_state_dict(torch.load(tmp_path / "b.pt", weights_only=True))
    more = transitions(random_trajectories(1, 2, 1, 1, seed=1, ragged=False))
    for b in (buf, back):
        b.add(more)
    assert (len(back), back.top) == (len(buf), buf.top)
    for k in buf.data:
        assert np.array_equal(back.data[k], buf.data[k]), k
    assert np.array_equal(back.sample(20, np.random.default_rng(3))["rewards"], buf.sample(20, np.random.default_rng(3))["rewards"])


def constant_goal_env(goal: float):
    """Reward -|a - goal| for a in [-1, 1]; obs always 0: only the context tells the goal."""

    def reset(n):
        return torch.zeros(n, 1)

    def step(obs, a, t):
        return torch.zeros_like(obs), -(a - goal).abs().squeeze(-1)

    return reset, step


def _small_pearl(seed: int = 0, gamma: float = 0.5) -> tuple[PEARLPolicy, PEARL]:
    config = PEARLConfig(
        latent_dim=2, hidden=(32, 32), encoder_hidden=(32,), batch_size=64, context_size=10, lr=3e-3, reward_scale=5.0, gamma=gamma
    )
    policy = PEARLPolicy(1, 1, config)
    return policy, PEARL(policy, seed=seed)


def test_pearl_update_reduces_its_losses_on_fixed_data():
    torch.manual_seed(0)
    policy, pearl = _small_pearl(gamma=0.0)  # targets that do not move with the critic: its loss must fall
    gen = torch.Generator().manual_seed(0)
    for task, goal in enumerate((-0.5, 0.5)):
        out = PEARLPlan(policy, prior_episodes=4, posterior_episodes=4)(
            lambda p, n: rollout(policy, p, n, 5, *constant_goal_env(goal), gen), pearl.worker_params()
        )
        pearl.add(task, out)
    assert len(pearl.replay[0]) == 40 and len(pearl.encoder_replay[0]) == 20
    rng = np.random.default_rng(0)
    batch = pearl.sample_batch([0, 1], rng)
    assert batch["context"].shape == (2, 10, 4) and batch["observations"].shape == (2, 64, 1)
    initial_actor = copy.deepcopy(pearl.actor)
    first = [pearl.update(pearl.sample_batch([0, 1], rng)) for _ in range(10)]
    for _ in range(300):
        last = pearl.update(pearl.sample_batch([0, 1], rng))
    assert np.isfinite(list(last.values())).all()
    assert last["q_loss"] < 0.5 * np.mean([m["q_loss"] for m in first])

    def actor_loss(actor) -> float:  # SAC's policy objective under the final critic, same z and noise
        b = {k: torch.as_tensor(v) for k, v in pearl.sample_batch([0, 1], np.random.default_rng(5)).items()}
        with torch.no_grad():
            mu, _ = pearl.policy.posterior(policy.split(pearl.worker_params())[1], b["context"])
            obs = b["observations"].reshape(-1, 1)
            z = mu.repeat_interleave(b["observations"].shape[1], 0)
            mean, log_std = actor(torch.cat([obs, z], -1))
            a, logp = squash(mean, log_std, torch.randn(mean.shape, generator=torch.Generator().manual_seed(0)), pearl.low, pearl.high)
            return float((pearl.config.alpha * logp - torch.min(pearl.q1(obs, a, z), pearl.q2(obs, a, z))).mean())

    assert actor_loss(pearl.actor) < actor_loss(initial_actor) - 0.1, (actor_loss(pearl.actor), actor_loss(initial_actor))


def test_pearl_without_the_information_bottleneck_averages_the_encodings():
    """oyster's use_information_bottleneck=False: z is exactly the mean of the per-transition
    encodings (var 0), z = 0 before any context, no KL; the update still trains the encoder."""
    config = PEARLConfig(latent_dim=2, hidden=(16,), encoder_hidden=(8,), batch_size=16, context_size=5, information_bottleneck=False)
    policy = PEARLPolicy(1, 1, config)
    pearl = PEARL(policy, seed=0)
    encoder = policy.split(pearl.worker_params())[1]
    ctx = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))  # (s, a, r, s')
    mu, var = policy.posterior(encoder, ctx)
    torch.testing.assert_close(mu, policy.encoder(encoder, ctx).mean(0))
    assert mu.shape == (2,) and torch.equal(var, torch.zeros(2))
    empty_mu, empty_var = policy.posterior(encoder, ctx[:0])
    assert torch.equal(empty_mu, torch.zeros(2)) and torch.equal(empty_var, torch.zeros(2))
    gen = torch.Generator().manual_seed(0)
    seen = []

    def sample(p, n, deterministic=False):
        seen.append(p[policy.actor.num_params :].clone())
        return rollout(policy, p, n, 5, *constant_goal_env(0.5), gen, deterministic=deterministic)

    pearl.add(0, PEARLPlan(policy, prior_episodes=2, posterior_episodes=1)(sample, pearl.worker_params()))
    assert torch.equal(seen[0], torch.zeros(2)) and torch.equal(seen[1], torch.zeros(2)) and not torch.equal(seen[2], torch.zeros(2))
    before = pearl.worker_params().clone()
    metrics = pearl.update(pearl.sample_batch([0], np.random.default_rng(0)))
    assert metrics["kl"] == 0.0 and np.isfinite(list(metrics.values())).all()
    assert not torch.equal(policy.split(pearl.worker_params())[1], policy.split(before)[1])  # the encoder learned


def test_pearl_plan_is_deterministic_and_uses_the_posterior():
    policy, pearl = _small_pearl()
    params = pearl.worker_params()
    calls = []

    def make_sample():
        gen = torch.Generator().manual_seed(0)

        def sample(p, n, deterministic=False):
            calls.append((p.clone(), deterministic))
            return rollout(policy, p, n, 3, *constant_goal_env(0.3), gen, deterministic=deterministic)

        return sample

    a = PEARLPlan(policy, prior_episodes=2, posterior_episodes=2, deterministic_posterior=True)(make_sample(), params)
    first = calls[:]
    calls.clear()
    b = PEARLPlan(policy, prior_episodes=2, posterior_episodes=2, deterministic_posterior=True)(make_sample(), params)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(first, calls))
    assert np.array_equal(a["posterior"].rewards, b["posterior"].rewards)
    assert a["prior"].episodes == 2 and a["posterior"].episodes == 2
    n_actor = policy.actor.num_params
    zs = [p[n_actor:] for p, _ in first]
    assert len({tuple(z.tolist()) for z in zs}) == 4  # a fresh z per episode
    assert [d for _, d in first] == [False, False, True, True]
    # the posterior z is drawn around the encoder's posterior given the prior episodes
    ctx_traj = concat_episodes([a["prior"]])
    t = transitions(ctx_traj)
    ctx = torch.as_tensor(make_context(t["observations"], t["actions"], t["rewards"], t["next_observations"], True))
    mu, var = policy.posterior(policy.split(params)[1], ctx)
    assert ((zs[2] - mu).abs() < 6 * var.sqrt()).all()


def test_pearl_prior_z_is_drawn_per_task_from_its_descriptor():
    """oyster draws a prior z per task: the first z of a plan differs across the tasks of a call
    at the same parameters, is the same whenever the same descriptor and parameters come again,
    and moves with the parameters (a new z each iteration) and with the plan's stream."""
    policy, pearl = _small_pearl()
    params = pearl.worker_params()

    def first_z(descriptor, plan=PEARLPlan(policy, prior_episodes=1, posterior_episodes=0), at=params):
        seen = []

        def sample(p, n, deterministic=False):
            seen.append(p[policy.actor.num_params :].clone())
            return rollout(policy, p, n, 2, *constant_goal_env(0.0), torch.Generator().manual_seed(0))

        plan(sample, at, descriptor)
        return seen[0]

    tasks = descriptors(0, "test", 0, 6)
    zs = torch.stack([first_z(d) for d in tasks])
    assert len({tuple(z.tolist()) for z in zs}) == 6
    assert torch.equal(zs[3], first_z(TaskDescriptor(0, "test", 0, 3)))
    assert not torch.equal(zs[3], first_z(tasks[3], at=params + 1e-3))
    assert not torch.equal(zs[3], first_z(tasks[3], plan=PEARLPlan(policy, prior_episodes=1, posterior_episodes=0, stream=1)))
    assert zs.std(0).min() > 0.3 and zs.mean().abs() < 1.0  # standard normal draws, one per task


def test_pearl_schedule_counts_oysters_steps_in_episodes():
    """oyster's point robot: 200 initial, 200 prior and 200 extra posterior steps at horizon 20."""
    oyster = PEARLConfig(num_initial_steps=200, num_steps_prior=200, num_extra_rl_steps_posterior=200)
    assert oyster.schedule(20) == (10, 10, 10)
    assert oyster.schedule(30) == (7, 7, 7)  # whole episodes, at least the steps asked for
    assert PEARLConfig(prior_episodes=3, posterior_episodes=1).schedule(20) == (0, 3, 1)


def test_pearl_learns_to_infer_the_goal_from_context():
    torch.manual_seed(0)
    policy, pearl = _small_pearl(seed=1)
    goals = (-0.6, 0.6)
    rng = np.random.default_rng(0)
    plan = PEARLPlan(policy, prior_episodes=2, posterior_episodes=2)

    def collect(seed):
        gen = torch.Generator().manual_seed(seed)
        params = pearl.worker_params()
        return [plan(lambda p, n, g=g: rollout(policy, p, n, 5, *constant_goal_env(g), gen), params) for g in goals]

    def posterior_return():
        eval_plan = PEARLPlan(policy, prior_episodes=1, posterior_episodes=1, deterministic_posterior=True)
        gen = torch.Generator().manual_seed(999)
        params = pearl.worker_params()
        outs = [
            eval_plan(lambda p, n, deterministic=False, g=g: rollout(policy, p, n, 5, *constant_goal_env(g), gen, deterministic=deterministic), params)
            for g in goals
        ]
        return float(np.mean([o["posterior_returns"].mean() for o in outs]))

    before = posterior_return()
    for it in range(12):
        for task, out in enumerate(collect(it)):
            pearl.add(task, out)
        for _ in range(40):
            pearl.update(pearl.sample_batch([0, 1], rng))
    after = posterior_return()
    # 5 steps of -|a - goal|: a goal-blind policy at best -3 (a = 0), knowing the goal 0
    assert after > -1.5 and after > before + 1.0, (before, after)


def test_pearl_set_encoder_averages_features_before_its_output_layers():
    """aggregator=set (Deep Sets): one Gaussian per context from the mean of per-transition
    features, the same for any order of the transitions and for a batch of contexts; the
    prior before any context; the update trains it with a finite KL."""
    config = PEARLConfig(latent_dim=2, hidden=(16,), encoder_hidden=(8, 8), batch_size=16, context_size=5, aggregator="set")
    policy = PEARLPolicy(1, 1, config)
    pearl = PEARL(policy, seed=0)
    encoder = policy.split(pearl.worker_params())[1]
    ctx = torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(1))  # 3 contexts of 7 (s, a, r, s')
    mu, var = policy.posterior(encoder, ctx)
    assert mu.shape == var.shape == (3, 2) and bool((var > 0).all())
    net = policy.encoder.to_module(encoder)
    features = net[:4](ctx).mean(-2)  # Linear, ReLU, Linear, ReLU: the per-transition features
    out = net[5:](features)
    torch.testing.assert_close(mu, out[:, :2])
    torch.testing.assert_close(var, F.softplus(out[:, 2:]))
    shuffled = ctx[:, torch.randperm(7, generator=torch.Generator().manual_seed(2))]
    torch.testing.assert_close(policy.posterior(encoder, shuffled), (mu, var))
    torch.testing.assert_close(policy.posterior(encoder, ctx[1]), (mu[1], var[1]))
    empty_mu, empty_var = policy.posterior(encoder, ctx[0, :0])
    assert torch.equal(empty_mu, torch.zeros(2)) and torch.equal(empty_var, torch.ones(2))
    gen = torch.Generator().manual_seed(0)

    def sample(p, n, deterministic=False):
        return rollout(policy, p, n, 5, *constant_goal_env(0.5), gen, deterministic=deterministic)

    pearl.add(0, PEARLPlan(policy, prior_episodes=2, posterior_episodes=1)(sample, pearl.worker_params()))
    before = pearl.worker_params().clone()
    metrics = pearl.update(pearl.sample_batch([0], np.random.default_rng(0)))
    assert metrics["kl"] > 0.0 and np.isfinite(list(metrics.values())).all()
    assert not torch.equal(policy.split(pearl.worker_params())[1], policy.split(before)[1])  # the encoder learned
