"""Task distributions. Each family builds its tasks from descriptors."""

from __future__ import annotations

from tasks.base import Split, TaskDescriptor, TaskFamily, descriptors
from tasks.sinusoid import SinusoidTasks

# Omniglot lives in tasks.omniglot, imported where used: it needs Pillow and the archives.
__all__ = ["SinusoidTasks", "Split", "TaskDescriptor", "TaskFamily", "descriptors"]
