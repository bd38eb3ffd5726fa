"""Chunks, shards and their order: the only place that cuts tasks up and puts results back.

A chunk (a numbered tuple of tasks) is the unit of computation and of reduction order; a
shard (contiguous chunks) is what one worker gets in one call. Results come back as chunk
results carrying their ``index``; :func:`in_order` is how every consumer reads them, so the
result of a run never depends on which worker computed a chunk, how many workers there
were, or whether a chunk was computed twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741  (an item type)


class Indexed(Protocol):
    index: int


R = TypeVar("R", bound=Indexed)


def chunk(tasks: Sequence[T], size: int, make: Callable[[int, tuple[T, ...]], I]) -> list[I]:
    """``make(index, tasks)`` for consecutive runs of ``size`` tasks (the last may be shorter)."""
    return [make(i, tuple(tasks[start : start + size])) for i, start in enumerate(range(0, len(tasks), size))]


def shard(items: Sequence[I], parts: int) -> list[list[I]]:
    """Contiguous, near-equal shards; empty ones are dropped."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        end = start + size + (1 if p < extra else 0)
        if end > start:
            out.append(list(items[start:end]))
        start = end
    return out


def in_order(results: Sequence[R], count: int) -> list[R]:
    """``results`` sorted by chunk index; exactly chunks ``0 .. count - 1`` or an error."""
    ordered = sorted(results, key=lambda r: r.index)
    if [r.index for r in ordered] != list(range(count)):
        raise RuntimeError(f"expected chunks 0..{count - 1}, got {[r.index for r in ordered]}")
    return ordered
