"""SNAIL and MANN learn Omniglot through the real orchestrator on a CI budget
(tests/omniglot_learning.py): the two costliest learning runs, in a file of their own so the
other pytest process can take the other methods' at the same time."""

from __future__ import annotations

import pytest

from omniglot_learning import SEQUENCE, assert_learns


@pytest.mark.parametrize("method", SEQUENCE)
def test_method_learns_omniglot(method, omniglot_runs) -> None:
    assert_learns(method, omniglot_runs)
