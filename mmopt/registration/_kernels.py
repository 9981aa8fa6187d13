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
    return _weighted_pair_moments(
        np.ascontiguousarray(P, dtype=np.float64),
        np.ascontiguousarray(Q, dtype=np.float64),
        np.ascontiguousarray(idx, dtype=np.intp),
        np.ascontiguousarray(w, dtype=np.float64),
    )
