"""The passes around the Anderson mixing of batched Sinkhorn's column scalings.

Problem ``rows[i]`` of a group iterates on ``x = log v``; its map value is ``log t`` with
``t = b / (K^T u)`` the plain column update (``R = K^T u`` its column sums before the
division). Entries of zero mass (``b_j = 0``) are held at ``x_j = 0``. The logarithms and
exponentials are NumPy's (vectorized); each function here is the one pass over each
problem's entries that the rest takes, problems in parallel:

- :func:`masked_residual` before the mixing: zero-mass entries set to 0 and the
  safeguard's residual ``sum_j b_j |log t_j - x_j|`` (infinite when an entry is not
  finite);
- :func:`select_mixed` after it: the new scalings (``exp`` of the mixed point, or the
  plain ``t`` where the mixing did not extrapolate or overflowed), the carried ``log v``,
  and the column-marginal error ``sum_j |v_j R_j - b_j|`` of the plan at the new scalings.
"""

from cython.parallel import prange
from libc.math cimport fabs, isfinite, INFINITY


def masked_residual(
    double[:, ::1] X,
    double[:, ::1] LT,
    const double[:, ::1] B,
    const Py_ssize_t[::1] rows,
    double[::1] residual,
    int n_threads,
):
    """For ``row = rows[i]``: ``X[i]`` (log v) and ``LT[i]`` (log t) set to 0 where
    ``B[row] == 0``, and ``residual[i] = sum_j B[row, j] |LT[i, j] - X[i, j]|``
    (inf when a term is not finite)."""
    cdef Py_ssize_t k = rows.shape[0]
    cdef Py_ssize_t m = X.shape[1]
    cdef Py_ssize_t i, j, row
    cdef double total, r
    for i in prange(k, schedule="static", num_threads=n_threads, nogil=True):
        row = rows[i]
        total = 0.0
        for j in range(m):
            if B[row, j] > 0:
                r = LT[i, j] - X[i, j]
                if isfinite(r):
                    total = total + B[row, j] * fabs(r)
                else:
                    total = INFINITY
            else:
                X[i, j] = 0.0
                LT[i, j] = 0.0
        residual[i] = total


def select_mixed(
    const double[:, ::1] P,
    const double[:, ::1] E,
    const double[:, ::1] LT,
    const signed char[::1] extrapolated,
    const double[:, ::1] B,
    const double[:, ::1] R,
    const Py_ssize_t[::1] rows,
    double[:, ::1] V,
    double[:, ::1] x_known,
    double[::1] column_error,
    int n_threads,
):
    """For ``row = rows[i]``: where ``extrapolated[i]`` and ``E[i] = exp(P[i])`` is
    finite on the positive entries, ``V[row] = E[i]`` (0 where ``B[row] == 0``) and
    ``x_known[row] = P[i]``; otherwise ``V[row]`` (the plain update, given) stays and
    ``x_known[row] = LT[i]``. Then ``column_error[i] = sum_j |V[row, j] R[row, j] -
    B[row, j]|``."""
    cdef Py_ssize_t k = rows.shape[0]
    cdef Py_ssize_t m = V.shape[1]
    cdef Py_ssize_t i, j, row
    cdef double v, total
    cdef bint good
    for i in prange(k, schedule="static", num_threads=n_threads, nogil=True):
        row = rows[i]
        good = extrapolated[i] != 0
        if good:
            for j in range(m):
                if B[row, j] > 0 and not isfinite(E[i, j]):
                    good = False
                    break
        total = 0.0
        for j in range(m):
            if good:
                v = E[i, j] if B[row, j] > 0 else 0.0
                V[row, j] = v
                x_known[row, j] = P[i, j]
            else:
                v = V[row, j]
                x_known[row, j] = LT[i, j]
            total = total + fabs(v * R[row, j] - B[row, j])
        column_error[i] = total
