"""Correctness of the pure-torch meta-learners against independent references.

Every expected value here is computed by a different code path than the one under test:
finite differences, hand-written ``torch.autograd`` inner loops, or closed forms. No Ray,
no MLflow: ``algorithms/`` must stand on its own.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metaorch.algorithms import MAML, SGD, Adam, FunctionalModel, GradientBasedLearner, MetaModel, MetaSGD, OuterUpdate, Reptile, mlp
from metaorch.tasks.base import TaskBatch

F64 = torch.float64
# mlp(1, [3, 3], 1) from this seed has no ReLU unit dead on the test data, so every one of
# its weights (and every Meta-SGD rate) gets a nonzero gradient: the checks cover them all.
TINY_SEED = 10
# The methods by name: each is a learner class and an inner rule (algorithms/inner_rules.py).
LEARNERS: dict[str, Callable[..., GradientBasedLearner]] = {
    "maml": lambda model, lr, steps, vectorize: MAML(model, F.mse_loss, SGD(lr), steps, vectorize=vectorize),
    "fomaml": lambda model, lr, steps, vectorize: MAML(model, F.mse_loss, SGD(lr), steps, first_order=True, vectorize=vectorize),
    "metasgd": lambda model, lr, steps, vectorize: MAML(model, F.mse_loss, MetaSGD(lr), steps, vectorize=vectorize),
    "reptile": lambda model, lr, steps, vectorize: Reptile(model, F.mse_loss, SGD(lr), steps, vectorize=vectorize),
    "reptile_adam": lambda model, lr, steps, vectorize: Reptile(model, F.mse_loss, Adam(lr), steps, vectorize=vectorize),
}


# -- helpers ---------------------------------------------------------------------------


def make_batch(tasks: int, shots: int, queries: int, in_features: int = 1, seed: int = 0, dtype: torch.dtype = F64) -> TaskBatch:
    """Random sinusoid-like regression tasks, built here so these tests do not depend on tasks/."""
    g = torch.Generator().manual_seed(seed)
    n = shots + queries
    x = torch.rand(tasks, n, in_features, generator=g, dtype=F64) * 6 - 3
    amp = torch.rand(tasks, 1, 1, generator=g, dtype=F64) * 2 + 0.5
    phase = torch.rand(tasks, 1, 1, generator=g, dtype=F64) * 3
    y = (amp * torch.sin(x - phase)).sum(-1, keepdim=True)
    x, y = x.to(dtype), y.to(dtype)
    return {"support_x": x[:, :shots], "support_y": y[:, :shots], "query_x": x[:, shots:], "query_y": y[:, shots:]}


def make_learner(
    name: str,
    hidden: list[int],
    in_features: int = 1,
    inner_lr: float = 0.1,
    inner_steps: int = 2,
    vectorize: str = "vmap",
    dtype: torch.dtype = F64,
    seed: int = 0,
) -> tuple[GradientBasedLearner, torch.Tensor]:
    """A learner over ``mlp(in_features, hidden, 1)`` and its meta-parameters, cast to ``dtype``."""
    model = FunctionalModel(mlp(in_features, hidden, 1))
    model.module.to(dtype)
    learner = LEARNERS[name](model, inner_lr, inner_steps, vectorize)
    return learner, learner.init_meta_params(seed).to(dtype)


def named_views(module: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Slice ``flat`` into ``module``'s parameters in ``named_parameters`` order (not via ParamLayout)."""
    out, i = {}, 0
    for name, p in module.named_parameters():
        out[name] = flat[i : i + p.numel()].view_as(p)
        i += p.numel()
    assert i == flat.numel()
    return out


def ref_loss(module: nn.Module, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(functional_call(module, named_views(module, w), (x,)), y)


def ref_adapt(
    module: nn.Module, theta: torch.Tensor, lrs: torch.Tensor | float, x: torch.Tensor, y: torch.Tensor, steps: int
) -> torch.Tensor:
    """Plain SGD with ``torch.autograd.grad``; returns detached adapted weights (values only)."""
    w = theta.detach()
    with torch.enable_grad():
        for _ in range(steps):
            w = w.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(ref_loss(module, w, x, y), w)
            w = (w - lrs * g).detach()
    return w


def ref_summed_post_loss(learner: MAML, meta_params: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """Sum over tasks of the query loss after the inner loop: the objective MAML differentiates."""
    module, n = learner.model.module, learner.model.num_params
    theta = meta_params[:n]
    lrs = meta_params[n:] if isinstance(learner.rule, MetaSGD) else learner.rule.lr
    total = torch.zeros((), dtype=meta_params.dtype)
    for i in range(batch["support_x"].shape[0]):
        phi = ref_adapt(module, theta, lrs, batch["support_x"][i], batch["support_y"][i], learner.inner_steps)
        total = total + ref_loss(module, phi, batch["query_x"][i], batch["query_y"][i]).detach()
    return total


def central_difference(f: Callable[[torch.Tensor], torch.Tensor], p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central finite-difference gradient of scalar ``f`` at ``p``, one coordinate at a time."""
    out = torch.zeros_like(p)
    for i in range(p.numel()):
        e = torch.zeros_like(p)
        e[i] = eps
        out[i] = (f(p + e) - f(p - e)) / (2 * eps)
    return out


def assert_updates_close(a: OuterUpdate, b: OuterUpdate, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a.direction, b.direction, rtol=rtol, atol=atol)
    torch.testing.assert_close(a.pre_loss, b.pre_loss, rtol=rtol, atol=atol)
    torch.testing.assert_close(a.post_loss, b.post_loss, rtol=rtol, atol=atol)


# -- MAML ------------------------------------------------------------------------------


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_maml_direction_matches_finite_differences(vectorize: str) -> None:
    """Second-order MAML must be the exact gradient of the summed post-adaptation query loss."""
    learner, meta_params = make_learner("maml", [3, 3], vectorize=vectorize, seed=TINY_SEED)
    batch = make_batch(tasks=3, shots=5, queries=7)
    update = learner.outer_update(meta_params, batch)
    assert (update.direction != 0).all()

    fd = central_difference(lambda p: ref_summed_post_loss(learner, p, batch), meta_params)
    torch.testing.assert_close(update.direction, fd, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(update.post_loss.sum(), ref_summed_post_loss(learner, meta_params, batch))
    assert update.pre_loss.shape == update.post_loss.shape == (3,)


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_fomaml_direction_is_query_gradient_at_adapted_weights(vectorize: str) -> None:
    """FOMAML treats the inner gradient as a constant: its direction is dL_query/dphi, not dL_query/dtheta."""
    fo, meta_params = make_learner("fomaml", [3, 3], vectorize=vectorize, seed=TINY_SEED)
    so, _ = make_learner("maml", [3, 3], vectorize=vectorize, seed=TINY_SEED)
    batch = make_batch(tasks=3, shots=5, queries=7)
    module = fo.model.module

    expected = torch.zeros_like(meta_params)
    for i in range(3):
        phi = ref_adapt(module, meta_params, fo.rule.lr, batch["support_x"][i], batch["support_y"][i], fo.inner_steps)
        phi.requires_grad_(True)
        (g,) = torch.autograd.grad(ref_loss(module, phi, batch["query_x"][i], batch["query_y"][i]), phi)
        expected += g

    first = fo.outer_update(meta_params, batch).direction
    second = so.outer_update(meta_params, batch).direction
    assert (first != 0).all()
    torch.testing.assert_close(first, expected, rtol=1e-10, atol=1e-12)
    assert (first - second).norm() > 1e-3 * second.norm(), "FOMAML is silently computing second-order MAML"


# -- Reptile ---------------------------------------------------------------------------


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_reptile_one_step_linear_regression_closed_form(vectorize: str) -> None:
    """With one inner step on MSE, theta - phi = lr * (2/K) X^T (X w - y), summed over tasks.

    Two input features (still a single nn.Linear) so a transposed weight would be caught.
    """
    lr = 0.05
    learner, theta = make_learner("reptile", [], in_features=2, inner_lr=lr, inner_steps=1, vectorize=vectorize)
    assert isinstance(learner, Reptile)
    batch = make_batch(tasks=3, shots=6, queries=4, in_features=2)
    update = learner.outer_update(theta, batch)

    # named_parameters order of nn.Linear(2, 1): weight [1, 2], then bias [1].
    w = theta.unsqueeze(-1)  # [3, 1] = (w1, w2, b)
    expected = torch.zeros_like(theta)
    post = []
    for i in range(3):
        x, y = batch["support_x"][i], batch["support_y"][i]
        X = torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], dim=1)  # [K, 3]
        grad = 2.0 / x.shape[0] * X.T @ (X @ w - y)
        expected += lr * grad.squeeze(-1)
        phi = w - lr * grad
        Xq = torch.cat([batch["query_x"][i], torch.ones(batch["query_x"].shape[1], 1, dtype=F64)], dim=1)
        post.append(((Xq @ phi - batch["query_y"][i]) ** 2).mean())

    torch.testing.assert_close(update.direction, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(update.post_loss, torch.stack(post), rtol=1e-12, atol=1e-12)


# -- Meta-SGD --------------------------------------------------------------------------


def test_metasgd_learned_rates_get_exact_gradient() -> None:
    """Meta-SGD's per-weight rates are meta-parameters: [theta, alpha], both differentiated exactly."""
    learner, meta_params = make_learner("metasgd", [3, 3], inner_lr=0.1, seed=TINY_SEED)
    n = learner.model.num_params
    assert meta_params.shape == (2 * n,)
    torch.testing.assert_close(meta_params[n:], torch.full((n,), 0.1, dtype=F64))
    # Distinct rates per weight, so a misaligned theta/alpha split cannot go unnoticed.
    g = torch.Generator().manual_seed(1)
    meta_params = torch.cat([meta_params[:n], 0.1 * (0.5 + torch.rand(n, generator=g, dtype=F64))])
    batch = make_batch(tasks=2, shots=5, queries=7)

    direction = learner.outer_update(meta_params, batch).direction
    assert (direction[n:] != 0).all(), "learned rates receive no gradient"
    fd = central_difference(lambda p: ref_summed_post_loss(learner, p, batch), meta_params)
    torch.testing.assert_close(direction, fd, rtol=1e-6, atol=1e-8)


# -- vectorisation ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "reptile"])
def test_vmap_and_loop_give_the_same_update(name: str) -> None:
    """The vectorize switch is a performance choice only; it must not change the numbers."""
    batch = make_batch(tasks=4, shots=5, queries=5, dtype=torch.float32)
    via_vmap, meta_params = make_learner(name, [8, 8], vectorize="vmap", dtype=torch.float32)
    via_loop, _ = make_learner(name, [8, 8], vectorize="loop", dtype=torch.float32)
    a, b = via_vmap.outer_update(meta_params, batch), via_loop.outer_update(meta_params, batch)
    assert a.direction.abs().max() > 0
    assert_updates_close(a, b)


# -- MetaModel -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["maml", "metasgd", "reptile_adam"])
def test_meta_model_adapts_like_the_learner(name: str) -> None:
    """The exported nn.Module must fine-tune exactly as the learner's inner loop did in training."""
    learner, meta_params = make_learner(name, [8, 8], inner_steps=3, dtype=torch.float32)
    n = learner.model.num_params
    if isinstance(learner.rule, MetaSGD):
        g = torch.Generator().manual_seed(2)
        meta_params = torch.cat([meta_params[:n], 0.1 * (0.2 + torch.rand(n, generator=g))])
    batch = make_batch(tasks=1, shots=10, queries=20, dtype=torch.float32)
    sx, sy, qx = batch["support_x"][0], batch["support_y"][0], batch["query_x"][0]

    meta_model = learner.export(meta_params)  # what orchestrator/trainer.py logs to MLflow
    assert isinstance(meta_model, MetaModel)
    before = meta_model(qx).detach().clone()

    for steps in (None, 1):
        adapted = meta_model.adapt(sx, sy, steps)
        k = learner.inner_steps if steps is None else steps
        expected = learner.model(learner.adapt(meta_params, sx, sy, k), qx)
        torch.testing.assert_close(adapted(qx), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(adapted(qx), before, atol=1e-3), "adaptation did nothing"
    torch.testing.assert_close(meta_model(qx), before, rtol=0, atol=0)  # adapt() must not mutate the meta-model


def test_reptile_inner_adam_and_mini_batches_match_a_hand_written_loop() -> None:
    """Nichol et al.'s Omniglot recipe: Adam (beta1 = 0) over mini-batches cycling through
    support + queries. Reference: torch.optim.Adam on an nn.Module, batches sliced by hand."""
    model = FunctionalModel(mlp(1, [8], 1))
    model.module.to(F64)
    learner = Reptile(model, F.mse_loss, Adam(0.01), 5, "loop", inner_batch=4)
    theta = learner.init_meta_params(0).to(F64)
    batch = make_batch(tasks=2, shots=3, queries=9)
    update = learner.outer_update(theta, batch)

    expected = torch.zeros_like(theta)
    for i in range(2):
        net = mlp(1, [8], 1).to(F64)
        with torch.no_grad():
            for p, v in zip(net.parameters(), named_views(net, theta).values()):
                p.copy_(v)
        opt = torch.optim.Adam(net.parameters(), lr=0.01, betas=(0.0, 0.999), eps=1e-8)
        x = torch.cat([batch["support_x"][i], batch["query_x"][i]])  # 12 rows -> 3 batches of 4
        y = torch.cat([batch["support_y"][i], batch["query_y"][i]])
        for step in range(5):
            rows = list(range(step % 3, 12, 3))
            opt.zero_grad()
            F.mse_loss(net(x[rows]), y[rows]).backward()
            opt.step()
        expected += theta - torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    torch.testing.assert_close(update.direction, expected, rtol=1e-10, atol=1e-12)

    # The exported model adapts with the same Adam, on the full support set.
    sx, sy = batch["support_x"][0], batch["support_y"][0]
    meta_model = learner.export(theta)
    torch.testing.assert_close(
        meta_model.adapt(sx, sy, 3)(batch["query_x"][0]), learner.query_logits(theta, sx, sy, batch["query_x"][0], 3)
    )
