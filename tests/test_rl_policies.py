"""The MLP policies: densities, sampling, initialisation, and differentiability through them."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Normal

from metaorch.algorithms.rl.policies import CategoricalMLPPolicy, GaussianMLPPolicy


def test_gaussian_layout_and_init():
    policy = GaussianMLPPolicy(17, 6, hidden=(64, 64), init_std=0.5)
    assert policy.num_params == 17 * 64 + 64 + 64 * 64 + 64 + 64 * 6 + 6 + 6
    a, b, c = policy.init_params(3), policy.init_params(3), policy.init_params(4)
    assert a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)
    named = policy.model.layout.unflatten(a)
    assert torch.allclose(named["log_std"], torch.full((6,), math.log(0.5)))
    assert torch.count_nonzero(named["mean.0.bias"]) == 0
    bound = math.sqrt(6 / (17 + 64))
    assert named["mean.0.weight"].abs().max() <= bound


def test_gaussian_log_prob_matches_torch_and_act():
    policy = GaussianMLPPolicy(5, 3, hidden=(16,))
    params = policy.init_params(0) + 0.1 * torch.randn(policy.num_params, generator=torch.Generator().manual_seed(1))
    obs = torch.randn(32, 5)
    mean, log_std = policy.mean_log_std(params, obs)
    reference = Normal(mean, log_std.exp()).log_prob(actions := torch.randn(32, 3)).sum(-1)
    assert torch.allclose(policy.log_prob(params, obs, actions), reference, atol=1e-5)
    assert torch.allclose(policy.distribution(params, obs).log_prob(actions), reference, atol=1e-5)
    assert torch.allclose(policy.entropy(params, obs), Normal(mean, log_std.exp()).entropy().sum(-1), atol=1e-5)

    noise = torch.randn(32, 3)
    act, logp, state = policy.act(params, obs, None, noise=noise)
    assert state is None
    assert torch.allclose(act, mean + log_std.exp() * noise)
    assert torch.allclose(logp, policy.log_prob(params, obs, act), atol=1e-5)
    det, _, _ = policy.act(params, obs, None, deterministic=True)
    assert torch.equal(det, mean)


def test_gaussian_samples_have_the_learned_spread():
    policy = GaussianMLPPolicy(2, 1, hidden=(8,), init_std=0.3)
    params = policy.init_params(0)
    obs = torch.zeros(20000, 2)
    torch.manual_seed(0)
    act, _, _ = policy.act(params, obs, None)
    assert abs(act.std().item() - 0.3) < 0.01


def test_categorical_log_prob_and_inverse_cdf_sampling():
    policy = CategoricalMLPPolicy(4, 5, hidden=(16,))
    params = policy.init_params(0) * 3
    obs = torch.randn(1, 4).expand(50000, 4)
    probs = policy.distribution(params, obs[:1]).probs[0]
    actions, logp, _ = policy.act(params, obs, None, noise=torch.rand(50000, generator=torch.Generator().manual_seed(2)))
    freq = torch.bincount(actions, minlength=5).float() / 50000
    assert torch.allclose(freq, probs, atol=0.01)
    assert torch.allclose(logp, Categorical(probs=probs).log_prob(actions), atol=1e-5)
    assert torch.allclose(policy.entropy(params, obs[:1]), Categorical(probs=probs).entropy(), atol=1e-5)
    edge, _, _ = policy.act(params, obs[:2], None, noise=torch.tensor([0.0, 0.999999]))
    assert edge.tolist() == [0, 4]
    best, _, _ = policy.act(params, obs[:1], None, deterministic=True)
    assert best.item() == probs.argmax().item()


@pytest.mark.parametrize("make", [lambda: GaussianMLPPolicy(3, 2, (8, 8)), lambda: CategoricalMLPPolicy(3, 4, (8, 8))])
def test_second_order_gradient_through_an_inner_step(make):
    """MAML's need: d/dθ of a loss at θ - α ∇ L(θ) exists and matches finite differences."""
    policy = make()
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(16, 3, generator=gen)
    actions, _, _ = policy.act(policy.init_params(1), obs, None)
    obs, adv = obs.double(), torch.randn(16, generator=gen, dtype=torch.float64)
    actions = actions if actions.dtype == torch.int64 else actions.double()

    def outer(theta: torch.Tensor) -> torch.Tensor:
        inner = -(policy.log_prob(theta, obs, actions) * adv).mean()
        (g,) = torch.autograd.grad(inner, theta, create_graph=True)
        return -(policy.log_prob(theta - 0.5 * g, obs, actions) * adv).mean()

    theta = policy.init_params(2).double().requires_grad_()
    (grad,) = torch.autograd.grad(outer(theta), theta)
    direction = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
    eps = 1e-6
    with torch.enable_grad():
        plus = outer((theta.detach() + eps * direction).requires_grad_())
        minus = outer((theta.detach() - eps * direction).requires_grad_())
    assert torch.allclose((plus - minus) / (2 * eps), grad @ direction, rtol=1e-4, atol=1e-8)


def test_log_prob_vmaps_over_task_parameters():
    policy = GaussianMLPPolicy(3, 2, (8,))
    thetas = torch.stack([policy.init_params(s) for s in range(4)])
    obs, actions = torch.randn(4, 10, 3), torch.randn(4, 10, 2)
    batched = torch.func.vmap(policy.log_prob)(thetas, obs, actions)
    looped = torch.stack([policy.log_prob(t, o, a) for t, o, a in zip(thetas, obs, actions)])
    assert torch.allclose(batched, looped, atol=1e-6)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="act_dim"):
        GaussianMLPPolicy(3, 0)
    with pytest.raises(ValueError, match="num_actions"):
        CategoricalMLPPolicy(3, 1)


def test_hand_written_forward_is_the_modules_forward():
    gaussian, categorical = GaussianMLPPolicy(5, 3, (16, 8)), CategoricalMLPPolicy(5, 4, (16,))
    obs = torch.randn(7, 5)
    p = gaussian.init_params(0) + 0.1
    mean, log_std = gaussian.model(p, obs)
    assert torch.allclose(gaussian.mean_log_std(p, obs)[0], mean, atol=1e-6)
    assert torch.allclose(gaussian.mean_log_std(p, obs)[1], log_std)
    q = categorical.init_params(0) + 0.1
    assert torch.allclose(categorical.logits(q, obs), torch.log_softmax(categorical.model(q, obs), -1), atol=1e-6)
