"""Helpers of the input-hardening (fuzz) tests of every family, served by the ``fuzz``
fixture of ``tests/conftest.py`` (this folder is on the path, see ``_helpers``)."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import strategies as st

# Inputs no public entry point may accept for an array argument: each must raise ValueError or
# TypeError naming the argument.
BAD_ARRAYS = {
    "ragged": [[1.0, 2.0], [3.0]],
    "string": "abc",
    "object": np.array([object(), object()], dtype=object),
    "complex": np.array([1.0 + 1.0j, 2.0]),
    "nan": np.array([1.0, np.nan]),
    "inf": np.array([1.0, np.inf]),
    "empty": np.empty(0),
    "none": None,
}


def bad_array_values() -> st.SearchStrategy:
    """A hypothesis strategy drawing the names of :data:`BAD_ARRAYS`."""
    return st.sampled_from(sorted(BAD_ARRAYS))


def raises_naming(func, name: str, *args, errors=(ValueError, TypeError), **kwargs):
    """Call ``func(*args, **kwargs)``; it must raise one of ``errors`` whose message names
    ``name``. Returns the exception."""
    with pytest.raises(errors) as info:
        func(*args, **kwargs)
    assert name in str(info.value), f"the error does not name {name!r}: {info.value!r}"
    return info.value


def snapshot(*inputs):
    """Deep copies of the inputs, to check later with :func:`assert_unchanged`."""
    return copy.deepcopy(inputs)


def assert_unchanged(before, *inputs):
    """Every input equals its snapshot (arrays compared exactly, NaN equal to NaN)."""
    for old, new in zip(before, inputs, strict=True):
        if isinstance(old, np.ndarray):
            assert old.dtype == new.dtype and old.shape == new.shape
            assert np.array_equal(old, new, equal_nan=old.dtype.kind in "fc")
        elif hasattr(old, "toarray"):
            assert np.array_equal(old.toarray(), new.toarray(), equal_nan=True)


def numeric_fields(result) -> dict:
    """The result's float-valued fields and arrays, by name (history excluded)."""
    out = {}
    for key, value in result.items():
        if key == "history":
            continue
        if isinstance(value, float | np.floating):
            out[key] = float(value)
        elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
            out[key] = value
    return out


def assert_honest(result, *, allow_nan: tuple[str, ...] = ()):
    """Status 0 never comes with NaN or infinite fields, and status 4 ("the last finite
    iterate is returned") returns finite fields too; ``allow_nan`` lists fields documented
    as NaN."""
    if result.status not in (0, 4):
        return
    for key, value in numeric_fields(result).items():
        if key in allow_nan:
            continue
        finite = math.isfinite(value) if isinstance(value, float) else np.isfinite(value).all()
        assert finite, f"status {result.status} with non-finite field {key!r}"


def run_isolated(code: str, *, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter, so that a crash or a hang fails one test instead
    of ending the suite. Fails the test on a timeout or a non-zero exit."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    try:
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"did not end within {timeout} s:\n{textwrap.dedent(code)}")
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out
