"""Input checks shared by every problem and solver.

Each helper names the offending argument in its message and returns a read-only array, so a
problem never writes into (or lets a solver write into) memory the caller owns.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np
from sklearn.utils.validation import validate_data

__all__ = [
    "validate_fit_data",
    "check_array",
    "check_input",
    "check_scalar",
    "check_callable",
    "check_choice",
    "readonly",
]


def readonly(array: np.ndarray) -> np.ndarray:
    """Return a read-only view of ``array`` (the caller's own array keeps its flags)."""
    view = array.view()
    view.flags.writeable = False
    return view


def check_array(
    value,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    shape: tuple[int | None, ...] | None = None,
    dtype=np.float64,
    finite: bool = True,
    nonnegative: bool = False,
    min_size: int = 1,
    order: str = "C",
) -> np.ndarray:
    """Convert ``value`` to a read-only array of ``dtype`` and check it.

    Parameters
    ----------
    value : array-like
        What the user passed.
    name : str
        The argument's name, used in error messages.
    ndim : int or tuple of int, optional
        Allowed number of dimensions.
    shape : tuple, optional
        Expected shape; ``None`` entries match any length.
    dtype : dtype, default=float64
        Target dtype.
    finite : bool, default=True
        Reject NaN and infinite entries.
    nonnegative : bool, default=False
        Reject negative entries.
    min_size : int, default=1
        Minimum number of entries.
    order : {"C", "F"}, default="C"
        Memory layout of the returned array.

    Returns
    -------
    ndarray
        A read-only array; a copy only when a conversion was needed.

    Raises
    ------
    ValueError or TypeError
        Naming ``name`` and what was expected.

    Examples
    --------
    >>> from mmopt._core.validation import check_array
    >>> check_array([1, 2], "a", ndim=1)
    array([1., 2.])
    """
    if value is None:
        raise TypeError(f"{name} must be an array, got None.")
    if hasattr(value, "toarray") and not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a dense array, got a sparse {type(value).__name__}.")
    if isinstance(value, str | bytes):
        raise TypeError(f"{name} must be an array of real numbers, got a string {value!r:.40}.")
    try:
        array = np.asarray(value, order=order)
    except ValueError:
        # NumPy refuses nested sequences of unequal lengths ("inhomogeneous shape").
        raise ValueError(
            f"{name} must be a rectangular array of real numbers; got a ragged "
            f"{type(value).__name__} whose rows have different lengths."
        ) from None
    except TypeError:
        raise TypeError(
            f"{name} must be an array of real numbers, got {type(value).__name__}."
        ) from None
    if array.dtype == object or array.dtype.kind in "USVMm":
        raise TypeError(
            f"{name} must be an array of real numbers, got {type(value).__name__} of dtype "
            f"{array.dtype}."
        )
    if array.dtype.kind == "c":
        raise TypeError(
            f"{name} must be an array of real numbers, got complex values (dtype "
            f"{array.dtype}); pass the real part explicitly if that is what you mean."
        )
    try:
        array = array.astype(dtype, order=order, copy=False)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be an array of real numbers convertible to {np.dtype(dtype)}, "
            f"got {type(value).__name__} of dtype {array.dtype}."
        ) from None
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if array.ndim not in allowed:
            expected = " or ".join(str(d) for d in allowed)
            raise ValueError(
                f"{name} must be {expected}-dimensional, got an array of shape {array.shape}."
            )
    if shape is not None:
        if array.ndim != len(shape) or any(
            want is not None and want != got for want, got in zip(shape, array.shape)
        ):
            wanted = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {wanted}, got {array.shape}.")
    if array.size < min_size:
        raise ValueError(
            f"{name} must have at least {min_size} entr{'y' if min_size == 1 else 'ies'}, "
            f"got shape {array.shape}."
        )
    if finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{name} must not contain NaN or infinite values.")
    if nonnegative and array.size and array.min() < 0:
        raise ValueError(f"{name} must be non-negative; its smallest entry is {array.min()!r}.")
    return readonly(array)


def check_input(
    value, name: str, *, numeric: bool = True, allow_sparse: bool = False, ndim: int | None = None
):
    """Reject what scikit-learn's ``validate_data`` would report without naming ``name``.

    Estimators call it on ``X`` and ``y`` before ``validate_data``: ``None``, strings, ragged
    nested sequences (NumPy's "setting an array element with a sequence"), entries that are
    not numbers (object arrays of arbitrary objects, text when ``numeric``), complex values
    and empty inputs get a ``TypeError``/``ValueError`` naming the argument. The value itself
    is returned unchanged, for ``validate_data`` to convert.

    Parameters
    ----------
    value : array-like or sparse matrix
        What the user passed.
    name : str
        The argument's name (``"X"``, ``"y"``).
    numeric : bool, default=True
        Require numbers (False for class labels, which may be strings).
    allow_sparse : bool, default=False
        Let sparse matrices through (to ``validate_data``, which checks them).
    ndim : int, optional
        Required number of dimensions (2 for ``X``).

    Examples
    --------
    >>> from mmopt._core.validation import check_input
    >>> check_input([[1.0, 2.0], [3.0, 4.0]], "X")
    [[1.0, 2.0], [3.0, 4.0]]
    """
    if value is None:
        # (scikit-learn's estimator checks look for its own wording of a missing y)
        raise ValueError(
            f"{name} must be an array, got None"
            + ("; this estimator requires y to be passed, but the target y is None."
               if name == "y" else ".")
        )
    if hasattr(value, "toarray") and not isinstance(value, np.ndarray):
        if not allow_sparse:
            raise TypeError(f"{name} must be a dense array, got a sparse {type(value).__name__}.")
        _check_not_empty(value.shape, name)
        _check_real(np.dtype(value.dtype), name)
        return value
    if isinstance(value, str | bytes):
        raise TypeError(f"{name} must be an array, got a string {value!r:.40}.")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise ValueError(
            f"{name} must be a rectangular array; got a ragged {type(value).__name__} whose "
            "rows have different lengths."
        ) from None
    if ndim is not None and array.ndim != ndim:
        hint = (
            "; Reshape your data with .reshape(-1, 1) for a single feature or .reshape(1, -1)"
            " for a single sample" if ndim == 2 else ""
        )
        raise ValueError(
            f"{name} must be {ndim}-dimensional, got an array of shape {array.shape}{hint}."
        )
    _check_not_empty(array.shape, name)
    _check_real(array.dtype, name)
    kind = array.dtype.kind
    if kind in "VMm" or (numeric and kind in "SU"):
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}.")
    if kind == "O":
        try:
            if numeric:
                array.astype(np.float64)
            else:
                # Labels: hashable, comparable values (numbers or strings).
                np.unique(array)
        except (TypeError, ValueError) as error:
            what = "real numbers" if numeric else "class labels (numbers or strings)"
            raise TypeError(f"{name} must hold {what}: {error}") from None
    return value


def _check_real(dtype: np.dtype, name: str) -> None:
    if dtype.kind == "c":
        # (the wording scikit-learn's estimator checks expect)
        raise ValueError(f"Complex data not supported: {name} must hold real numbers.")


def _check_not_empty(shape: tuple, name: str) -> None:
    # Worded as scikit-learn's validation, with the argument's name in front.
    if len(shape) and shape[0] == 0:
        raise ValueError(
            f"{name} is empty: found array with 0 sample(s) (shape={shape}) while a minimum "
            "of 1 is required."
        )
    if len(shape) > 1 and shape[1] == 0:
        raise ValueError(
            f"{name} is empty: found array with 0 feature(s) (shape={shape}) while a minimum "
            "of 1 is required."
        )
    if 0 in shape:
        raise ValueError(f"{name} must not be empty, got shape {shape}.")


def check_scalar(
    value,
    name: str,
    *,
    kind: type | tuple[type, ...] = numbers.Real,
    min_value: float | None = None,
    max_value: float | None = None,
    include_min: bool = True,
    include_max: bool = True,
    allow_none: bool = False,
):
    """Check a scalar option's type and range; return it as a Python int or float.

    Examples
    --------
    >>> from mmopt._core.validation import check_scalar
    >>> check_scalar(5, "m", kind=int, min_value=1)
    5
    """
    if value is None and allow_none:
        return None
    integral = kind is int or kind is numbers.Integral
    if isinstance(value, bool) or not isinstance(
        value, numbers.Integral if integral else numbers.Real
    ):
        what = "an integer" if integral else "a real number"
        raise TypeError(f"{name} must be {what}, got {value!r} of type {type(value).__name__}.")
    value = int(value) if integral else float(value)
    if not integral and not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    if min_value is not None and (value < min_value or (not include_min and value == min_value)):
        relation = ">=" if include_min else ">"
        raise ValueError(f"{name} must be {relation} {min_value}, got {value!r}.")
    if max_value is not None and (value > max_value or (not include_max and value == max_value)):
        relation = "<=" if include_max else "<"
        raise ValueError(f"{name} must be {relation} {max_value}, got {value!r}.")
    return value


def check_callable(value, name: str, *, allow_none: bool = True) -> Callable | None:
    """Check that ``value`` is callable (or None when allowed)."""
    if value is None and allow_none:
        return None
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}.")
    return value


def check_choice(value, name: str, choices) -> str:
    """Check that ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}; got {value!r}.")
    return value


def check_indices(values, name: str, upper: int, *, hint: str = "") -> np.ndarray:
    """Check that ``values`` holds integer indices in ``[0, upper)``; return them as ``intp``.

    Integer arrays, floats with integral values (as loaders of mesh files give) and
    sequences of Python integers are accepted; booleans are not. ``hint`` ends the
    out-of-range message (what the indices must refer to).

    Examples
    --------
    >>> check_indices([2.0, 0], "faces", 3)
    array([2, 0])
    >>> check_indices([0, 3], "blocks[0]", 3)
    Traceback (most recent call last):
    ...
    ValueError: blocks[0] has indices 0..3, outside [0, 3).
    """
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        if not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise ValueError(f"{name} must hold integer indices; it holds non-integral values.")
        integral = True
    elif arr.dtype.kind == "O":
        integral = all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in arr.ravel()
        )
    else:
        integral = arr.dtype.kind in "iu"
    if not integral:
        raise TypeError(f"{name} must hold integer indices, got dtype {arr.dtype}.")
    arr = arr.astype(np.intp)
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        raise ValueError(
            f"{name} has indices {arr.min()}..{arr.max()}, outside [0, {upper})."
            + (f" {hint}" if hint else "")
        )
    return arr


def validate_fit_data(estimator, X, y, *, labels: bool = False, reset: bool = True):
    """The data checks of an estimator's ``fit`` (or ``partial_fit``): ``X`` a 2-D numeric
    array and ``y`` numeric targets (or, with ``labels``, class labels of any type), bad input
    named by :func:`check_input`; then scikit-learn's ``validate_data`` (float64 ``X``,
    ``n_features_in_`` set when ``reset``, checked against it otherwise).

    Returns
    -------
    X, y : ndarray

    Examples
    --------
    >>> from sklearn.base import BaseEstimator
    >>> from mmopt._core.validation import validate_fit_data
    >>> X, y = validate_fit_data(BaseEstimator(), [[1, 2], [3, 4]], [0.5, 1.5])
    >>> X.dtype, y.shape
    (dtype('float64'), (2,))
    >>> validate_fit_data(BaseEstimator(), [[1, 2], [3, 4]], "ab")
    Traceback (most recent call last):
    ...
    TypeError: y must be an array, got a string 'ab'.
    """
    check_input(X, "X", ndim=2)
    check_input(y, "y", numeric=not labels)
    return validate_data(estimator, X, y, dtype=np.float64, y_numeric=not labels, reset=reset)
