"""Prototypical, Matching and Siamese networks on real tensors: shapes, references, the
transductive switch, invariances, and that each one learns a synthetic few-shot problem."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from metaorch.algorithms.base import accuracy
from metaorch.algorithms.episodic import EpisodicLearner
from metaorch.algorithms.matching import MatchingNetworks, attention_logits, matching_model
from metaorch.algorithms.protonet import ProtoNet, prototype_logits
from metaorch.algorithms.siamese import SiameseNetworks, max_per_class, verification_loss
from metaorch.tasks.base import TaskBatch

torch.set_num_threads(1)

LEARNERS: dict[str, Callable[..., EpisodicLearner]] = {
    "protonet": lambda **kw: ProtoNet(**kw),
    "matching": lambda **kw: MatchingNetworks(**kw),
    "matching_fce": lambda **kw: MatchingNetworks(matching_model(fce=True, fce_steps=2), **kw),
    "siamese": lambda **kw: SiameseNetworks(**kw),
}
ORDER_FREE = ["protonet", "matching", "siamese"]  # FCE reads the support set as a sequence


def episode(ways: int, shots: int, queries: int, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    return {
        "support_x": torch.rand(ways * shots, 1, 28, 28, generator=g),
        "support_y": torch.arange(ways).repeat_interleave(shots),
        "query_x": torch.rand(ways * queries, 1, 28, 28, generator=g),
        "query_y": torch.arange(ways).repeat_interleave(queries),
    }


def stack(tasks: list[TaskBatch]) -> TaskBatch:
    return {k: torch.stack([t[k] for t in tasks]) for k in tasks[0]}


def logits_of(learner: EpisodicLearner, params: torch.Tensor, task: TaskBatch) -> torch.Tensor:
    return learner.query_logits(params, task["support_x"], task["support_y"], task["query_x"])


@pytest.mark.parametrize("name", LEARNERS)
def test_logits_shape_for_any_number_of_ways(name: str) -> None:
    learner = LEARNERS[name]()
    params = learner.init_meta_params(0)
    for ways, shots, queries in [(5, 1, 3), (20, 1, 2), (3, 4, 1)]:
        logits = logits_of(learner, params, episode(ways, shots, queries))
        assert logits.shape == (ways * queries, ways)
        assert torch.isfinite(logits).all()


def test_prototype_logits_match_explicit_loops() -> None:
    g = torch.Generator().manual_seed(0)
    support_z, query_z = torch.randn(7, 5, generator=g), torch.randn(4, 5, generator=g)
    support_y = torch.tensor([2, 0, 1, 2, 0, 2, 1])  # unequal shots, shuffled
    expected = torch.zeros(4, 3)
    for c in range(3):
        rows = [support_z[i] for i in range(7) if support_y[i] == c]
        proto = sum(rows) / len(rows)
        for q in range(4):
            expected[q, c] = -sum((query_z[q, d] - proto[d]) ** 2 for d in range(5))
    torch.testing.assert_close(prototype_logits(support_z, support_y, query_z), expected)

    learner = ProtoNet()
    params = learner.init_meta_params(0)
    task = episode(3, 2, 2)
    zs, zq = learner.embed(params, task["support_x"], task["query_x"])
    torch.testing.assert_close(logits_of(learner, params, task), prototype_logits(zs, task["support_y"], zq))


def test_attention_logits_match_explicit_loops() -> None:
    g = torch.Generator().manual_seed(0)
    support_z, query_z = torch.randn(5, 4, generator=g), torch.randn(3, 4, generator=g)
    support_y = torch.tensor([1, 0, 1, 0, 1])
    expected = torch.zeros(3, 2)
    for q in range(3):
        cos = torch.stack([F.cosine_similarity(query_z[q], support_z[i], dim=0) for i in range(5)])
        attention = torch.softmax(2.0 * cos, 0)
        for c in range(2):
            expected[q, c] = torch.log(sum(attention[i] for i in range(5) if support_y[i] == c))
    torch.testing.assert_close(attention_logits(support_z, support_y, query_z, scale=2.0), expected)


def test_matching_scale_comes_from_the_config() -> None:
    from metaorch.orchestrator.components import matching
    from metaorch.orchestrator.config import from_dict

    config = from_dict({"task": {"name": "omniglot", "queries": 5}, "eval": {"queries": 5}, "data": {"root": "unused"}, "algorithm": {"name": "matching", "scale": 10.0}})
    assert matching(config, None).scale == 10.0


@pytest.mark.parametrize("name", LEARNERS)
def test_outer_update_is_summed_episode_gradient(name: str) -> None:
    learner = LEARNERS[name]()
    params = learner.init_meta_params(1)
    tasks = [episode(3, 2, 2, seed=s) for s in range(2)]
    update = learner.outer_update(params, stack(tasks))

    leaf = params.clone().requires_grad_(True)
    total, accuracies = torch.zeros(()), []
    for task in tasks:
        logits = logits_of(learner, leaf, task)
        if name == "siamese":  # verification loss, not cross-entropy
            loss, _ = learner.episode_loss(leaf, task)
        else:
            loss = F.cross_entropy(logits, task["query_y"])
        total = total + loss
        accuracies.append(accuracy(logits, task["query_y"]))
    (expected,) = torch.autograd.grad(total, leaf)

    assert torch.isfinite(update.direction).all()
    torch.testing.assert_close(update.direction, expected, rtol=1e-4, atol=1e-6)
    acc = update.metrics["accuracy"]
    assert acc.shape == (2,) and ((acc >= 0) & (acc <= 1)).all()
    torch.testing.assert_close(acc, torch.stack(accuracies))
    torch.testing.assert_close(update.pre_loss.sum(), total.detach())


@pytest.mark.parametrize("name", LEARNERS)
def test_transductive_switch(name: str) -> None:
    task = episode(4, 2, 3)
    changed = dict(task, query_x=task["query_x"].clone())
    changed["query_x"][0] = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(9))
    for transductive in (False, True):
        learner = LEARNERS[name](transductive=transductive)
        params = learner.init_meta_params(0)
        before, after = logits_of(learner, params, task), logits_of(learner, params, changed)
        assert not torch.allclose(before[0], after[0])
        if transductive:  # batch-norm statistics include every query
            assert (before[1:] - after[1:]).abs().max() > 1e-4
        else:
            torch.testing.assert_close(before[1:], after[1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ORDER_FREE)
@pytest.mark.parametrize("transductive", [False, True])
def test_support_order_does_not_matter(name: str, transductive: bool) -> None:
    learner = LEARNERS[name](transductive=transductive)
    params = learner.init_meta_params(0)
    task = episode(4, 3, 2)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    shuffled = dict(task, support_x=task["support_x"][perm], support_y=task["support_y"][perm])
    torch.testing.assert_close(logits_of(learner, params, task), logits_of(learner, params, shuffled), rtol=1e-4, atol=1e-5)


def test_verification_loss_on_a_hand_built_episode() -> None:
    y = torch.tensor([0, 0, 1])  # pairs (0,1) same; (0,2), (1,2) different
    logits = torch.tensor([[9.0, 2.0, -1.0], [2.0, 9.0, 0.5], [-1.0, 0.5, 9.0]])
    same = F.softplus(torch.tensor(-2.0))  # -log sigmoid(2)
    different = (F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(0.5))) / 2
    loss, verification = verification_loss(logits, y)
    torch.testing.assert_close(loss, (same + different) / 2)
    torch.testing.assert_close(verification, torch.tensor(0.75))  # same right; one of two different right


def test_siamese_episode_loss_weights_same_and_different_pairs_equally() -> None:
    learner = SiameseNetworks()
    params = learner.init_meta_params(0).clone()
    head = learner.model.slice("head")
    bias = 1.5
    params[head] = torch.cat([torch.zeros(64), torch.tensor([bias])])  # every pair's logit is the bias
    task = episode(3, 1, 1)  # 6 images: 3 same pairs, 12 different pairs
    loss, metrics = learner.episode_loss(params, task)
    balanced = (F.softplus(torch.tensor(-bias)) + F.softplus(torch.tensor(bias))) / 2
    torch.testing.assert_close(loss, balanced)
    torch.testing.assert_close(metrics["verification_accuracy"], torch.tensor(0.5))


def test_siamese_classifies_by_most_similar_support_image() -> None:
    pair = torch.tensor([[1.0, 5.0, 2.0, 0.0], [3.0, -1.0, 4.0, -2.0]])
    torch.testing.assert_close(max_per_class(pair, torch.tensor([0, 0, 1, 1])), torch.tensor([[5.0, 2.0], [3.0, 4.0]]))

    learner = SiameseNetworks()
    params = learner.init_meta_params(2)
    task = episode(4, 3, 3)
    zs, zq = learner.embed(params, task["support_x"], task["query_x"], module="encoder")
    same_probability = torch.sigmoid(learner.pair_logits(params, zq, zs))  # [Q, S]
    nearest_label = task["support_y"][same_probability.argmax(1)]
    assert torch.equal(logits_of(learner, params, task).argmax(1), nearest_label)


# A synthetic Omniglot: 40 classes, each a fixed random 7x7 binary pattern upscaled to 28x28;
# an image is its class pattern shifted by up to 2 pixels with 10% of the pixels flipped.
def templates(n: int = 40) -> torch.Tensor:
    coarse = (torch.rand(n, 1, 7, 7, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    return coarse.repeat_interleave(4, 2).repeat_interleave(4, 3)


def draw(patterns: torch.Tensor, classes: torch.Tensor, count: int, g: torch.Generator) -> torch.Tensor:
    images = []
    for pattern in patterns[classes].repeat_interleave(count, 0):
        dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
        images.append(torch.roll(pattern, (dx, dy), (1, 2)))
    x = torch.stack(images)
    return torch.where(torch.rand(x.shape, generator=g) < 0.1, 1 - x, x)


def synthetic_episode(patterns: torch.Tensor, pool: torch.Tensor, g: torch.Generator, queries: int) -> TaskBatch:
    classes = pool[torch.randperm(len(pool), generator=g)[:5]]
    return {
        "support_x": draw(patterns, classes, 1, g),
        "support_y": torch.arange(5),
        "query_x": draw(patterns, classes, queries, g),
        "query_y": torch.arange(5).repeat_interleave(queries),
    }


@pytest.mark.parametrize("name", LEARNERS)
def test_learns_five_way_one_shot_on_held_out_classes(name: str) -> None:
    patterns = templates()
    train, held_out = torch.arange(30), torch.arange(30, 40)
    learner = LEARNERS[name]()

    def held_out_accuracy(params: torch.Tensor) -> float:
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            tasks = [synthetic_episode(patterns, held_out, g, queries=3) for _ in range(20)]
            return sum(accuracy(logits_of(learner, params, t), t["query_y"]).item() for t in tasks) / len(tasks)

    params = torch.nn.Parameter(learner.init_meta_params(0))
    before = held_out_accuracy(params.detach())
    opt = torch.optim.Adam([params], lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        update = learner.outer_update(params.detach(), stack([synthetic_episode(patterns, train, g, queries=2)]))
        params.grad = update.direction
        opt.step()
    after = held_out_accuracy(params.detach())
    assert after > 0.6 and after > before + 0.2, (before, after)
