"""Task distributions. Each family builds its tasks from descriptors."""

from __future__ import annotations

from tasks.base import Split, TaskDescriptor, TaskFamily, descriptors
from tasks.sinusoid import SinusoidTasks

FAMILIES = ("sinusoid",)


def build_family(name: str, shots: int, queries: int) -> TaskFamily:
    if name == "sinusoid":
        return SinusoidTasks(shots=shots, queries=queries)
    raise ValueError(f"unknown task family {name!r}; expected one of {FAMILIES}")


__all__ = ["FAMILIES", "SinusoidTasks", "Split", "TaskDescriptor", "TaskFamily", "build_family", "descriptors"]
