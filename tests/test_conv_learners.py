"""Conv-4, its batch-norm switch, and the gradient-based learners on image episodes.

References are written independently with ``torch.nn`` modules and ``torch.autograd``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metaorch.algorithms import ANIL, MAML, SGD, Conv4Classifier, FunctionalModel, GradientBasedLearner, MetaSGD, Reptile
from metaorch.algorithms.base import differentiated_twice, inner_grad
from metaorch.algorithms.conv4 import to_channels_last

F64 = torch.float64


def episode(ways: int = 3, shots: int = 2, queries: int = 2, seed: int = 0, tasks: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "support_x": torch.rand(tasks, ways * shots, 1, 28, 28, generator=g, dtype=F64),
        "support_y": torch.arange(ways).repeat(shots).expand(tasks, -1).clone(),
        "query_x": torch.rand(tasks, ways * queries, 1, 28, 28, generator=g, dtype=F64),
        "query_y": torch.arange(ways).repeat(queries).expand(tasks, -1).clone(),
    }


def learner(name: str, ways: int = 3, transductive: bool = True, steps: int = 2) -> tuple[GradientBasedLearner, torch.Tensor]:
    model = FunctionalModel(Conv4Classifier(ways))
    model.module.to(F64)
    cls, rule, options = {
        "maml": (MAML, SGD, {}),
        "fomaml": (MAML, SGD, {"first_order": True}),
        "metasgd": (MAML, MetaSGD, {}),
        "anil": (ANIL, SGD, {}),
        "reptile": (Reptile, SGD, {}),
    }[name]
    lrn = cls(model, F.cross_entropy, rule(0.4), steps, vectorize="loop", transductive=transductive, classify=True, **options)
    return lrn, lrn.init_meta_params(0).to(F64)


def test_conv4_matches_torch_batchnorm_in_training_mode() -> None:
    """With batch statistics, Conv-4 is the textbook Conv-BN-ReLU-Pool stack."""
    net = Conv4Classifier(5).double()
    ref = torch.nn.Sequential(
        *[
            torch.nn.Sequential(conv, torch.nn.BatchNorm2d(64, track_running_stats=False).double(), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
            for conv in net.body.convs
        ],
        torch.nn.Flatten(),
        net.head,
    )
    x = torch.rand(7, 1, 28, 28, dtype=F64, requires_grad=True)
    torch.testing.assert_close(net(x), ref(x))

    # ReLU after the pool: the same first and second derivatives (MAML's outer gradient
    # differentiates the inner gradient), through the parameters and the input
    y = torch.arange(7) % 5
    params = list(net.body.convs.parameters()) + list(net.head.parameters())

    def second_order(model: torch.nn.Module) -> list[torch.Tensor]:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
        return list(torch.autograd.grad(sum((g * g).sum() for g in grads), [x, *params]))

    for ours, textbook in zip(second_order(net), second_order(ref)):
        torch.testing.assert_close(ours, textbook)


def test_conv4_runs_channels_last() -> None:
    """oneDNN's fast layout from the first conv on, also for 1-channel images, whose NCHW
    strides ``contiguous(memory_format=channels_last)`` leaves alone."""
    x = torch.rand(3, 1, 28, 28)
    assert to_channels_last(x).equal(x)
    first = F.conv2d(to_channels_last(x), torch.randn(8, 1, 3, 3), padding=1)
    assert first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()
    rgb = torch.rand(3, 3, 28, 28)
    assert to_channels_last(rgb).is_contiguous(memory_format=torch.channels_last)


def test_second_order_inner_steps_build_their_graph_in_nchw() -> None:
    """A graph that will be differentiated twice runs NCHW (faster double backward); every
    other forward, the first-order inner step included, runs channels-last."""
    model = FunctionalModel(Conv4Classifier(3))
    seen: list[tuple[bool, bool]] = []
    model.module.body.convs[0].register_forward_pre_hook(
        lambda _, args: seen.append((differentiated_twice(), args[0].stride(1) == 1))  # 1 channel: channels-last strides
    )
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4) % 3
    w = model.init_params(0).requires_grad_(True)
    for create_graph in (True, False):
        inner_grad(lambda v: F.cross_entropy(model(v, x), y), w, create_graph)
    model(w, x)
    assert seen == [(True, False), (False, True), (False, True)]
    assert not differentiated_twice()


def test_not_transductive_queries_do_not_see_each_other() -> None:
    batch = episode(tasks=1)
    task = {k: v[0] for k, v in batch.items()}
    changed = task["query_x"].clone()
    changed[0] = 1 - changed[0]
    for transductive, same in ((False, True), (True, False)):
        lrn, p = learner("maml", transductive=transductive)
        a = lrn.query_logits(p, task["support_x"], task["support_y"], task["query_x"])
        b = lrn.query_logits(p, task["support_x"], task["support_y"], changed)
        assert torch.allclose(a[1:], b[1:]) is same


def ref_anil_post_loss(lrn: ANIL, p: torch.Tensor, task: dict[str, torch.Tensor]) -> torch.Tensor:
    """ANIL by hand: full-model forward, autograd w.r.t. the head's weight and bias only."""
    net = Conv4Classifier(3).double()
    views, i = {}, 0
    for name, q in net.named_parameters():
        views[name] = p[i : i + q.numel()].view_as(q)
        i += q.numel()
    body = {k[5:]: v for k, v in views.items() if k.startswith("body.")}
    w, b = views["head.weight"], views["head.bias"]
    feats = torch.func.functional_call(net.body, body, (task["support_x"],))
    for _ in range(lrn.inner_steps):
        gw, gb = torch.autograd.grad(F.cross_entropy(feats @ w.T + b, task["support_y"]), (w, b), create_graph=True)
        w, b = w - lrn.rule.lr * gw, b - lrn.rule.lr * gb
    q = torch.func.functional_call(net.body, body, (task["query_x"],))
    return F.cross_entropy(q @ w.T + b, task["query_y"])


def test_anil_outer_gradient_matches_hand_written_head_only_maml() -> None:
    lrn, p = learner("anil")
    batch = episode()
    update = lrn.outer_update(p, batch)
    leaf = p.clone().requires_grad_(True)
    total = sum(ref_anil_post_loss(lrn, leaf, {k: v[i] for k, v in batch.items()}) for i in range(2))
    (expected,) = torch.autograd.grad(total, leaf)
    torch.testing.assert_close(update.direction, expected)
    assert update.direction[: lrn.model.slice("head").start].abs().sum() > 0  # the body learns through the features


def test_anil_inner_loop_leaves_the_body_alone() -> None:
    lrn, p = learner("anil")
    task = {k: v[0] for k, v in episode().items()}
    adapted = lrn.adapt(p, task["support_x"], task["support_y"], 3)
    head = lrn.model.slice("head")
    assert torch.equal(adapted[: head.start], p[: head.start])
    assert not torch.allclose(adapted[head], p[head])


def test_exported_anil_adapts_only_its_head() -> None:
    """The model logged to MLflow fine-tunes exactly as ANIL's inner loop did: head only."""
    lrn, p = learner("anil")
    sx, sy, qx = (episode()[k][0] for k in ("support_x", "support_y", "query_x"))
    exported = lrn.export(p)
    adapted = exported.adapt(sx, sy, 3)
    torch.testing.assert_close(adapted(qx), lrn.query_logits(p, sx, sy, qx, 3))
    for (name, before), after in zip(exported.net.named_parameters(), adapted.parameters()):
        assert torch.equal(before, after) != name.startswith("head."), name


def test_classifying_learners_report_accuracy() -> None:
    for name in ("maml", "fomaml", "reptile", "anil", "metasgd"):
        lrn, p = learner(name)
        update = lrn.outer_update(p, episode())
        acc = update.metrics["accuracy"]
        assert acc.shape == (2,) and ((acc >= 0) & (acc <= 1)).all()
        logits = lrn.query_logits(p, *(episode()[k][0] for k in ("support_x", "support_y", "query_x")))
        torch.testing.assert_close(acc[0], (logits.argmax(-1) == episode()["query_y"][0]).float().mean())


def test_model_filters_sets_every_omniglot_methods_conv4_width(tmp_path):
    """``model.filters`` reaches the Conv-4 of each method on Omniglot: its first convolution has
    that many output channels, and the learner computes a direction for an episode with it."""
    from metaorch.orchestrator import registry
    from metaorch.orchestrator.components import build_components
    from metaorch.orchestrator.config import from_dict

    for name in registry.methods_for("classification"):
        config = from_dict({"task": {"name": "omniglot", "ways": 3, "shots": 1, "queries": 2},
                            "data": {"root": str(tmp_path)}, "algorithm": {"name": name}, "model": {"filters": 8},
                            "eval": {"queries": 5}}, "(test)")  # fmt: skip
        _, learner = build_components(config)
        convs = [m for m in learner.model.module.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and convs[0].out_channels == 8, (name, convs[:1])
        batch = {k: v.float() if v.is_floating_point() else v for k, v in episode(ways=3, shots=1, queries=2, tasks=2).items()}
        batch["order"] = torch.stack([torch.randperm(9, generator=torch.Generator().manual_seed(i)) for i in range(2)])
        update = learner.outer_update(learner.init_meta_params(0), batch)
        assert torch.isfinite(update.direction).all() and update.direction.numel() == learner.init_meta_params(0).numel(), name
