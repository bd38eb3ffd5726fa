"""The sequence meta-learners, MANN and SNAIL, on real tensors.

What each must guarantee to be a fair few-shot classifier: predictions use only what came
before them in the sequence (SNAIL's causal masks, MANN's labels arriving one step late),
queries never see each other, the LRUA memory does its bookkeeping as the paper says, the
outer direction is the gradient of the summed episode losses, and the models learn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from metaorch.algorithms.episodic import EpisodicLearner
from metaorch.algorithms.mann import MANN, MANNCore, MemoryState, cosine_weights, least_used, lrua_write_weights, update_usage
from metaorch.algorithms.snail import SNAIL
from metaorch.tasks.base import TaskBatch

WAYS = 5


# -- helpers ---------------------------------------------------------------------------


def episode(shots: int, queries: int, seed: int, ways: int = WAYS) -> TaskBatch:
    """Random images; shuffled support labels, queries class by class, a random order."""
    g = torch.Generator().manual_seed(seed)
    return {
        "support_x": torch.rand(ways * shots, 1, 28, 28, generator=g),
        "support_y": torch.arange(ways).repeat(shots)[torch.randperm(ways * shots, generator=g)],
        "query_x": torch.rand(ways * queries, 1, 28, 28, generator=g),
        "query_y": torch.arange(ways).repeat(queries),
        "order": torch.randperm(ways * (shots + queries), generator=g),
    }


def stack(tasks: list[TaskBatch]) -> TaskBatch:
    return {k: torch.stack([t[k] for t in tasks]) for k in tasks[0]}


def templates(n: int = 40, seed: int = 0) -> torch.Tensor:
    """Classes for the learning checks: random 4x4 binary patterns blown up to 28x28, coarse
    enough that a randomly initialised Conv-4 already tells them apart somewhat."""
    g = torch.Generator().manual_seed(seed)
    cells = (torch.rand(n, 1, 4, 4, generator=g) < 0.5).float()
    return F.interpolate(cells, size=28, mode="nearest")


def template_episodes(tpl: torch.Tensor, tasks: int, shots: int, queries: int, noise: float, g: torch.Generator) -> TaskBatch:
    """``tasks`` 5-way episodes over random classes of ``tpl``: template plus Gaussian noise."""
    out = []
    for _ in range(tasks):
        cls = torch.randperm(tpl.shape[0], generator=g)[:WAYS]
        t = {
            "support_y": torch.arange(WAYS).repeat(shots)[torch.randperm(WAYS * shots, generator=g)],
            "query_y": torch.arange(WAYS).repeat(queries),
            "order": torch.randperm(WAYS * (shots + queries), generator=g),
        }
        for part in ("support", "query"):
            y = t[f"{part}_y"]
            t[f"{part}_x"] = tpl[cls[y]] + noise * torch.randn(len(y), 1, 28, 28, generator=g)
        out.append(t)
    return stack(out)


@contextmanager
def one_thread() -> Iterator[None]:
    """Timing-sensitive tests run single-threaded: on a shared 2-core machine, two threads
    per process make these small kernels several times slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def small_mann(**kw: object) -> MANN:
    return MANN(WAYS, filters=8, hidden=32, slots=16, width=8, reads=2, **kw)


def small_snail(shots: int, **kw: object) -> SNAIL:
    return SNAIL(WAYS, shots, filters=8, scale=0.25, **kw)


def logits_of(learner: EpisodicLearner, params: torch.Tensor, task: TaskBatch) -> torch.Tensor:
    return learner.query_logits(params, task["support_x"], task["support_y"], task["query_x"])


# -- shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize("shots", [1, 5])
@pytest.mark.parametrize("method", ["mann", "snail"])
def test_query_logits_shapes_at_paper_size(method: str, shots: int):
    learner = MANN(WAYS) if method == "mann" else SNAIL(WAYS, shots)
    params = learner.init_meta_params(0)
    task = episode(shots, 3, seed=shots)
    with torch.no_grad(), one_thread():
        logits = logits_of(learner, params, task)
        assert logits.shape == (WAYS * 3, WAYS)
        assert torch.isfinite(logits).all()
        if method == "snail":  # a network built for 1-shot still runs on other shot counts
            one_shot = SNAIL(WAYS, 1)
            assert logits_of(one_shot, one_shot.init_meta_params(0), task).shape == (WAYS * 3, WAYS)
        if method == "mann":
            seq, y = learner.sequence_logits(params, task)
            assert seq.shape == (WAYS * (shots + 3), WAYS)
            assert torch.equal(y, torch.cat([task["support_y"], task["query_y"]])[task["order"]])


# -- causality -------------------------------------------------------------------------


def test_snail_output_at_t_ignores_later_inputs():
    learner = small_snail(shots=5)  # T = 26: five dense blocks per TCBlock, dilations up to 16
    core = learner.model.module.core
    params = learner.init_meta_params(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 26, 8 + WAYS, generator=g)
    with torch.no_grad():
        out = learner.model.sub(params, "core", x)
        for t in (0, 7, 20):
            later = x.clone()
            later[:, t + 1 :] += torch.randn(2, 25 - t, 8 + WAYS, generator=g)
            changed = learner.model.sub(params, "core", later)
            torch.testing.assert_close(changed[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-6)
            assert (changed[:, t + 1] - out[:, t + 1]).abs().max() > 1e-3
    assert [b.dilation for b in core.blocks[1]] == [1, 2, 4, 8, 16]


def test_snail_shared_prefix_pass_equals_one_sequence_per_query():
    """query_logits runs support + all queries in one pass; it must equal the paper's
    formulation, one sequence [support..., query] per query."""
    learner = small_snail(shots=2, transductive=False)
    params = learner.init_meta_params(1)
    task = episode(2, 3, seed=3)
    with torch.no_grad():
        fast = logits_of(learner, params, task)
        zs, zq = learner.embed(params, task["support_x"], task["query_x"], module="encoder")
        support = torch.cat([zs, F.one_hot(task["support_y"], WAYS).float()], -1)
        query = torch.cat([zq, torch.zeros(len(zq), WAYS)], -1)
        seqs = torch.cat([support.expand(len(zq), -1, -1), query[:, None]], 1)  # [NQ, NK+1, d]
        slow = learner.model.sub(params, "core", seqs)[:, -1]
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def relabel(task: TaskBatch, step: int) -> TaskBatch:
    """The episode with the label of sequence step ``step`` changed to another class."""
    task = {k: v.clone() for k, v in task.items()}
    j = int(task["order"][step])
    key, j = ("support_y", j) if j < len(task["support_y"]) else ("query_y", j - len(task["support_y"]))
    task[key][j] = (task[key][j] + 1) % WAYS
    return task


def test_mann_sees_each_label_one_step_late():
    learner = small_mann()
    params = learner.init_meta_params(0)
    task = episode(2, 2, seed=4)
    t = 9
    with torch.no_grad():
        base, _ = learner.sequence_logits(params, task)
        now, _ = learner.sequence_logits(params, relabel(task, t))  # label of step t
        before, _ = learner.sequence_logits(params, relabel(task, t - 1))  # label of step t-1
    torch.testing.assert_close(now[: t + 1], base[: t + 1], rtol=0, atol=0)
    assert (now[t + 1] - base[t + 1]).abs().max() > 1e-4
    torch.testing.assert_close(before[:t], base[:t], rtol=0, atol=0)
    assert (before[t] - base[t]).abs().max() > 1e-4


# -- queries do not see each other ---------------------------------------------------------


@pytest.mark.parametrize("method", ["mann", "snail"])
def test_queries_are_independent_unless_transductive(method: str):
    task = episode(1, 2, seed=5)
    other = {**task, "query_x": task["query_x"].clone()}
    other["query_x"][0] = torch.rand(1, 28, 28)
    for transductive in (False, True):
        learner = small_mann(transductive=transductive) if method == "mann" else small_snail(1, transductive=transductive)
        params = learner.init_meta_params(0)
        with torch.no_grad():
            a, b = logits_of(learner, params, task), logits_of(learner, params, other)
        assert (a[0] - b[0]).abs().max() > 1e-4
        rest = (a[1:] - b[1:]).abs().max()
        # transductive batch norm normalises with query statistics: a query moves the others
        assert rest > 1e-5 if transductive else rest <= 1e-6


# -- LRUA ----------------------------------------------------------------------------------


def test_least_used_marks_the_n_smallest_usages_ties_to_lower_index():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.1, 0.3]])
    lu, slot = least_used(usage, 2)
    assert lu.tolist() == [[0, 1, 0, 1, 0]] and slot.tolist() == [[0, 1, 0, 0, 0]]
    lu, _ = least_used(usage, 3)
    assert lu.tolist() == [[0, 1, 0, 1, 1]]
    lu, slot = least_used(torch.zeros(1, 4), 2)  # a fresh memory fills slots 0, 1, ...
    assert lu.tolist() == [[1, 1, 0, 0]] and slot.tolist() == [[1, 0, 0, 0]]


def test_lrua_write_weights_interpolate_last_read_and_least_used():
    prev_read = torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]]])  # two heads
    usage = torch.tensor([[0.2, 0.9, 0.0, 0.5]])  # two reads -> least used: slots 2, 0
    lu = torch.tensor([1.0, 0.0, 1.0, 0.0])
    gate = torch.tensor([[[0.0], [20.0]]])  # head 0 halfway, head 1 all "last read"
    w = lrua_write_weights(gate, prev_read, usage)
    torch.testing.assert_close(w[0, 0], 0.5 * prev_read[0, 0] + 0.5 * lu)
    torch.testing.assert_close(w[0, 1], prev_read[0, 1], atol=1e-8, rtol=1e-6)
    w = lrua_write_weights(torch.full((1, 2, 1), -20.0), prev_read, usage)
    torch.testing.assert_close(w[0], lu.expand(2, 4), atol=1e-8, rtol=1e-6)
    new = update_usage(usage, prev_read, w, gamma=0.9)
    torch.testing.assert_close(new, 0.9 * usage + prev_read.sum(1) + w.sum(1))


def test_core_step_writes_reads_and_updates_usage_on_a_hand_made_state():
    torch.manual_seed(0)
    core = MANNCore(input_size=3, ways=2, hidden=4, slots=4, width=3, reads=1, gamma=0.95)
    memory = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]])
    state = MemoryState(
        h=torch.zeros(1, 4),
        c=torch.zeros(1, 4),
        reads=torch.zeros(1, 1, 3),
        memory=memory,
        read_weights=torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]),  # last read: slot 0
        usage=torch.tensor([[0.2, 0.9, 0.0, 0.5]]),  # least used: slot 2
    )
    with torch.no_grad():
        _, new = core.step(torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.0, 1.0]]), state)
        iface = core.interface(new.h)[0]  # key (3), add (3), gate (1), key strength (1)
        key, add, gate = torch.tanh(iface[:3]), torch.tanh(iface[3:6]), torch.sigmoid(iface[6])
        strength = 1 + F.softplus(iface[7])
    write = torch.tensor([gate, 0.0, 1 - gate, 0.0])
    expected = memory[0].clone()
    expected[2] = 0.0  # the least-used slot is erased before the write
    expected = expected + write[:, None] * add
    torch.testing.assert_close(new.memory[0], expected)
    read = cosine_weights(key[None, None], new.memory, strength)
    torch.testing.assert_close(new.read_weights, read)
    torch.testing.assert_close(new.reads, read @ new.memory)
    torch.testing.assert_close(new.usage[0], 0.95 * state.usage[0] + read[0, 0] + write)


# -- the outer direction and the metrics ---------------------------------------------------


@pytest.mark.parametrize("method", ["mann", "snail"])
def test_outer_update_is_the_gradient_of_the_summed_episode_losses(method: str):
    if method == "mann":
        learner, tasks = small_mann(transductive=False), [episode(1, 9, seed=s) for s in range(3)]
    else:
        learner, tasks = small_snail(1), [episode(1, 3, seed=s) for s in range(3)]
    params = learner.init_meta_params(0)
    with one_thread():
        update = learner.outer_update(params, stack(tasks))
        leaf = params.clone().requires_grad_()
        losses = [learner.episode_loss(leaf, t)[0] for t in tasks]
        (expected,) = torch.autograd.grad(sum(losses), leaf)
        learner.vectorize = "vmap"
        batched = learner.outer_update(params, stack(tasks))
    torch.testing.assert_close(update.direction, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(batched.direction, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(update.pre_loss, torch.stack(losses).detach())
    for part in ("encoder", "core"):  # both the image encoder and the sequence model learn
        assert update.direction[learner.model.slice(part)].abs().sum() > 0
    keys = {"accuracy"} | ({f"acc_instance_{i}" for i in (1, 2, 3, 5, 10)} if method == "mann" else set())
    assert set(update.metrics) == keys
    for value in update.metrics.values():
        assert value.shape == (3,) and ((value >= 0) & (value <= 1)).all()


@pytest.mark.parametrize("shots,queries,instances", [(1, 9, (1, 2, 3, 5, 10)), (1, 3, (1, 2, 3))])
def test_mann_instance_accuracies_count_occurrences_of_each_class(shots: int, queries: int, instances: tuple[int, ...]):
    learner = small_mann()
    params = learner.init_meta_params(2)
    task = episode(shots, queries, seed=6)
    with torch.no_grad():
        _, metrics = learner.episode_loss(params, task)
        logits, y = learner.sequence_logits(params, task)
        query = logits_of(learner, params, task)
    seen: dict[int, int] = {}
    right: dict[int, list[bool]] = {}
    for step, label in enumerate(y.tolist()):
        seen[label] = seen.get(label, 0) + 1
        right.setdefault(seen[label], []).append(bool(logits[step].argmax() == label))
    assert set(metrics) == {"accuracy"} | {f"acc_instance_{i}" for i in instances}
    for i in instances:
        assert metrics[f"acc_instance_{i}"].item() == pytest.approx(sum(right[i]) / len(right[i]))
    assert metrics["accuracy"].item() == pytest.approx((query.argmax(-1) == task["query_y"]).float().mean().item())


# -- they learn ------------------------------------------------------------------------------


def meta_train(
    learner: EpisodicLearner, steps: int, meta_batch: int, lr: float, sample: Callable[[int], TaskBatch]
) -> torch.Tensor:
    """Plain Adam on ``outer_update``'s direction, averaged over the meta-batch."""
    params = learner.init_meta_params(0).requires_grad_()
    opt = torch.optim.Adam([params], lr=lr)
    for _ in range(steps):
        update = learner.outer_update(params.detach(), sample(meta_batch))
        params.grad = update.direction / meta_batch
        opt.step()
    return params.detach()


def test_snail_learns_one_shot_classification():
    tpl, g = templates(), torch.Generator().manual_seed(1)
    learner = small_snail(1, vectorize="vmap")
    with one_thread():
        params = meta_train(learner, 160, 8, 3e-3, lambda n: template_episodes(tpl, n, 1, 2, 0.3, g))
        held_out = template_episodes(tpl, 16, 1, 5, 0.3, torch.Generator().manual_seed(99))
        with torch.no_grad():
            _, metrics = torch.func.vmap(learner.episode_loss, (None, 0))(params, held_out)
    assert metrics["accuracy"].mean() > 0.5  # chance: 0.2


def test_mann_learns_from_labels_given_one_step_late():
    """A reduced MANN, 100 meta-steps. Binding images to labels in memory (accuracy above
    chance from the 2nd instance of a class on) takes ~150-250 steps of 8 episodes even at
    this size, too long for a unit test; what it learns first, and what is checked here, is
    to use the late labels across time: at a class's first instance the right label is one
    not given yet, so accuracy there rises above chance (0.2). Binding itself is tested on
    real Omniglot in test_omniglot_sequence_training.py."""
    tpl, g = templates(), torch.Generator().manual_seed(1)
    learner = MANN(WAYS, filters=8, hidden=64, slots=32, width=16, reads=1, vectorize="vmap")
    held_out = template_episodes(tpl, 32, 1, 5, 0.1, torch.Generator().manual_seed(99))

    def evaluate(params: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            loss, metrics = torch.func.vmap(learner.episode_loss, (None, 0))(params, held_out)
        return loss.mean(), {k: v.mean() for k, v in metrics.items()}

    with one_thread():
        loss0, _ = evaluate(learner.init_meta_params(0))
        params = meta_train(learner, 100, 8, 5e-3, lambda n: template_episodes(tpl, n, 1, 5, 0.1, g))
        loss, metrics = evaluate(params)
    assert metrics["acc_instance_1"] > 0.3
    assert loss < loss0 - 0.02
