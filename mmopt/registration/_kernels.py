"""Python wrapper of the registration family's compiled kernel (``mmopt_ext._icp``)."""

from __future__ import annotations

import numpy as np

from mmopt_ext._icp import weighted_pair_moments as _weighted_pair_moments

__all__ = ["weighted_pair_moments"]


def weighted_pair_moments(P, Q, idx, w):
    """``(sum w, sum w p, sum w q, sum w p q^T, sum w |p|^2)`` over pairs ``(P[i], Q[idx[i]])``.

    Rows with ``idx[i] < 0`` (no match) or ``w[i] == 0`` are skipped; the matched rows are
    read in place rather than gathered into copies.

    Examples
    --------
    >>> import numpy as np
    >>> from mmopt.registration._kernels import weighted_pair_moments
    >>> P = np.eye(3); Q = 2 * np.eye(3)
    >>> total, p_sum, q_sum, cross, p_sq = weighted_pair_moments(
    ...     P, Q, np.array([0, 1, -1]), np.array([1.0, 0.5, 9.0]))
    >>> total, p_sum, q_sum, p_sq
    (1.5, array([1. , 0.5, 0. ]), array([2., 1., 0.]), 1.5)
    """
    P = np.ascontiguousarray(P, dtype=np.float64)
    Q = np.ascontiguousarray(Q, dtype=np.float64)
    idx = np.ascontiguousarray(idx, dtype=np.intp)
    w = np.ascontiguousarray(w, dtype=np.float64)
    # The kernel reads without bounds checks: a mismatch would read outside the arrays.
    if P.ndim != 2 or P.shape[1] != 3 or Q.ndim != 2 or Q.shape[1] != 3:
        raise ValueError(f"P and Q must have shape (*, 3), got {P.shape} and {Q.shape}.")
    if idx.shape != (P.shape[0],) or w.shape != (P.shape[0],):
        raise ValueError(
            f"idx and w must have shape ({P.shape[0]},), got {idx.shape} and {w.shape}."
        )
    if idx.size and idx.max() >= Q.shape[0]:
        raise ValueError(f"idx holds {idx.max()}, beyond the {Q.shape[0]} rows of Q.")
    return _weighted_pair_moments(P, Q, idx, w)
