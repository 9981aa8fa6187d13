# cython: boundscheck=False, wraparound=False, cdivision=True
"""Middle of the multinomial logistic Hessian-vector product, in one pass over the rows.

``out_ik = P_ik (U_ik - sum_l P_il U_il)``: the per-sample Hessian of the softmax
log-loss, ``diag(p_i) - p_i p_i^T``, applied to the row ``u_i`` of ``U = X V``. NumPy needs
four passes and three temporaries for it; next to the two small matrix products of the
product it cost about a third of the time.
"""


def softmax_hessian_rows(const double[:, ::1] P, double[:, ::1] U):
    """Overwrite ``U`` with ``P * (U - rowsum(P * U))`` (serial; rows are short)."""
    cdef Py_ssize_t n = P.shape[0], k = P.shape[1], i, j
    cdef double s
    # boundscheck=False: a U smaller than P would be written out of bounds.
    if U.shape[0] != n or U.shape[1] != k:
        raise ValueError("P and U must have the same shape.")
    with nogil:
        for i in range(n):
            s = 0.0
            for j in range(k):
                s = s + P[i, j] * U[i, j]
            for j in range(k):
                U[i, j] = P[i, j] * (U[i, j] - s)
