"""Kernels of the mixture-of-experts EM (:mod:`mmopt.mm.moe`), one pass over the rows each.

With a few experts and features, every row of the E-step, of the experts' weighted normal
equations and of the gates' Newton step is a handful of flops: NumPy spends its time on
passes over (n, K) and (n, p) temporaries (about a dozen per evaluation), these kernels make
one. Sums run over blocks of ``BLOCK`` rows, each block's partial sum added to the total in
order: the rounding error then grows like ``BLOCK + n / BLOCK`` instead of ``n`` (a
sequential sum), close to NumPy's pairwise sums. Serial: the shards of a distributed fit run
side by side, one per core.
"""

from libc.math cimport log
from scipy.linalg.cython_blas cimport dgemm

import numpy as np

from mmopt_ext._sinkhorn import requested_exp_path

cdef extern from "_expsum.h" nogil:
    ctypedef void (*mmopt_exprow_fn)(
        const double*, const double*, double, double, Py_ssize_t, double*
    )
    mmopt_exprow_fn mmopt_exprow
    int mmopt_expsum_select(int which)

# The vectorized exp of _expsum.h (AVX-512, AVX2, libmvec or the C library's), the same path
# as the Sinkhorn kernels (MMOPT_EXP_PATH). It clamps exponents below -700: a term of 1e-304
# where the exact one underflows, far below the rounding of the sums it enters.
mmopt_expsum_select(requested_exp_path())

cdef Py_ssize_t BLOCK = 256
cdef double LOG_2PI = 1.8378770664093453


cdef inline double _shift_by_max(const double *row, double *out, Py_ssize_t n) noexcept nogil:
    """``out = row - max(row)`` over ``n`` entries; returns the maximum (a log-sum-exp's shift)."""
    cdef double best = row[0]
    cdef Py_ssize_t k
    for k in range(1, n):
        if row[k] > best:
            best = row[k]
    for k in range(n):
        out[k] = row[k] - best
    return best


cdef inline void _shifted_logits(const double[:, ::1] Z, Py_ssize_t start, Py_ssize_t stop,
                                 const double[:, ::1] W, Py_ssize_t n_rows_w,
                                 Py_ssize_t n_gates, double *logit, double *shifted,
                                 double *top) noexcept nogil:
    """Gate logits of rows ``start:stop`` (rows of ``W`` past ``n_rows_w`` are zero) in
    ``logit``, row by row, their maximum per row in ``top`` and ``logit - top`` in
    ``shifted``."""
    cdef Py_ssize_t i, r, k, j, p = Z.shape[1]
    cdef double t
    for i in range(start, stop):
        r = (i - start) * n_gates
        for k in range(n_gates):
            t = 0.0
            if k < n_rows_w:
                for j in range(p):
                    t = t + W[k, j] * Z[i, j]
            logit[r + k] = t
        top[i - start] = _shift_by_max(&logit[r], &shifted[r], n_gates)


def gate_objective(const double[:, ::1] Z, const double[:, ::1] R, const double[:, ::1] W,
                   double[::1] grad, double[::1] hess, bint derivatives):
    """``-sum_ik R_ik log softmax(Z [W; 0]^T)_ik`` (``W``: the first ``K - 1`` gate rows).

    With ``derivatives``, also writes its gradient in ``W`` (length ``(K - 1) p``, C order)
    to ``grad`` and its Hessian, ``sum_i r_i (diag(P_i) - P_i P_i^T) (x) z_i z_i^T`` with
    ``r_i = sum_k R_ik`` (``(K - 1) p`` squared, C order), to ``hess``. Not divided by any
    scale.
    """
    cdef Py_ssize_t n = Z.shape[0], p = Z.shape[1], K = R.shape[1], A = K - 1
    cdef Py_ssize_t npp = p * (p + 1) // 2, n_pairs = A * (A + 1) // 2
    cdef Py_ssize_t i, r, k, a, b, j, l, t, pair, blk, start, stop
    cdef double s, lse, mass, wa, c, value = 0.0, block_value
    if R.shape[0] != n or W.shape[0] != A or W.shape[1] != p or K < 2:
        raise ValueError("Z (n, p), R (n, K >= 2) and W (K - 1, p) do not match.")
    if derivatives and (grad.shape[0] != A * p or hess.shape[0] != A * p * A * p):
        raise ValueError("grad must have (K - 1) p entries and hess their square.")
    cdef double[::1] logit = np.empty(BLOCK * K), shifted = np.empty(BLOCK * K)
    cdef double[::1] expo = np.empty(BLOCK * K), zeros = np.zeros(BLOCK * K)
    cdef double[::1] top = np.empty(BLOCK), P = np.empty(K)
    # Per block: the rows' gradient weights (m, A), Hessian weights (m, pairs) and products
    # z_j z_l, j <= l (m, npp); the block's sums are two small matrix products (BLAS).
    cdef double[::1] g_coef = np.empty(BLOCK * A), h_coef = np.empty(BLOCK * n_pairs)
    cdef double[::1] zz = np.empty(BLOCK * npp)
    cdef double[::1] g_total = np.zeros(A * p), h_total = np.zeros(n_pairs * npp)
    cdef char no = b"N", tr = b"T"
    cdef int gm, gn, gk, lda, ldb, ldc
    cdef double one = 1.0
    with nogil:
        for blk in range((n + BLOCK - 1) // BLOCK):
            start = blk * BLOCK
            stop = min(start + BLOCK, n)
            _shifted_logits(Z, start, stop, W, A, K, &logit[0], &shifted[0], &top[0])
            mmopt_exprow(&zeros[0], &shifted[0], 0.0, 1.0, (stop - start) * K, &expo[0])
            block_value = 0.0
            for i in range(start, stop):
                r = (i - start) * K
                s = 0.0
                for k in range(K):
                    s = s + expo[r + k]
                lse = top[i - start] + log(s)
                for k in range(K):
                    block_value = block_value + R[i, k] * (logit[r + k] - lse)
                if not derivatives:
                    continue
                s = 1.0 / s
                mass = 0.0
                for k in range(K):
                    P[k] = expo[r + k] * s
                    mass = mass + R[i, k]
                r = i - start
                for a in range(A):
                    g_coef[r * A + a] = R[i, a] - mass * P[a]
                t = r * npp
                for j in range(p):
                    for l in range(j, p):
                        zz[t] = Z[i, j] * Z[i, l]
                        t = t + 1
                pair = r * n_pairs
                for a in range(A):
                    wa = P[a] * mass
                    for b in range(a + 1):
                        h_coef[pair] = wa * ((a == b) - P[b])
                        pair = pair + 1
            value = value + block_value
            if derivatives:
                # Column-major views of the row-major blocks: g_total (p x A) += Z_blk^T
                # (p x m) g_coef (m x A), h_total (npp x pairs) += zz^T h_coef.
                gk = <int>(stop - start)
                gm, gn, lda, ldb, ldc = <int>p, <int>A, <int>p, <int>A, <int>p
                dgemm(&no, &tr, &gm, &gn, &gk, &one, &Z[start, 0], &lda, &g_coef[0], &ldb,
                      &one, &g_total[0], &ldc)
                gm, gn, lda, ldb, ldc = <int>npp, <int>n_pairs, <int>npp, <int>n_pairs, <int>npp
                dgemm(&no, &tr, &gm, &gn, &gk, &one, &zz[0], &lda, &h_coef[0], &ldb,
                      &one, &h_total[0], &ldc)
        if derivatives:
            for t in range(A * p):
                grad[t] = -g_total[t]
            # Unpack the lower blocks' upper triangles into the full symmetric matrix.
            pair = 0
            for a in range(A):
                for b in range(a + 1):
                    t = 0
                    for j in range(p):
                        for l in range(j, p):
                            c = h_total[pair * npp + t]
                            hess[(a * p + j) * A * p + b * p + l] = c
                            hess[(a * p + l) * A * p + b * p + j] = c
                            hess[(b * p + j) * A * p + a * p + l] = c
                            hess[(b * p + l) * A * p + a * p + j] = c
                            t = t + 1
                    pair = pair + 1
    return -value


def e_step(const double[:, ::1] Z, const double[::1] y, const double[:, ::1] W,
           const double[:, ::1] B, const double[::1] variances, double[:, ::1] R):
    """Responsibilities of the experts and the log-likelihood, in one pass.

    Writes ``R_ik = p(k | x_i, y_i)`` (the joint ``log pi_k(x_i) + log N(y_i; z_i^T b_k,
    v_k)`` normalized over ``k``) and returns ``sum_i log p(y_i | x_i)``. ``W`` holds all
    ``K`` gate rows.
    """
    cdef Py_ssize_t n = Z.shape[0], p = Z.shape[1], K = B.shape[0]
    cdef Py_ssize_t i, r, j, k, blk, start, stop
    cdef double lse, s, mean, res, total = 0.0, block_total
    if (y.shape[0] != n or W.shape[0] != K or W.shape[1] != p or B.shape[1] != p
            or variances.shape[0] != K or R.shape[0] != n or R.shape[1] != K or K < 1):
        raise ValueError("Z (n, p), y (n,), W and B (K, p), variances (K,) and R (n, K) "
                         "do not match.")
    cdef double[::1] logit = np.empty(BLOCK * K), shifted = np.empty(BLOCK * K)
    cdef double[::1] expo = np.empty(BLOCK * K), zeros = np.zeros(BLOCK * K)
    cdef double[::1] top = np.empty(BLOCK)
    cdef double[::1] log_var = np.log(np.asarray(variances))
    cdef double[::1] inv_var = 1.0 / np.asarray(variances)
    with nogil:
        for blk in range((n + BLOCK - 1) // BLOCK):
            start = blk * BLOCK
            stop = min(start + BLOCK, n)
            _shifted_logits(Z, start, stop, W, K, K, &logit[0], &shifted[0], &top[0])
            mmopt_exprow(&zeros[0], &shifted[0], 0.0, 1.0, (stop - start) * K, &expo[0])
            # The joint log-densities, in place of the logits, and again shifted by their
            # maximum per row.
            for i in range(start, stop):
                r = (i - start) * K
                s = 0.0
                for k in range(K):
                    s = s + expo[r + k]
                lse = top[i - start] + log(s)
                for k in range(K):
                    mean = 0.0
                    for j in range(p):
                        mean = mean + Z[i, j] * B[k, j]
                    res = y[i] - mean
                    logit[r + k] = (logit[r + k] - lse) - 0.5 * (LOG_2PI + log_var[k]
                                                                 + res * res * inv_var[k])
                top[i - start] = _shift_by_max(&logit[r], &shifted[r], K)
            mmopt_exprow(&zeros[0], &shifted[0], 0.0, 1.0, (stop - start) * K, &expo[0])
            block_total = 0.0
            for i in range(start, stop):
                r = (i - start) * K
                s = 0.0
                for k in range(K):
                    s = s + expo[r + k]
                block_total = block_total + (top[i - start] + log(s))
                s = 1.0 / s
                for k in range(K):
                    R[i, k] = expo[r + k] * s
            total = total + block_total
    return total


def expert_moments(const double[:, ::1] Z, const double[::1] y, const double[:, ::1] R,
                   double[:, :, ::1] gram, double[:, ::1] rhs, double[::1] mass):
    """Weighted normal equations of every expert: ``gram[k] = sum_i R_ik z_i z_i^T``,
    ``rhs[k] = sum_i R_ik y_i z_i`` and ``mass[k] = sum_i R_ik``."""
    cdef Py_ssize_t n = Z.shape[0], p = Z.shape[1], K = R.shape[1], npp = p * (p + 1) // 2
    cdef Py_ssize_t i, r, j, l, k, t, blk, start, stop
    if (y.shape[0] != n or R.shape[0] != n or gram.shape[0] != K or gram.shape[1] != p
            or gram.shape[2] != p or rhs.shape[0] != K or rhs.shape[1] != p
            or mass.shape[0] != K):
        raise ValueError("Z (n, p), y (n,), R (n, K), gram (K, p, p), rhs (K, p) and "
                         "mass (K,) do not match.")
    # Per block: the rows' products z_j z_l (j <= l) and y z_j; the block's sums weighted by
    # R are two small matrix products (BLAS).
    cdef double[::1] zz = np.empty(BLOCK * npp), zy = np.empty(BLOCK * p)
    cdef double[::1] g_total = np.zeros(npp * K), r_total = np.zeros(p * K)
    cdef double[::1] m_block = np.empty(K), m_total = np.zeros(K)
    cdef char no = b"N", tr = b"T"
    cdef int gm, gn, gk, lda, ldb, ldc
    cdef double one = 1.0
    with nogil:
        for blk in range((n + BLOCK - 1) // BLOCK):
            start = blk * BLOCK
            stop = min(start + BLOCK, n)
            m_block[:] = 0.0
            for i in range(start, stop):
                r = i - start
                t = r * npp
                for j in range(p):
                    zy[r * p + j] = Z[i, j] * y[i]
                    for l in range(j, p):
                        zz[t] = Z[i, j] * Z[i, l]
                        t = t + 1
                for k in range(K):
                    m_block[k] += R[i, k]
            for k in range(K):
                m_total[k] += m_block[k]
            # Column-major: g_total (npp x K) += zz^T (npp x m) R_blk (m x K); rhs likewise.
            gk, gn, ldb = <int>(stop - start), <int>K, <int>K
            gm, lda, ldc = <int>npp, <int>npp, <int>npp
            dgemm(&no, &tr, &gm, &gn, &gk, &one, &zz[0], &lda, &R[start, 0], &ldb, &one,
                  &g_total[0], &ldc)
            gm, lda, ldc = <int>p, <int>p, <int>p
            dgemm(&no, &tr, &gm, &gn, &gk, &one, &zy[0], &lda, &R[start, 0], &ldb, &one,
                  &r_total[0], &ldc)
        for k in range(K):
            mass[k] = m_total[k]
            t = 0
            for j in range(p):
                rhs[k, j] = r_total[k * p + j]
                for l in range(j, p):
                    gram[k, j, l] = g_total[k * npp + t]
                    gram[k, l, j] = g_total[k * npp + t]
                    t = t + 1
    return None


def expert_residuals(const double[:, ::1] Z, const double[::1] y, const double[:, ::1] R,
                     const double[:, ::1] B, double[::1] out):
    """``out[k] = sum_i R_ik (y_i - z_i^T b_k)^2``."""
    cdef Py_ssize_t n = Z.shape[0], p = Z.shape[1], K = R.shape[1]
    cdef Py_ssize_t i, j, k, blk, start, stop
    cdef double res
    if (y.shape[0] != n or R.shape[0] != n or B.shape[0] != K or B.shape[1] != p
            or out.shape[0] != K):
        raise ValueError("Z (n, p), y (n,), R (n, K), B (K, p) and out (K,) do not match.")
    cdef double[::1] s_block = np.empty(K), s_total = np.zeros(K)
    with nogil:
        for blk in range((n + BLOCK - 1) // BLOCK):
            start = blk * BLOCK
            stop = min(start + BLOCK, n)
            s_block[:] = 0.0
            for i in range(start, stop):
                for k in range(K):
                    res = 0.0
                    for j in range(p):
                        res = res + Z[i, j] * B[k, j]
                    res = y[i] - res
                    s_block[k] += R[i, k] * (res * res)
            for k in range(K):
                s_total[k] += s_block[k]
        for k in range(K):
            out[k] = s_total[k]
    return None
