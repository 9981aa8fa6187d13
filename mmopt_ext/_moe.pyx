"""Kernels of the mixture-of-experts EM (:mod:`mmopt.mm.moe`), one pass over the rows each.

With a few experts and features, every row of the E-step, of the experts' weighted normal
equations and of the gates' Newton step is a handful of flops: NumPy spends its time on
passes over (n, K) and (n, p) temporaries (about a dozen per evaluation), these kernels make
one. EM's E-step pass also sums what its M-step starts from (:func:`e_step_moments`): the
experts' normal equations and the gates' Newton derivatives at the current gates, which
would otherwise take two more passes. Rows go by blocks of ``BLOCK``, each transposed
to columns, so that every per-row update is a loop over the block's rows that the compiler
vectorizes; sums go to per-row lanes (see :func:`_lane_sums`): the rounding error then
grows like ``BLOCK + n / BLOCK`` instead of ``n`` (a sequential sum), close to NumPy's
pairwise sums. Serial: the shards of a distributed fit run
side by side, one per core.
"""

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

cdef extern from "_logs.h" nogil:
    ctypedef void (*mmopt_logs_fn)(const double*, Py_ssize_t, double*)
    mmopt_logs_fn mmopt_logs
    int mmopt_logs_select(int vector)

# Each row's log-partition takes a log: the C library's, one at a time, took a sixth of a
# gate pass; libmvec's AVX2 log (within a few ulps) takes four at a time.
mmopt_logs_select(1)


def _select_log_path(bint vector):
    """Use the vector log (``True``, where available) or the C library's; returns whether
    the vector one is in use (for tests)."""
    return bool(mmopt_logs_select(vector))

cdef Py_ssize_t BLOCK = 256
cdef double LOG_2PI = 1.8378770664093453


cdef inline void _columns(const double *A, Py_ssize_t m, Py_ssize_t q,
                          double *out) noexcept nogil:
    """``out[j * m + i] = A[i * q + j]``: ``m`` rows of ``q`` entries to ``q`` columns."""
    cdef Py_ssize_t i, j
    for j in range(q):
        for i in range(m):
            out[j * m + i] = A[i * q + j]


cdef inline void _shifted_logits(const double *zT, Py_ssize_t m, Py_ssize_t p,
                                 const double *W, Py_ssize_t n_rows_w, Py_ssize_t K,
                                 double *L, double *S, double *top) noexcept nogil:
    """Gate logits of ``m`` rows (columns ``zT``; rows of ``W`` past ``n_rows_w`` are zero)
    in ``L`` (K, m), their maximum per row in ``top`` and ``L - top`` in ``S``."""
    cdef Py_ssize_t i
    _linear_columns(zT, m, p, W, n_rows_w, L)
    for i in range(n_rows_w * m, K * m):
        L[i] = 0.0
    _shift_by_max(L, m, K, S, top)


cdef inline void _linear_columns(const double *zT, Py_ssize_t m, Py_ssize_t p,
                                 const double *coef, Py_ssize_t rows,
                                 double *out) noexcept nogil:
    """``out[k, i] = sum_j coef[k, j] zT[j, i]`` for ``k < rows`` (``out``: (rows, m))."""
    cdef Py_ssize_t i, j, k
    cdef double w
    cdef double *row
    for k in range(rows):
        row = out + k * m
        w = coef[k * p]
        for i in range(m):
            row[i] = w * zT[i]
        for j in range(1, p):
            w = coef[k * p + j]
            for i in range(m):
                row[i] += w * zT[j * m + i]


cdef inline void _shift_by_max(const double *L, Py_ssize_t m, Py_ssize_t K, double *S,
                               double *top) noexcept nogil:
    """``top`` (m,): the maximum of each row of ``L`` (K, m); ``S = L - top``."""
    cdef Py_ssize_t i, k
    cdef double v
    for i in range(m):
        top[i] = L[i]
    for k in range(1, K):
        for i in range(m):
            v = L[k * m + i]
            top[i] = v if v > top[i] else top[i]
    for k in range(K):
        for i in range(m):
            S[k * m + i] = L[k * m + i] - top[i]


cdef inline void _row_sums(const double *E, Py_ssize_t m, Py_ssize_t K,
                           double *out) noexcept nogil:
    """``out[i] = sum_k E[k, i]`` for ``E`` (K, m)."""
    cdef Py_ssize_t i, k
    for i in range(m):
        out[i] = E[i]
    for k in range(1, K):
        for i in range(m):
            out[i] += E[k * m + i]


cdef inline void _products(const double *zT, Py_ssize_t m, Py_ssize_t p,
                           double *zz) noexcept nogil:
    """``zz`` (p (p + 1) / 2, m): the products ``z_j z_l`` (``j <= l``) of each row."""
    cdef Py_ssize_t i, j, l, t = 0
    for j in range(p):
        for l in range(j, p):
            for i in range(m):
                zz[t * m + i] = zT[j * m + i] * zT[l * m + i]
            t = t + 1


# Sums over the rows go to per-row lanes: ``lanes[t * BLOCK + i]`` adds the term of row ``i``
# of every block, and :func:`_lane_sums` adds the lanes at the end. Every update is then an
# elementwise loop the compiler vectorizes (a sum per block would be a reduction, which it
# must leave sequential), and each lane sums ``n / BLOCK`` terms in order, then ``BLOCK``
# lanes are added: rounding grows like ``n / BLOCK + BLOCK``, as with sums per block.

cdef inline void _add_gate_lanes(const double *zT, const double *zz, Py_ssize_t m,
                                 Py_ssize_t p, const double *P, const double *Rc,
                                 const double *mass, Py_ssize_t A, double *c, double *G,
                                 double *H) noexcept nogil:
    """Add ``m`` rows' terms of the gates' (negated) gradient and Hessian to their lanes.

    ``G`` (A p lanes) gets ``(r_a - mass P_a) z_j``; ``H`` (pairs ``b <= a`` in order, then
    the products ``z_j z_l``, ``j <= l``) gets ``mass P_a (delta_ab - P_b) z_j z_l``.
    ``P``, ``Rc`` (A or more, m) and ``mass`` (m,) are by column; ``c`` is (m,) work space.
    """
    cdef Py_ssize_t i, a, b, npp = p * (p + 1) // 2
    cdef double delta
    for a in range(A):
        for i in range(m):
            c[i] = Rc[a * m + i] - mass[i] * P[a * m + i]
        _add_products(c, zT, p, m, G + a * p * BLOCK)
    for a in range(A):
        for b in range(a + 1):
            delta = 1.0 if a == b else 0.0
            for i in range(m):
                c[i] = (P[a * m + i] * mass[i]) * (delta - P[b * m + i])
            _add_products(c, zz, npp, m, H)
            H += npp * BLOCK


cdef inline void _add_products(const double *c, const double *cols, Py_ssize_t count,
                               Py_ssize_t m, double *lanes) noexcept nogil:
    """``lanes[t, i] += c[i] cols[t, i]`` for ``t < count``, ``i < m`` (lanes: (count,
    BLOCK), ``cols``: (count, m))."""
    cdef Py_ssize_t i, t
    cdef double *lane
    cdef const double *col
    for t in range(count):
        lane = lanes + t * BLOCK
        col = cols + t * m
        for i in range(m):
            lane[i] += c[i] * col[i]


cdef inline void _add_moment_lanes(const double *zT, const double *zz, const double *y,
                                   Py_ssize_t m, Py_ssize_t p, const double *Rc,
                                   Py_ssize_t K, double *c, double *gram, double *rhs,
                                   double *mass) noexcept nogil:
    """Add ``m`` rows' terms of every expert's weighted normal equations to their lanes:
    ``gram`` (K, then ``z_j z_l``, ``j <= l``) gets ``r_k z_j z_l``, ``rhs`` (K, p)
    ``r_k y z_j``, ``mass`` (K,) ``r_k``; ``Rc`` (K, m) by column, ``c`` (m,) work space."""
    cdef Py_ssize_t i, k, npp = p * (p + 1) // 2
    cdef double *lane
    cdef const double *r
    for k in range(K):
        r = Rc + k * m
        lane = mass + k * BLOCK
        for i in range(m):
            lane[i] += r[i]
        _add_products(r, zz, npp, m, gram + k * npp * BLOCK)
        for i in range(m):
            c[i] = r[i] * y[i]
        _add_products(c, zT, p, m, rhs + k * p * BLOCK)


cdef inline void _lane_sums(const double *lanes, Py_ssize_t count,
                            double *out) noexcept nogil:
    """``out[t] = sum_i lanes[t * BLOCK + i]`` for ``t < count``."""
    cdef Py_ssize_t i, t
    cdef double s
    for t in range(count):
        s = 0.0
        for i in range(BLOCK):
            s = s + lanes[t * BLOCK + i]
        out[t] = s


cdef class _Work:
    """Work space of a pass over blocks of rows (``BLOCK`` rows, ``p`` columns of ``Z``,
    ``K`` gates): the block's columns ``zT`` (p, m) and products ``zz`` (p (p + 1) / 2, m),
    logits ``L``, shifted logits ``S``, their exponentials ``E``, gate probabilities ``P``
    and responsibilities ``Rc`` (K, m each), per-row ``top``, ``s``, ``mass`` and ``c``,
    ``zeros`` (K BLOCK) and ``n_lanes`` lanes of sums starting at zero (see above)."""
    cdef object buffer
    cdef double *zT
    cdef double *zz
    cdef double *L
    cdef double *S
    cdef double *E
    cdef double *P
    cdef double *Rc
    cdef double *top
    cdef double *s
    cdef double *mass
    cdef double *c
    cdef double *zeros
    cdef double *lanes

    def __init__(self, Py_ssize_t p, Py_ssize_t K, Py_ssize_t n_lanes):
        cdef Py_ssize_t m = BLOCK, npp = p * (p + 1) // 2
        cdef double[::1] buffer = np.zeros((p + npp + 6 * K + 4 + max(n_lanes, 1)) * m)
        self.buffer = buffer
        self.zT = &buffer[0]
        self.zz = self.zT + p * m
        self.L = self.zz + npp * m
        self.S = self.L + K * m
        self.E = self.S + K * m
        self.P = self.E + K * m
        self.Rc = self.P + K * m
        self.zeros = self.Rc + K * m
        self.top = self.zeros + K * m
        self.s = self.top + m
        self.mass = self.s + m
        self.c = self.mass + m
        self.lanes = self.c + m


cdef inline void _gate_block(_Work work, const double *Z, Py_ssize_t m, Py_ssize_t p,
                             const double *W, Py_ssize_t n_rows_w,
                             Py_ssize_t K) noexcept nogil:
    """The gates' part of a block of ``m`` rows: ``work.zT``, the logits ``work.L``, the
    exponentials ``work.E`` of the logits shifted by their maximum per row, their sums per
    row ``work.s`` and the log-partitions ``work.top`` (see :func:`_shifted_logits`)."""
    cdef Py_ssize_t i
    _columns(Z, m, p, work.zT)
    _shifted_logits(work.zT, m, p, W, n_rows_w, K, work.L, work.S, work.top)
    mmopt_exprow(work.zeros, work.S, 0.0, 1.0, m * K, work.E)
    _row_sums(work.E, m, K, work.s)
    mmopt_logs(work.s, m, work.c)
    for i in range(m):
        work.top[i] = work.top[i] + work.c[i]


cdef inline void _gate_probabilities(_Work work, Py_ssize_t m, Py_ssize_t rows) noexcept nogil:
    """``work.P``: the first ``rows`` gates' probabilities of the block :func:`_gate_block`
    left in ``work`` (``work.s`` becomes ``1 / s``)."""
    cdef Py_ssize_t i, k
    for i in range(m):
        work.s[i] = 1.0 / work.s[i]
    for k in range(rows):
        for i in range(m):
            work.P[k * m + i] = work.E[k * m + i] * work.s[i]


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
    cdef Py_ssize_t i, k, t, m, blk, start
    if R.shape[0] != n or W.shape[0] != A or W.shape[1] != p or K < 2:
        raise ValueError("Z (n, p), R (n, K >= 2) and W (K - 1, p) do not match.")
    if derivatives and (grad.shape[0] != A * p or hess.shape[0] != A * p * A * p):
        raise ValueError("grad must have (K - 1) p entries and hess their square.")
    cdef Py_ssize_t n_g = A * p, n_h = n_pairs * npp
    cdef _Work work = _Work(p, K, 1 + n_g + n_h)
    cdef double[::1] sums = np.empty(1 + n_g + n_h)
    cdef double *value = work.lanes
    cdef double *G = value + BLOCK
    cdef double *H = G + n_g * BLOCK
    with nogil:
        for blk in range((n + BLOCK - 1) // BLOCK):
            start = blk * BLOCK
            m = min(BLOCK, n - start)
            _gate_block(work, &Z[start, 0], m, p, &W[0, 0], A, K)
            _columns(&R[start, 0], m, K, work.Rc)
            for k in range(K):
                for i in range(m):
                    value[i] += work.Rc[k * m + i] * (work.L[k * m + i] - work.top[i])
            if not derivatives:
                continue
            _gate_probabilities(work, m, A)
            _row_sums(work.Rc, m, K, work.mass)
            _products(work.zT, m, p, work.zz)
            _add_gate_lanes(work.zT, work.zz, m, p, work.P, work.Rc, work.mass, A, work.c, G,
                            H)
        _lane_sums(value, 1 + (n_g + n_h if derivatives else 0), &sums[0])
        if derivatives:
            for t in range(n_g):
                grad[t] = -sums[1 + t]
            _unpack_hessian(&sums[1 + n_g], A, p, &hess[0])
    return -sums[0]


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


cdef double _e_step(const double[:, ::1] Z, const double[::1] y, const double[:, ::1] W,
                    const double[:, ::1] B, const double[::1] variances, double[:, ::1] R,
                    bint moments, double *out) except *:
    """The E-step's pass (see :func:`e_step`); with ``moments``, also the sums of
    :func:`e_step_moments`, written to ``out``: the gates' objective, the experts' ``gram``
    (K, then ``z_j z_l``, ``j <= l``), ``rhs`` (K, p) and ``mass`` (K,), the gates'
    negated gradient (K - 1, p) and Hessian (packed as in :func:`_add_gate_lanes`)."""
    cdef Py_ssize_t n = Z.shape[0], p = Z.shape[1], K = B.shape[0], A = K - 1
    cdef Py_ssize_t npp = p * (p + 1) // 2, n_pairs = A * (A + 1) // 2
    cdef Py_ssize_t i, j, k, m, blk, start
    cdef Py_ssize_t n_gram = K * npp, n_rhs = K * p, n_g = A * p, n_h = n_pairs * npp
    cdef Py_ssize_t n_sums = 2 + n_gram + n_rhs + K + n_g + n_h
    cdef _Work work = _Work(p, K, n_sums if moments else 1)
    cdef double[::1] sums = np.empty(n_sums)
    cdef double[::1] log_var = np.log(np.asarray(variances))
    cdef double[::1] inv_var = 1.0 / np.asarray(variances)
    cdef double *zT = work.zT
    cdef double *L = work.L
    cdef double *S = work.S
    cdef double *E = work.E
    cdef double *top = work.top
    cdef double *s = work.s
    cdef double *P = work.P
    cdef double *Rc = work.Rc
    cdef double *total = work.lanes
    cdef double *gate = total + BLOCK
    cdef double *gram = gate + BLOCK
    cdef double *rhs = gram + n_gram * BLOCK
    cdef double *mass_lanes = rhs + n_rhs * BLOCK
    cdef double *G = mass_lanes + K * BLOCK
    cdef double *H = G + n_g * BLOCK
    cdef const double *yb
    cdef double b, res, half_log, iv
    with nogil:
        for blk in range((n + BLOCK - 1) // BLOCK):
            start = blk * BLOCK
            m = min(BLOCK, n - start)
            yb = &y[start]
            _gate_block(work, &Z[start, 0], m, p, &W[0, 0], K, K)
            if moments:
                _gate_probabilities(work, m, A)  # before E is overwritten
            # L: the gates' log-probabilities; S: the joint log-densities (experts' means
            # first).
            _linear_columns(zT, m, p, &B[0, 0], K, S)
            for k in range(K):
                for i in range(m):
                    L[k * m + i] = L[k * m + i] - top[i]
                half_log = 0.5 * (LOG_2PI + log_var[k])
                iv = 0.5 * inv_var[k]
                for i in range(m):
                    res = yb[i] - S[k * m + i]
                    S[k * m + i] = (L[k * m + i] - half_log) - res * res * iv
            # The responsibilities: the joint densities normalized per row.
            _shift_by_max(S, m, K, E, top)
            mmopt_exprow(work.zeros, E, 0.0, 1.0, m * K, S)
            _row_sums(S, m, K, s)
            mmopt_logs(s, m, work.c)
            for i in range(m):
                total[i] += top[i] + work.c[i]
                s[i] = 1.0 / s[i]
            for k in range(K):
                for i in range(m):
                    Rc[k * m + i] = S[k * m + i] * s[i]
            for i in range(m):
                for k in range(K):
                    R[start + i, k] = Rc[k * m + i]
            if not moments:
                continue
            for k in range(K):
                for i in range(m):
                    gate[i] += Rc[k * m + i] * L[k * m + i]
            _row_sums(Rc, m, K, work.mass)
            _products(zT, m, p, work.zz)
            _add_moment_lanes(zT, work.zz, yb, m, p, Rc, K, work.c, gram, rhs, mass_lanes)
            _add_gate_lanes(zT, work.zz, m, p, P, Rc, work.mass, A, work.c, G, H)
        _lane_sums(total, n_sums if moments else 1, &sums[0])
    if moments:
        for i in range(n_sums - 1):
            out[i] = sums[1 + i]
    return sums[0]


def e_step(const double[:, ::1] Z, const double[::1] y, const double[:, ::1] W,
           const double[:, ::1] B, const double[::1] variances, double[:, ::1] R):
    """Responsibilities of the experts and the log-likelihood, in one pass.

    Writes ``R_ik = p(k | x_i, y_i)`` (the joint ``log pi_k(x_i) + log N(y_i; z_i^T b_k,
    v_k)`` normalized over ``k``) and returns ``sum_i log p(y_i | x_i)``. ``W`` holds all
    ``K`` gate rows.
    """
    _check_e_step(Z, y, W, B, variances, R)
    return _e_step(Z, y, W, B, variances, R, False, NULL)


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
    cdef Py_ssize_t k, t, n_gram = K * npp, n_rhs = K * p
    if (gram.shape[0] != K or gram.shape[1] != p or gram.shape[2] != p or rhs.shape[0] != K
            or rhs.shape[1] != p or mass.shape[0] != K or grad.shape[0] != A * p
            or hess.shape[0] != A * p * A * p):
        raise ValueError("gram (K, p, p), rhs (K, p), mass (K,), grad ((K - 1) p,) and "
                         "hess (((K - 1) p)^2,) do not match Z (n, p) and B (K, p).")
    cdef double[::1] sums = np.empty(1 + n_gram + n_rhs + K + A * p + A * (A + 1) // 2 * npp)
    total = _e_step(Z, y, W, B, variances, R, True, &sums[0])
    _unpack_moments(&sums[1], &sums[1 + n_gram], K, p, gram, rhs)
    t = 1 + n_gram + n_rhs
    for k in range(K):
        mass[k] = sums[t + k]
    t += K
    for k in range(A * p):
        grad[k] = -sums[t + k]
    if A > 0:
        _unpack_hessian(&sums[t + A * p], A, p, &hess[0])
    return total, -sums[0]


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
    cdef Py_ssize_t k, j, l, t = 0
    for k in range(K):
        for j in range(p):
            rhs[k, j] = rhs_packed[k * p + j]
            for l in range(j, p):
                gram[k, j, l] = gram_packed[t]
                gram[k, l, j] = gram_packed[t]
                t = t + 1


def expert_moments(const double[:, ::1] Z, const double[::1] y, const double[:, ::1] R,
                   double[:, :, ::1] gram, double[:, ::1] rhs, double[::1] mass):
    """Weighted normal equations of every expert: ``gram[k] = sum_i R_ik z_i z_i^T``,
    ``rhs[k] = sum_i R_ik y_i z_i`` and ``mass[k] = sum_i R_ik``."""
    cdef Py_ssize_t n = Z.shape[0], p = Z.shape[1], K = R.shape[1], npp = p * (p + 1) // 2
    cdef Py_ssize_t k, m, blk, start
    if (y.shape[0] != n or R.shape[0] != n or gram.shape[0] != K or gram.shape[1] != p
            or gram.shape[2] != p or rhs.shape[0] != K or rhs.shape[1] != p
            or mass.shape[0] != K):
        raise ValueError("Z (n, p), y (n,), R (n, K), gram (K, p, p), rhs (K, p) and "
                         "mass (K,) do not match.")
    cdef Py_ssize_t n_gram = K * npp, n_rhs = K * p
    cdef _Work work = _Work(p, K, n_gram + n_rhs + K)
    cdef double[::1] sums = np.empty(n_gram + n_rhs + K)
    cdef double *gram_lanes = work.lanes
    with nogil:
        for blk in range((n + BLOCK - 1) // BLOCK):
            start = blk * BLOCK
            m = min(BLOCK, n - start)
            _columns(&Z[start, 0], m, p, work.zT)
            _columns(&R[start, 0], m, K, work.Rc)
            _products(work.zT, m, p, work.zz)
            _add_moment_lanes(work.zT, work.zz, &y[start], m, p, work.Rc, K, work.c,
                              gram_lanes, gram_lanes + n_gram * BLOCK,
                              gram_lanes + (n_gram + n_rhs) * BLOCK)
        _lane_sums(gram_lanes, n_gram + n_rhs + K, &sums[0])
    for k in range(K):
        mass[k] = sums[n_gram + n_rhs + k]
    _unpack_moments(&sums[0], &sums[n_gram], K, p, gram, rhs)
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
