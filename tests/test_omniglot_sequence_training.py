"""SNAIL and MANN learn Omniglot through the real orchestrator on a CI budget
(tests/omniglot_learning.py): the two costliest learning runs, in a file of their own so the
other pytest process can take the other methods' at the same time."""

from __future__ import annotations

import pytest

from omniglot_learning import SEQUENCE, assert_learns


# MANN's run took 410-590 s beside the other pytest process in two full runs on one day at 32
# filters, and 680 s at 16 in a full run on a slow day: past the suite's 600-s hang guard; it
# gets twice that.
@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.timeout(1200)) if m == "mann" else m for m in SEQUENCE])
def test_method_learns_omniglot(method, omniglot_runs) -> None:
    assert_learns(method, omniglot_runs)
