"""Doctests of the package's docstrings: their examples assume ``import numpy as np``, the
numpydoc convention, instead of repeating it in every example."""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _numpy_in_doctests(doctest_namespace):
    doctest_namespace["np"] = np
