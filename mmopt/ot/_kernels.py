"""Python wrapper of the OT family's compiled kernel (``mmopt_ext._sinkhorn``)."""

from __future__ import annotations

import numpy as np

from mmopt._core.threads import effective_n_threads
from mmopt_ext._sinkhorn import log_half_step as _log_half_step


def log_half_step(C, g, f_old, log_a, reg, *, n_threads=None):
    """Row update of log-domain Sinkhorn; returns ``(f_new, row_mass)``.

    ``f_new_i = reg * (log a_i - logsumexp_j((g_j - C_ij) / reg))`` and ``row_mass`` are the
    row sums of the plan at ``(f_old, g)``. Pass ``C.T`` (C-contiguous) to update columns.

    Examples
    --------
    >>> import numpy as np
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> f, mass = log_half_step(C, np.zeros(2), np.zeros(2), np.log([0.5, 0.5]), 1.0)
    >>> bool(np.allclose(np.exp(f[0]) * (1 + np.exp(-1.0)), 0.5)), mass.round(4)
    (True, array([1.3679, 1.3679]))
    """
    C = np.ascontiguousarray(C, dtype=np.float64)
    f_new = np.empty(C.shape[0])
    row_mass = np.empty(C.shape[0])
    _log_half_step(
        C,
        np.ascontiguousarray(g, dtype=np.float64),
        np.ascontiguousarray(f_old, dtype=np.float64),
        np.ascontiguousarray(log_a, dtype=np.float64),
        float(reg),
        f_new,
        row_mass,
        effective_n_threads(n_threads),
    )
    return f_new, row_mass
