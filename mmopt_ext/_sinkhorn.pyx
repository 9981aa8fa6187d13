"""Log-domain Sinkhorn half-step: one log-sum-exp per row, rows in parallel."""

from cython.parallel cimport prange
from libc.math cimport exp, log, INFINITY

# exp(-50) = 2e-22: below this (relative to the row's largest term) a term cannot change a
# double-precision sum of up to 1e6 terms.
cdef double _NEGLIGIBLE = -50.0


def log_half_step(
    const double[:, ::1] C,
    const double[::1] g,
    const double[::1] f_old,
    const double[::1] log_a,
    double reg,
    double[::1] f_new,
    double[::1] row_mass,
    int n_threads,
):
    """Update the row potentials of entropic OT with the column potentials fixed.

    For each row ``i``, with ``t_ij = (g_j - C_ij) / reg``::

        f_new_i = reg * (log_a_i - logsumexp_j t_ij)
        row_mass_i = sum_j exp(f_old_i / reg + t_ij)     # row sum of the plan at (f_old, g)

    The row sums come out of the same pass, so the marginal error of the previous iterate
    costs nothing. Terms more than 50 below the row's largest exponent are skipped: together
    they change the sum by less than ``m * exp(-50)`` (2e-22 m) relative, and at small
    ``reg`` they are most of the row, whose ``exp`` calls would otherwise dominate (and fall
    into slow subnormal arithmetic). Calling it with ``C.T`` (C-contiguous) and the roles of ``f``/``g``
    swapped gives the column update. Rows are independent: the result does not depend on
    the number of threads.
    """
    cdef Py_ssize_t n = C.shape[0]
    cdef Py_ssize_t m = C.shape[1]
    cdef Py_ssize_t i, j
    cdef double inv_reg = 1.0 / reg
    cdef double t, largest, total, lse
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            largest = -INFINITY
            for j in range(m):
                t = (g[j] - C[i, j]) * inv_reg
                if t > largest:
                    largest = t
            total = 0.0
            for j in range(m):
                t = (g[j] - C[i, j]) * inv_reg - largest
                if t > _NEGLIGIBLE:
                    total = total + exp(t)
            lse = largest + log(total)
            f_new[i] = reg * (log_a[i] - lse)
            row_mass[i] = exp(f_old[i] * inv_reg + lse)
