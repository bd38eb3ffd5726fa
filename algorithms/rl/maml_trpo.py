"""MAML-TRPO (Finn et al. 2017), structured like pytorch-maml-rl.

Inner step: one (or ``inner_steps``) vanilla policy-gradient step on a task's
pre-adaptation episodes, with GAE against a linear baseline fit on those episodes; kept
differentiable so the outer gradient flows through it. Outer step: TRPO on the
post-adaptation episodes of every task, as a function of the meta-parameters θ through
the inner step: the surrogate ``-E[π_θ'(a|s) / π_sample(a|s) · A]``, the mean
KL(π_θ'old ‖ π_θ'), Fisher-vector products as Hessian-vector products of that KL, a
conjugate-gradient solve, and a backtracking line search that accepts only a step that
lowers the surrogate and keeps the KL under ``max_kl``.

Workers run :class:`MAMLPlan` (sample at θ, adapt, sample at θ'); the driver's
:class:`MAMLTRPOLearner` holds θ and takes the outer step, recomputing every inner step from
the pre-adaptation episodes so the outer gradient sees it. The linear baseline is a
deterministic function of the episodes, so the learner's θ' equals the worker's (to float
rounding) and the importance ratios start at 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.distributions import Categorical, Distribution, Independent, Normal, kl_divergence

from metaorch.algorithms.rl.batching import masked_mean, to_tensors
from metaorch.algorithms.rl.config import MAMLTRPOConfig
from metaorch.algorithms.rl.returns import baseline_advantages
from metaorch.algorithms.rl.trajectories import Sample, Trajectories


class DifferentiablePolicy(Protocol):
    """What MAML-TRPO needs of a policy beyond acting (``algorithms.rl.policies``)."""

    def log_prob(self, params: torch.Tensor, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor: ...

    def distribution(self, params: torch.Tensor, obs: torch.Tensor) -> Distribution: ...

    def to(self, device: torch.device | str) -> DifferentiablePolicy: ...


def fvp_subset(num_tasks: int, fvp_tasks: int | None) -> list[int]:
    """Indices of the tasks whose KL defines the Fisher-vector products: evenly spaced, in order."""
    if fvp_tasks is None or fvp_tasks >= num_tasks:
        return list(range(num_tasks))
    return sorted({int(i) for i in np.linspace(0, num_tasks - 1, fvp_tasks).round()})


# -- inner step ----------------------------------------------------------------------------


def reinforce_loss(policy: DifferentiablePolicy, params: torch.Tensor, batch: dict[str, torch.Tensor], advantages: torch.Tensor) -> torch.Tensor:
    """``-mean(log π(a|s) · A)`` over real steps: the inner (vanilla policy gradient) objective."""
    logp = policy.log_prob(params, batch["observations"], batch["actions"])
    return -masked_mean(logp * advantages, batch["mask"])


def _adapt(
    policy: DifferentiablePolicy,
    params: torch.Tensor,
    batch: dict[str, torch.Tensor],
    advantages: torch.Tensor,
    inner_lr: float,
    steps: int,
    create_graph: bool,
) -> torch.Tensor:
    """Inner steps with the advantages already computed (they do not depend on ``params``)."""
    differentiable = params.requires_grad
    with torch.enable_grad():  # the line search calls this under no_grad
        theta = params if differentiable else params.detach().requires_grad_(True)
        for _ in range(steps):
            loss = reinforce_loss(policy, theta, batch, advantages)
            (g,) = torch.autograd.grad(loss, theta, create_graph=create_graph and differentiable)
            theta = theta - inner_lr * g
    return theta if differentiable else theta.detach()


def adapt(
    policy: DifferentiablePolicy,
    params: torch.Tensor,
    trajectories: Trajectories | dict[str, torch.Tensor],
    inner_lr: float,
    first_order: bool = False,
    *,
    steps: int = 1,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    normalize_advantages: bool = True,
) -> torch.Tensor:
    """θ' after ``steps`` policy-gradient steps on ``trajectories``.

    Differentiable in ``params`` (second order unless ``first_order``) when ``params``
    requires grad; otherwise a plain detached result (what a worker needs).
    """
    batch = to_tensors(trajectories, params.device)
    adv = baseline_advantages(batch, gamma, gae_lambda, normalize_advantages)
    return _adapt(policy, params, batch, adv, inner_lr, steps, create_graph=not first_order)


# -- TRPO machinery ------------------------------------------------------------------------


def conjugate_gradient(fvp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int, tol: float = 1e-10) -> torch.Tensor:
    """Approximately solve ``F x = b`` for symmetric positive definite ``F`` given only ``v ↦ F v``."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < tol:
            break
        fp = fvp(p)
        alpha = rr / (p @ fp)
        x = x + alpha * p
        r = r - alpha * fp
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x.detach()


def fisher_vector_product(kl: torch.Tensor, params: torch.Tensor, damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v ↦ (∇²KL + damping I) v`` by double backward; ``kl`` must be built with a graph to ``params``.

    At the old policy the KL's Hessian is the Fisher information (its gradient is 0 there),
    so this is the Fisher-vector product TRPO needs, without forming the matrix.
    """
    (grad_kl,) = torch.autograd.grad(kl, params, create_graph=True)

    def fvp(v: torch.Tensor) -> torch.Tensor:
        (hv,) = torch.autograd.grad(grad_kl @ v, params, retain_graph=True)
        return hv.detach() + damping * v

    return fvp


def mean_kl(old: Distribution, new: Distribution, mask: torch.Tensor) -> torch.Tensor:
    kl = kl_divergence(old, new)
    while kl.dim() > mask.dim():  # a Normal without Independent: sum the action dimensions
        kl = kl.sum(-1)
    return masked_mean(kl, mask)


def line_search(
    evaluate: Callable[[torch.Tensor], tuple[float, float]],
    params: torch.Tensor,
    full_step: torch.Tensor,
    loss_before: float,
    max_kl: float,
    max_steps: int,
    backtrack_ratio: float,
) -> tuple[torch.Tensor, float, float, int]:
    """Shrink the step until the surrogate improves and the KL stays under ``max_kl``.

    Returns (params, loss, kl, steps tried); the old ``params`` (and ``loss_before``, KL 0)
    when no step qualifies, so a bad direction never moves θ.
    """
    step_size = 1.0
    for i in range(max_steps):
        candidate = params - step_size * full_step
        loss, kl = evaluate(candidate)
        if loss < loss_before and kl <= max_kl and math.isfinite(loss) and math.isfinite(kl):
            return candidate, loss, kl, i + 1
        step_size *= backtrack_ratio
    return params, loss_before, 0.0, max_steps


# -- outer step ----------------------------------------------------------------------------


@dataclass
class _Task:
    pre: dict[str, torch.Tensor]
    pre_adv: torch.Tensor
    post: dict[str, torch.Tensor]
    post_adv: torch.Tensor


def _prepare(per_task: Sequence[tuple[Trajectories, Trajectories]], config: MAMLTRPOConfig, device: torch.device) -> list[_Task]:
    """Tensors and advantages once per task: they are constants of the outer step."""
    tasks = []
    for pre, post in per_task:
        pre_b, post_b = to_tensors(pre, device), to_tensors(post, device)
        args = (config.gamma, config.gae_lambda, config.normalize_advantages)
        tasks.append(_Task(pre_b, baseline_advantages(pre_b, *args), post_b, baseline_advantages(post_b, *args)))
    return tasks


def surrogate(
    policy: DifferentiablePolicy,
    theta: torch.Tensor,
    tasks: list[_Task],
    config: MAMLTRPOConfig,
    old: list[Distribution] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[Distribution]]:
    """Per task, the post-adaptation surrogate loss and KL, and the (detached) old policies.

    Lists, not stacked tensors, so a backward pass from some tasks' KL visits only their graphs
    (a stack's backward would send zeros through every task's second-order inner step).

    Without ``old`` the inner steps are kept differentiable (second order unless configured
    first order) and the current post-adaptation policies become ``old``.
    """
    create_graph = old is None and not config.first_order
    losses, kls, dists = [], [], []
    for i, task in enumerate(tasks):
        adapted = _adapt(policy, theta, task.pre, task.pre_adv, config.inner_lr, config.inner_steps, create_graph)
        obs, actions, mask = task.post["observations"], task.post["actions"], task.post["mask"]
        new = policy.distribution(adapted, obs)
        logp = policy.log_prob(adapted, obs, actions)
        ratio = torch.exp(logp - task.post["log_probs"])  # to the policy that sampled the episodes
        losses.append(-masked_mean(ratio * task.post_adv, mask))
        ref = old[i] if old is not None else _detach(new)
        kls.append(mean_kl(ref, new, mask))
        dists.append(ref)
    return losses, kls, dists


def _detach(dist: Distribution) -> Distribution:
    """The same distribution with its parameters cut from the graph (the "old" policy)."""
    if isinstance(dist, Independent):
        return Independent(_detach(dist.base_dist), dist.reinterpreted_batch_ndims, validate_args=False)
    if isinstance(dist, Normal):
        return Normal(dist.loc.detach(), dist.scale.detach(), validate_args=False)
    if isinstance(dist, Categorical):
        return Categorical(logits=dist.logits.detach(), validate_args=False)
    raise TypeError(f"cannot detach a {type(dist).__name__}")


class MAMLTRPOLearner:
    """The learner's side of MAML-TRPO: θ and its TRPO outer step.

    Lives on the driver (``device`` may be a GPU), as :class:`~algorithms.rl.rl2.RL2Learner`
    and :class:`~algorithms.rl.pearl.PEARL` do; workers get ``params`` once per iteration.
    """

    def __init__(self, policy: DifferentiablePolicy, params: torch.Tensor, config: MAMLTRPOConfig = MAMLTRPOConfig(), device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.policy = policy.to(self.device)
        self.config = config
        self.params = params.detach().float().to(self.device)

    def update(self, per_task: Sequence[tuple[Trajectories, Trajectories]]) -> dict[str, float]:
        """One TRPO step on θ from each task's (pre-adaptation, post-adaptation) episodes, in task order."""
        if not per_task:
            raise ValueError("a MAML-TRPO update needs at least one task")
        policy, config = self.policy, self.config
        theta = self.params.detach().requires_grad_(True)
        tasks = _prepare(per_task, config, theta.device)

        losses, kls, old = surrogate(policy, theta, tasks, config)
        loss = torch.stack(losses).mean()
        (g,) = torch.autograd.grad(loss, theta, retain_graph=True)
        fvp_kl = torch.stack([kls[i] for i in fvp_subset(len(tasks), config.fvp_tasks)]).mean()
        fvp = fisher_vector_product(fvp_kl, theta, config.cg_damping)
        direction = conjugate_gradient(fvp, g.detach(), config.cg_iters)
        shs = 0.5 * (direction @ fvp(direction))
        full_step = direction * torch.sqrt(config.max_kl / shs.clamp_min(1e-12))

        def evaluate(candidate: torch.Tensor) -> tuple[float, float]:
            with torch.no_grad():
                losses_c, kls_c, _ = surrogate(policy, candidate, tasks, config, old)
            return float(torch.stack(losses_c).mean()), float(torch.stack(kls_c).mean())

        loss_before = float(loss.detach())
        new_theta, loss_after, kl_after, tries = line_search(
            evaluate, theta.detach(), full_step, loss_before, config.max_kl, config.ls_max_steps, config.ls_backtrack_ratio
        )
        self.params = new_theta.detach()
        return {
            "surrogate_before": loss_before,
            "surrogate_after": loss_after,
            "kl": kl_after,
            "line_search_steps": float(tries),
            "step_accepted": float(loss_after < loss_before),
            "grad_norm": float(g.norm()),
            "pre_return": float(sum(pre.returns().mean() for pre, _ in per_task) / len(per_task)),
            "post_return": float(sum(post.returns().mean() for _, post in per_task) / len(per_task)),
        }


# -- worker side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MAMLPlan:
    """A task's rollouts: episodes at θ, one inner step, episodes at θ' (a picklable :data:`Plan`)."""

    policy: Any  # a DifferentiablePolicy that also acts (algorithms.rl.policies)
    config: MAMLTRPOConfig = MAMLTRPOConfig()

    def __call__(self, sample: Sample, params: torch.Tensor) -> dict[str, Any]:
        c = self.config
        pre = sample(params, c.episodes_per_task)
        adapted = adapt(
            self.policy,
            params.detach(),
            pre,
            c.inner_lr,
            first_order=True,  # the value of θ' is the same; no graph is needed here
            steps=c.inner_steps,
            gamma=c.gamma,
            gae_lambda=c.gae_lambda,
            normalize_advantages=c.normalize_advantages,
        )
        post = sample(adapted, c.episodes_per_task)
        return {"pre": pre, "post": post, "pre_returns": pre.returns(), "post_returns": post.returns()}


@dataclass(frozen=True)
class MAMLTestPlan:
    """Meta-test: mean episode return after 0, 1, ..., ``steps`` adaptation steps, each step
    a policy-gradient step on fresh episodes at the current θ′ (Finn et al.'s RL evaluation)."""

    policy: Any
    config: MAMLTRPOConfig = MAMLTRPOConfig()
    steps: int = 1

    def __call__(self, sample: Sample, params: torch.Tensor) -> dict[str, Any]:
        c = self.config
        theta, returns = params.detach(), []
        for k in range(self.steps + 1):
            episodes = sample(theta, c.episodes_per_task)
            returns.append(float(episodes.returns().mean()))
            if k < self.steps:
                theta = adapt(
                    self.policy, theta, episodes, c.inner_lr, first_order=True, steps=c.inner_steps,
                    gamma=c.gamma, gae_lambda=c.gae_lambda, normalize_advantages=c.normalize_advantages,
                )  # fmt: skip
        return {"returns": np.asarray(returns)}
