"""Task distributions. Each family builds its tasks from descriptors."""

from __future__ import annotations

from metaorch.tasks.base import Split, TaskDescriptor, TaskFamily, descriptors
from metaorch.tasks.sinusoid import SinusoidTasks

# Omniglot lives in tasks.omniglot, imported where used: it needs Pillow and the archives.
__all__ = ["SinusoidTasks", "Split", "TaskDescriptor", "TaskFamily", "descriptors"]
