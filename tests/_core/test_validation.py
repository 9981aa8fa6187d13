import numpy as np
import pytest
import scipy.sparse as sp

from mmopt._core.validation import check_array, check_choice, check_scalar


def test_check_array_returns_read_only_view_without_touching_caller():
    a = np.arange(4.0)
    out = check_array(a, "a", ndim=1)
    assert not out.flags.writeable and a.flags.writeable
    with pytest.raises(ValueError):
        out[0] = 1.0
    assert np.shares_memory(a, out)  # no copy when none is needed


@pytest.mark.parametrize(
    "value, kwargs, error, match",
    [
        (None, {}, TypeError, "a must be an array"),
        (["x", "y"], {}, TypeError, "real numbers"),
        ([1 + 1j], {}, TypeError, "real numbers"),
        (sp.eye(3), {}, TypeError, "dense"),
        ([[1.0]], {"ndim": 1}, ValueError, "1-dimensional"),
        ([1.0, 2.0], {"shape": (3,)}, ValueError, r"shape \(3\)"),
        ([], {}, ValueError, "at least 1"),
        ([1.0, np.nan], {}, ValueError, "NaN"),
        ([1.0, np.inf], {}, ValueError, "infinite"),
        ([1.0, -1.0], {"nonnegative": True}, ValueError, "non-negative"),
    ],
)
def test_check_array_errors_name_the_argument(value, kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        check_array(value, "a", **kwargs)
    assert "a " in str(info.value) or str(info.value).startswith("a")


def test_check_scalar():
    assert check_scalar(np.int64(3), "k", kind=int, min_value=1) == 3
    assert check_scalar(None, "k", allow_none=True) is None
    with pytest.raises(TypeError, match="k must be an integer"):
        check_scalar(2.5, "k", kind=int)
    with pytest.raises(TypeError, match="k must be"):
        check_scalar(True, "k", kind=int)
    with pytest.raises(ValueError, match="k must be > 0"):
        check_scalar(0.0, "k", min_value=0.0, include_min=False)
    with pytest.raises(ValueError, match="k must be <= 1"):
        check_scalar(2.0, "k", max_value=1.0)
    with pytest.raises(ValueError, match="finite"):
        check_scalar(np.nan, "k")


def test_check_choice():
    assert check_choice("a", "loss", ["a", "b"]) == "a"
    with pytest.raises(ValueError, match="loss must be one of 'a', 'b'"):
        check_choice("c", "loss", ["a", "b"])


@pytest.mark.parametrize(
    "value, error, match",
    [
        ([[1.0, 2.0], [3.0]], ValueError, "X must be a rectangular array.*ragged"),
        ([[1.0, [2.0]], [3.0, 4.0]], ValueError, "X must be a rectangular"),
        ("abc", TypeError, "X must be an array of real numbers, got a string"),
        (b"abc", TypeError, "X must be an array of real numbers, got a string"),
        (np.array([object(), object()], dtype=object), TypeError, "X must .*dtype object"),
        ([1.0, None], TypeError, "X must .*dtype object"),
        (np.array(["1", "2"]), TypeError, "X must .*dtype <U1"),
        (np.array([1, 2], dtype="datetime64[s]"), TypeError, "X must"),
    ],
)
def test_check_array_rejects_ragged_strings_and_objects(value, error, match):
    # Issue 13: NumPy's own message ("setting an array element with a sequence") named no
    # argument; every family relies on these messages.
    with pytest.raises(error, match=match):
        check_array(value, "X")
