"""Kernels of the mixture-of-experts EM (:mod:`mmopt.mm.moe`), one pass over the rows each.

With a few experts and features, every row of the E-step, of the experts' weighted normal
equations and of the gates' Newton step is a handful of flops: NumPy spends its time on
passes over (n, K) and (n, p) temporaries (about a dozen per evaluation), these kernels make
one. EM's E-step pass also sums what its M-step starts from (:func:`e_step_moments`): the
experts' normal equations and the gates' Newton derivatives at the current gates, which
would otherwise take two more passes. Sums run over blocks of ``BLOCK`` rows, each block's partial sum added to the total in
order: the rounding error then grows like ``BLOCK + n / BLOCK`` instead of ``n`` (a
sequential sum), close to NumPy's pairwise sums. Serial: the shards of a distributed fit run
side by side, one per core.
"""

from libc.math cimport log

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


cdef inline void _shifted_logits(const double *Z, Py_ssize_t m, Py_ssize_t p,
                                 const double *W, Py_ssize_t n_rows_w, Py_ssize_t n_gates,
                                 double *logit, double *shifted, double *top) noexcept nogil:
    """Gate logits of the ``m`` rows of ``Z`` (C order, ``p`` columns; rows of ``W`` past
    ``n_rows_w`` are zero) in ``logit``, row by row, their maximum per row in ``top`` and
    ``logit - top`` in ``shifted``."""
    cdef Py_ssize_t i, k, j
    cdef const double *z
    cdef const double *w
    cdef double t
    for i in range(m):
        z = Z + i * p
        for k in range(n_gates):
            t = 0.0
            if k < n_rows_w:
                w = W + k * p
                for j in range(p):
                    t = t + w[j] * z[j]
            logit[i * n_gates + k] = t
        top[i] = _shift_by_max(&logit[i * n_gates], &shifted[i * n_gates], n_gates)


cdef inline void _add_gate_derivatives(const double *z, Py_ssize_t p, const double *P,
                                       const double *r, Py_ssize_t A, double mass,
                                       double *g, double *h) noexcept nogil:
    """Add one row's terms of the gates' gradient and Hessian (negated gradient).

    ``g`` (A, p) gets ``(r_a - mass P_a) z``; ``h`` (pairs ``b <= a`` in order, then the
    products ``z_j z_l``, ``j <= l``) gets ``mass P_a (delta_ab - P_b) z_j z_l``. Directly,
    not by a small matrix product per block: with a few gates and features the products
    are a few dozen flops per row, less than BLAS's call and packing.
    """
    cdef Py_ssize_t a, b, j, l, t = 0
    cdef double c, cz, wa
    for a in range(A):
        c = r[a] - mass * P[a]
        for j in range(p):
            g[a * p + j] += c * z[j]
    for a in range(A):
        wa = P[a] * mass
        for b in range(a + 1):
            c = wa * ((a == b) - P[b])
            for j in range(p):
                cz = c * z[j]
                for l in range(j, p):
                    h[t] += cz * z[l]
                    t = t + 1


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
    cdef Py_ssize_t i, r, k, t, blk, start, stop
    cdef double s, lse, mass, value = 0.0, block_value
    cdef const double *row
    if R.shape[0] != n or W.shape[0] != A or W.shape[1] != p or K < 2:
        raise ValueError("Z (n, p), R (n, K >= 2) and W (K - 1, p) do not match.")
    if derivatives and (grad.shape[0] != A * p or hess.shape[0] != A * p * A * p):
        raise ValueError("grad must have (K - 1) p entries and hess their square.")
    cdef double[::1] logit = np.empty(BLOCK * K), shifted = np.empty(BLOCK * K)
    cdef double[::1] expo = np.empty(BLOCK * K), zeros = np.zeros(BLOCK * K)
    cdef double[::1] top = np.empty(BLOCK), P = np.empty(K)
    # Each block's sums, added to the totals in order.
    cdef double[::1] g_block = np.empty(A * p), h_block = np.empty(n_pairs * npp)
    cdef double[::1] g_total = np.zeros(A * p), h_total = np.zeros(n_pairs * npp)
    with nogil:
        for blk in range((n + BLOCK - 1) // BLOCK):
            start = blk * BLOCK
            stop = min(start + BLOCK, n)
            _shifted_logits(&Z[start, 0], stop - start, p, &W[0, 0], A, K, &logit[0],
                            &shifted[0], &top[0])
            mmopt_exprow(&zeros[0], &shifted[0], 0.0, 1.0, (stop - start) * K, &expo[0])
            block_value = 0.0
            if derivatives:
                g_block[:] = 0.0
                h_block[:] = 0.0
            for i in range(start, stop):
                r = (i - start) * K
                row = &R[i, 0]
                s = 0.0
                for k in range(K):
                    s = s + expo[r + k]
                lse = top[i - start] + log(s)
                for k in range(K):
                    block_value = block_value + row[k] * (logit[r + k] - lse)
                if not derivatives:
                    continue
                s = 1.0 / s
                mass = 0.0
                for k in range(K):
                    P[k] = expo[r + k] * s
                    mass = mass + row[k]
                _add_gate_derivatives(&Z[i, 0], p, &P[0], row, A, mass, &g_block[0],
                                      &h_block[0])
            value = value + block_value
            if derivatives:
                for t in range(A * p):
                    g_total[t] += g_block[t]
                for t in range(n_pairs * npp):
                    h_total[t] += h_block[t]
        if derivatives:
            for t in range(A * p):
                grad[t] = -g_total[t]
            _unpack_hessian(&h_total[0], A, p, &hess[0])
    return -value


cdef void _unpack_hessian(const double *packed, Py_ssize_t A, Py_ssize_t p,
                          double *hess) noexcept nogil:
    """The full symmetric (A p, A p) Hessian from its packed lower blocks' upper triangles."""
    cdef Py_ssize_t a, b, j, l, t = 0
    cdef double c
    for a in range(A):
        for b in range(a + 1):
            for j in range(p):
                for l in range(j, p):
                    c = packed[t]
                    hess[(a * p + j) * A * p + b * p + l] = c
                    hess[(a * p + l) * A * p + b * p + j] = c
                    hess[(b * p + j) * A * p + a * p + l] = c
                    hess[(b * p + l) * A * p + a * p + j] = c
                    t = t + 1


cdef inline void _add_expert_moments(const double *z, double y, Py_ssize_t p,
                                     const double *r, Py_ssize_t K, double *gram,
                                     double *rhs, double *mass) noexcept nogil:
    """Add one row's terms of every expert's weighted normal equations: ``gram`` (K, then
    ``z_j z_l``, ``j <= l``) gets ``r_k z_j z_l``, ``rhs`` (K, p) ``r_k y z_j``, ``mass``
    (K,) ``r_k``."""
    cdef Py_ssize_t k, j, l, t = 0
    cdef double c, cz
    for k in range(K):
        c = r[k]
        mass[k] += c
        for j in range(p):
            cz = c * z[j]
            rhs[k * p + j] += cz * y
            for l in range(j, p):
                gram[t] += cz * z[l]
                t = t + 1


cdef double _e_step(const double[:, ::1] Z, const double[::1] y, const double[:, ::1] W,
                    const double[:, ::1] B, const double[::1] variances, double[:, ::1] R,
                    bint moments, double *gram_total, double *rhs_total,
                    double *mass_total, double *g_total, double *h_total,
                    double *gate_value) except *:
    """The E-step's pass (see :func:`e_step`); with ``moments``, also the sums of
    :func:`e_step_moments` (packed as in :func:`_add_expert_moments` and
    :func:`_add_gate_derivatives`, added to the ``*_total`` arrays, which start at zero)."""
    cdef Py_ssize_t n = Z.shape[0], p = Z.shape[1], K = B.shape[0], A = K - 1
    cdef Py_ssize_t npp = p * (p + 1) // 2, n_pairs = A * (A + 1) // 2
    cdef Py_ssize_t i, r, j, k, t, blk, start, stop
    cdef double lse, s, mean, res, mass, total = 0.0, block_total, block_gate
    cdef const double *z
    cdef double *row
    cdef double[::1] logit = np.empty(BLOCK * K), shifted = np.empty(BLOCK * K)
    cdef double[::1] expo = np.empty(BLOCK * K), zeros = np.zeros(BLOCK * K)
    cdef double[::1] top = np.empty(BLOCK), log_gate = np.empty(BLOCK * K)
    cdef double[::1] gate_p = np.empty(BLOCK * K)
    cdef double[::1] log_var = np.log(np.asarray(variances))
    cdef double[::1] inv_var = 1.0 / np.asarray(variances)
    # Each block's sums of the moments, added to the totals in order.
    cdef Py_ssize_t n_gram = K * npp, n_rhs = K * p, n_g = A * p, n_h = n_pairs * npp
    cdef double[::1] sums = np.empty(max(n_gram + n_rhs + K + n_g + n_h, 1))
    cdef double *gram_block = &sums[0]
    cdef double *rhs_block = gram_block + n_gram
    cdef double *mass_block = rhs_block + n_rhs
    cdef double *g_block = mass_block + K
    cdef double *h_block = g_block + n_g
    if moments:
        gate_value[0] = 0.0
    with nogil:
        for blk in range((n + BLOCK - 1) // BLOCK):
            start = blk * BLOCK
            stop = min(start + BLOCK, n)
            _shifted_logits(&Z[start, 0], stop - start, p, &W[0, 0], K, K, &logit[0],
                            &shifted[0], &top[0])
            mmopt_exprow(&zeros[0], &shifted[0], 0.0, 1.0, (stop - start) * K, &expo[0])
            # The joint log-densities, in place of the logits, and again shifted by their
            # maximum per row.
            for i in range(start, stop):
                r = (i - start) * K
                z = &Z[i, 0]
                s = 0.0
                for k in range(K):
                    s = s + expo[r + k]
                lse = top[i - start] + log(s)
                s = 1.0 / s
                for k in range(K):
                    gate_p[r + k] = expo[r + k] * s
                    log_gate[r + k] = logit[r + k] - lse
                    mean = 0.0
                    for j in range(p):
                        mean = mean + z[j] * B[k, j]
                    res = y[i] - mean
                    logit[r + k] = log_gate[r + k] - 0.5 * (LOG_2PI + log_var[k]
                                                            + res * res * inv_var[k])
                top[i - start] = _shift_by_max(&logit[r], &shifted[r], K)
            mmopt_exprow(&zeros[0], &shifted[0], 0.0, 1.0, (stop - start) * K, &expo[0])
            block_total = 0.0
            block_gate = 0.0
            if moments:
                for t in range(n_gram + n_rhs + K + n_g + n_h):
                    gram_block[t] = 0.0
            for i in range(start, stop):
                r = (i - start) * K
                row = &R[i, 0]
                s = 0.0
                for k in range(K):
                    s = s + expo[r + k]
                block_total = block_total + (top[i - start] + log(s))
                s = 1.0 / s
                for k in range(K):
                    row[k] = expo[r + k] * s
                if not moments:
                    continue
                mass = 0.0
                for k in range(K):
                    block_gate = block_gate + row[k] * log_gate[r + k]
                    mass = mass + row[k]
                _add_expert_moments(&Z[i, 0], y[i], p, row, K, gram_block, rhs_block,
                                    mass_block)
                _add_gate_derivatives(&Z[i, 0], p, &gate_p[r], row, A, mass, g_block,
                                      h_block)
            total = total + block_total
            if moments:
                gate_value[0] -= block_gate
                for t in range(n_gram):
                    gram_total[t] += gram_block[t]
                for t in range(n_rhs):
                    rhs_total[t] += rhs_block[t]
                for t in range(K):
                    mass_total[t] += mass_block[t]
                for t in range(n_g):
                    g_total[t] += g_block[t]
                for t in range(n_h):
                    h_total[t] += h_block[t]
    return total


def e_step(const double[:, ::1] Z, const double[::1] y, const double[:, ::1] W,
           const double[:, ::1] B, const double[::1] variances, double[:, ::1] R):
    """Responsibilities of the experts and the log-likelihood, in one pass.

    Writes ``R_ik = p(k | x_i, y_i)`` (the joint ``log pi_k(x_i) + log N(y_i; z_i^T b_k,
    v_k)`` normalized over ``k``) and returns ``sum_i log p(y_i | x_i)``. ``W`` holds all
    ``K`` gate rows.
    """
    _check_e_step(Z, y, W, B, variances, R)
    return _e_step(Z, y, W, B, variances, R, False, NULL, NULL, NULL, NULL, NULL, NULL)


def e_step_moments(const double[:, ::1] Z, const double[::1] y, const double[:, ::1] W,
                   const double[:, ::1] B, const double[::1] variances, double[:, ::1] R,
                   double[:, :, ::1] gram, double[:, ::1] rhs, double[::1] mass,
                   double[::1] grad, double[::1] hess):
    """:func:`e_step` and, in the same pass, the sums EM's M-step starts from.

    Besides ``R``, writes :func:`expert_moments` of ``R`` to ``gram``, ``rhs`` and ``mass``,
    and the gradient and Hessian of :func:`gate_objective` with weights ``R`` at the gates
    ``W`` (all ``K`` rows; derivatives in the first ``K - 1``) to ``grad`` and ``hess``.
    Returns ``(sum_i log p(y_i | x_i), gate_objective's value)``.
    """
    _check_e_step(Z, y, W, B, variances, R)
    cdef Py_ssize_t p = Z.shape[1], K = B.shape[0], A = K - 1, npp = p * (p + 1) // 2
    if (gram.shape[0] != K or gram.shape[1] != p or gram.shape[2] != p or rhs.shape[0] != K
            or rhs.shape[1] != p or mass.shape[0] != K or grad.shape[0] != A * p
            or hess.shape[0] != A * p * A * p):
        raise ValueError("gram (K, p, p), rhs (K, p), mass (K,), grad ((K - 1) p,) and "
                         "hess (((K - 1) p)^2,) do not match Z (n, p) and B (K, p).")
    cdef double[::1] gram_total = np.zeros(K * npp), rhs_total = np.zeros(K * p)
    cdef double[::1] g_total = np.zeros(max(A * p, 1))
    cdef double[::1] h_total = np.zeros(max(A * (A + 1) // 2 * npp, 1))
    cdef double gate_value = 0.0
    mass[:] = 0.0
    total = _e_step(Z, y, W, B, variances, R, True, &gram_total[0], &rhs_total[0], &mass[0],
                    &g_total[0], &h_total[0], &gate_value)
    _unpack_moments(&gram_total[0], &rhs_total[0], K, p, gram, rhs)
    cdef Py_ssize_t t
    for t in range(A * p):
        grad[t] = -g_total[t]
    if A > 0:
        _unpack_hessian(&h_total[0], A, p, &hess[0])
    return total, gate_value


def _check_e_step(const double[:, ::1] Z, const double[::1] y, const double[:, ::1] W,
                  const double[:, ::1] B, const double[::1] variances, double[:, ::1] R):
    cdef Py_ssize_t n = Z.shape[0], p = Z.shape[1], K = B.shape[0]
    if (y.shape[0] != n or W.shape[0] != K or W.shape[1] != p or B.shape[1] != p
            or variances.shape[0] != K or R.shape[0] != n or R.shape[1] != K or K < 1):
        raise ValueError("Z (n, p), y (n,), W and B (K, p), variances (K,) and R (n, K) "
                         "do not match.")


cdef void _unpack_moments(const double *gram_packed, const double *rhs_packed, Py_ssize_t K,
                          Py_ssize_t p, double[:, :, ::1] gram, double[:, ::1] rhs) noexcept:
    """``gram`` (K, p, p) and ``rhs`` (K, p) from their packed sums."""
    cdef Py_ssize_t k, j, l, t
    for k in range(K):
        t = 0
        for j in range(p):
            rhs[k, j] = rhs_packed[k * p + j]
            for l in range(j, p):
                gram[k, j, l] = gram_packed[k * (p * (p + 1) // 2) + t]
                gram[k, l, j] = gram_packed[k * (p * (p + 1) // 2) + t]
                t = t + 1


def expert_moments(const double[:, ::1] Z, const double[::1] y, const double[:, ::1] R,
                   double[:, :, ::1] gram, double[:, ::1] rhs, double[::1] mass):
    """Weighted normal equations of every expert: ``gram[k] = sum_i R_ik z_i z_i^T``,
    ``rhs[k] = sum_i R_ik y_i z_i`` and ``mass[k] = sum_i R_ik``."""
    cdef Py_ssize_t n = Z.shape[0], p = Z.shape[1], K = R.shape[1], npp = p * (p + 1) // 2
    cdef Py_ssize_t i, k, t, blk, start, stop
    if (y.shape[0] != n or R.shape[0] != n or gram.shape[0] != K or gram.shape[1] != p
            or gram.shape[2] != p or rhs.shape[0] != K or rhs.shape[1] != p
            or mass.shape[0] != K):
        raise ValueError("Z (n, p), y (n,), R (n, K), gram (K, p, p), rhs (K, p) and "
                         "mass (K,) do not match.")
    cdef double[::1] g_block = np.empty(npp * K), r_block = np.empty(p * K)
    cdef double[::1] m_block = np.empty(K)
    cdef double[::1] g_total = np.zeros(npp * K), r_total = np.zeros(p * K)
    cdef double[::1] m_total = np.zeros(K)
    with nogil:
        for blk in range((n + BLOCK - 1) // BLOCK):
            start = blk * BLOCK
            stop = min(start + BLOCK, n)
            g_block[:] = 0.0
            r_block[:] = 0.0
            m_block[:] = 0.0
            for i in range(start, stop):
                _add_expert_moments(&Z[i, 0], y[i], p, &R[i, 0], K, &g_block[0],
                                    &r_block[0], &m_block[0])
            for t in range(npp * K):
                g_total[t] += g_block[t]
            for t in range(p * K):
                r_total[t] += r_block[t]
            for t in range(K):
                m_total[t] += m_block[t]
    for k in range(K):
        mass[k] = m_total[k]
    _unpack_moments(&g_total[0], &r_total[0], K, p, gram, rhs)
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
