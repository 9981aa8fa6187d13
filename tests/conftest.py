"""Helpers shared by the input-hardening (fuzz) tests of every family: the ``fuzz`` fixture."""

from __future__ import annotations

import _fuzz
import pytest
from hypothesis import settings

# Every property test draws the same cases on every run (a CI failure reproduces, and a rare
# case cannot fail one run in a hundred); each test's own @settings still sets how many.
settings.register_profile("mmopt", derandomize=True, deadline=None)
settings.load_profile("mmopt")


@pytest.fixture(scope="session")
def fuzz():
    """The helpers of :mod:`_fuzz`, for the families' ``test_fuzz.py`` modules."""
    return _fuzz
