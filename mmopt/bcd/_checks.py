"""Option checks of the BCD family that :mod:`mmopt._core.validation` does not provide."""

from __future__ import annotations

import numpy as np


def check_bool(value, name: str) -> bool:
    """Return ``value`` as a bool; ``TypeError`` naming ``name`` unless it is one.

    Examples
    --------
    >>> check_bool(np.True_, "screening")
    True
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r} of type {type(value).__name__}.")
    return bool(value)


def check_random_state(value, name: str = "random_state") -> None:
    """Check that ``value`` seeds :func:`numpy.random.default_rng` (None, an int >= 0, a
    ``SeedSequence``, a ``BitGenerator`` or a ``Generator``).

    Examples
    --------
    >>> check_random_state(0)
    """
    if isinstance(value, (bool, np.bool_, float, str, bytes)):
        raise TypeError(
            f"{name} must be None, an int or a numpy Generator, got {type(value).__name__}."
        )
    try:
        np.random.default_rng(value)
    except TypeError:
        raise TypeError(
            f"{name} must be None, an int or a numpy Generator, got {type(value).__name__}."
        ) from None
    except ValueError as exc:
        raise ValueError(f"{name} is not a valid seed: {exc}") from None
