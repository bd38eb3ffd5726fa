"""Sinusoid tasks are pure functions of their descriptors and follow Finn et al. 2017.

Workers rebuild tasks from descriptors, so determinism and independence from batch
composition are what make distributed runs reproducible.
"""

from __future__ import annotations

import math

import pytest
import torch

from metaorch.tasks.base import TaskBatch
from metaorch.tasks import SinusoidTasks, TaskDescriptor, descriptors

KEYS = ("support_x", "support_y", "query_x", "query_y", "amplitude", "phase")


def build(tasks: list[TaskDescriptor], shots: int = 5, queries: int = 7) -> TaskBatch:
    """A batch from a fresh family instance, so nothing can be cached between calls."""
    return SinusoidTasks(shots=shots, queries=queries).batch(tasks)


def task_slice(batch: TaskBatch, i: int) -> TaskBatch:
    return {k: batch[k][i] for k in KEYS}


def assert_same_task(a: TaskBatch, b: TaskBatch) -> None:
    for k in KEYS:
        assert torch.equal(a[k], b[k]), k


def test_same_descriptor_gives_identical_tensors() -> None:
    """Two workers building the same descriptors must produce bit-identical batches."""
    ds = descriptors(seed=3, split="train", iteration=11, count=4)
    assert [d.index for d in ds] == [0, 1, 2, 3]
    a, b = build(ds), build(list(ds))
    assert set(a) == set(KEYS)
    for k in KEYS:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    "other",
    [
        TaskDescriptor(seed=3, split="train", iteration=11, index=1),
        TaskDescriptor(seed=3, split="train", iteration=12, index=0),
        TaskDescriptor(seed=3, split="val", iteration=11, index=0),
        TaskDescriptor(seed=3, split="test", iteration=11, index=0),
        TaskDescriptor(seed=4, split="train", iteration=11, index=0),
    ],
    ids=["index", "iteration", "split-val", "split-test", "seed"],
)
def test_any_descriptor_field_changes_the_task(other: TaskDescriptor) -> None:
    """Each field of the descriptor must feed the task's random stream."""
    base = build([TaskDescriptor(seed=3, split="train", iteration=11, index=0)])
    changed = build([other])
    for k in ("support_x", "query_x", "amplitude", "phase"):
        assert not torch.equal(base[k], changed[k]), k


def test_task_is_independent_of_the_batch_it_is_built_in() -> None:
    """A task built alone equals the same task built at any position inside a larger batch."""
    ds = descriptors(seed=0, split="val", iteration=2, count=6)
    big = build(ds)
    for i in (0, 3, 5):
        assert_same_task(task_slice(build([ds[i]]), 0), task_slice(big, i))
    shuffled = build([ds[5], ds[0]])
    assert_same_task(task_slice(shuffled, 0), task_slice(big, 5))


def test_shapes_and_query_override() -> None:
    """Support is [B, K, 1] and query [B, Q, 1]; ``queries=`` overrides Q without changing the support."""
    ds = descriptors(seed=0, split="train", iteration=0, count=3)
    family = SinusoidTasks(shots=5, queries=7)
    batch = family.batch(ds)
    assert batch["support_x"].shape == batch["support_y"].shape == (3, 5, 1)
    assert batch["query_x"].shape == batch["query_y"].shape == (3, 7, 1)
    assert batch["amplitude"].shape == batch["phase"].shape == (3,)
    assert all(v.dtype == torch.float32 for v in batch.values())

    more = family.batch(ds, queries=50)
    assert more["query_x"].shape == (3, 50, 1)
    assert torch.equal(more["support_x"], batch["support_x"])
    assert torch.equal(more["amplitude"], batch["amplitude"])


def test_distribution_ranges_and_targets() -> None:
    """Amplitude in [0.1, 5], phase in [0, pi], x in [-5, 5], and y = A sin(x - phase) on every point."""
    batch = build(descriptors(seed=1, split="train", iteration=0, count=300), shots=10, queries=10)
    amp, phase = batch["amplitude"], batch["phase"]
    assert 0.1 <= amp.min() and amp.max() <= 5.0
    assert 0.0 <= phase.min() and phase.max() <= math.pi
    # ...and the ranges are actually covered, not collapsed to a point or a sub-interval.
    assert amp.min() < 0.5 and amp.max() > 4.5
    assert phase.min() < 0.3 and phase.max() > math.pi - 0.3
    for side in ("support", "query"):
        x, y = batch[f"{side}_x"], batch[f"{side}_y"]
        assert -5.0 <= x.min() and x.max() <= 5.0
        assert x.min() < -4.5 and x.max() > 4.5
        expected = amp[:, None, None] * torch.sin(x - phase[:, None, None])
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
