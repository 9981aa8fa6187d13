/* Sums of exponentials over one row of a cost matrix, vectorized.
 *
 * expsum(c, g, shift, inv_reg, m) = sum_j exp(clamp((shift + g[j] - c[j]) * inv_reg))
 * exprow(c, g, shift, inv_reg, m, out): out[j] = exp(clamp((shift + g[j] - c[j]) * inv_reg))
 *
 * with the exponent clamped to [-700, 700]: exp stays a normal double (no subnormal slow
 * path, no overflow) and the vector exp never leaves its fast range. A clamped term at the
 * bottom adds at most exp(-700) ~ 1e-304 to the sum; callers treat sums outside
 * [MMOPT_EXPSUM_TINY, MMOPT_EXPSUM_HUGE] as unreliable and recompute them exactly. A NaN
 * exponent stays NaN on every path (x86 min/max return their second operand when one is
 * NaN, so the clamps take the exponent second).
 *
 * Paths, chosen once from the CPU (the choice can be forced for testing with
 * mmopt_expsum_select()):
 * - AVX-512 (with DQ), AVX2 (with FMA): an inline exp (below), on any x86-64 GCC/Clang build;
 * - SSE2: glibc's vector math library (libmvec), where setup.py found it and defined
 *   MMOPT_HAVE_LIBMVEC;
 * - scalar: the C library's exp.
 */
#ifndef MMOPT_EXPSUM_H
#define MMOPT_EXPSUM_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MMOPT_EXP_CLAMP 700.0
#define MMOPT_EXPSUM_TINY 1e-250
#define MMOPT_EXPSUM_HUGE 1e250

static inline double mmopt_clamp_exponent(double t)
{
    if (t < -MMOPT_EXP_CLAMP) return -MMOPT_EXP_CLAMP;
    if (t > MMOPT_EXP_CLAMP) return MMOPT_EXP_CLAMP;
    return t;
}

/* The biased binary exponent of a double: floor(log2 |x|) + 1023 for normal x. */
static inline int mmopt_binary_exponent(double x)
{
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    return (int)((bits >> 52) & 0x7ff);
}

static double mmopt_expsum_scalar(const double *c, const double *g, double shift,
                                  double inv_reg, ptrdiff_t m)
{
    double total = 0.0;
    for (ptrdiff_t j = 0; j < m; ++j)
        total += exp(mmopt_clamp_exponent((shift + g[j] - c[j]) * inv_reg));
    return total;
}

static void mmopt_exprow_scalar(const double *c, const double *g, double shift,
                                double inv_reg, ptrdiff_t m, double *out)
{
    for (ptrdiff_t j = 0; j < m; ++j)
        out[j] = exp(mmopt_clamp_exponent((shift + g[j] - c[j]) * inv_reg));
}

typedef double (*mmopt_expsum_fn)(const double *, const double *, double, double, ptrdiff_t);
typedef void (*mmopt_exprow_fn)(const double *, const double *, double, double, ptrdiff_t,
                                double *);

static double mmopt_expsum_tail(const double *c, const double *g, double shift,
                                double inv_reg, ptrdiff_t start, ptrdiff_t m)
{
    double total = 0.0;
    for (ptrdiff_t j = start; j < m; ++j)
        total += exp(mmopt_clamp_exponent((shift + g[j] - c[j]) * inv_reg));
    return total;
}

#if defined(MMOPT_HAVE_LIBMVEC) && defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* glibc's libmvec, x86-64 vector ABI name of its SSE2 exp. */
__m128d _ZGVbN2v_exp(__m128d);

static double mmopt_expsum_sse2(const double *c, const double *g, double shift,
                                double inv_reg, ptrdiff_t m)
{
    const __m128d vshift = _mm_set1_pd(shift), vinv = _mm_set1_pd(inv_reg);
    const __m128d lo = _mm_set1_pd(-MMOPT_EXP_CLAMP), hi = _mm_set1_pd(MMOPT_EXP_CLAMP);
    __m128d acc0 = _mm_setzero_pd(), acc1 = _mm_setzero_pd();
    ptrdiff_t j = 0;
    for (; j + 4 <= m; j += 4) {
        __m128d t0 = _mm_mul_pd(_mm_sub_pd(_mm_add_pd(vshift, _mm_loadu_pd(g + j)),
                                           _mm_loadu_pd(c + j)), vinv);
        __m128d t1 = _mm_mul_pd(_mm_sub_pd(_mm_add_pd(vshift, _mm_loadu_pd(g + j + 2)),
                                           _mm_loadu_pd(c + j + 2)), vinv);
        acc0 = _mm_add_pd(acc0, _ZGVbN2v_exp(_mm_min_pd(hi, _mm_max_pd(lo, t0))));
        acc1 = _mm_add_pd(acc1, _ZGVbN2v_exp(_mm_min_pd(hi, _mm_max_pd(lo, t1))));
    }
    double lanes[2];
    _mm_storeu_pd(lanes, _mm_add_pd(acc0, acc1));
    return lanes[0] + lanes[1] + mmopt_expsum_tail(c, g, shift, inv_reg, j, m);
}

static void mmopt_exprow_sse2(const double *c, const double *g, double shift,
                              double inv_reg, ptrdiff_t m, double *out)
{
    const __m128d vshift = _mm_set1_pd(shift), vinv = _mm_set1_pd(inv_reg);
    const __m128d lo = _mm_set1_pd(-MMOPT_EXP_CLAMP), hi = _mm_set1_pd(MMOPT_EXP_CLAMP);
    ptrdiff_t j = 0;
    for (; j + 2 <= m; j += 2) {
        __m128d t = _mm_mul_pd(_mm_sub_pd(_mm_add_pd(vshift, _mm_loadu_pd(g + j)),
                                          _mm_loadu_pd(c + j)), vinv);
        _mm_storeu_pd(out + j, _ZGVbN2v_exp(_mm_min_pd(hi, _mm_max_pd(lo, t))));
    }
    mmopt_exprow_scalar(c + j, g + j, shift, inv_reg, m - j, out + j);
}

#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* exp on AVX-512 and AVX2 without a library call.
 *
 * libmvec's AVX-512 exp cost ~1 ns per entry on the benchmark machine (AMD EPYC), twice this
 * routine: the call itself (every vector register is caller-saved, so the accumulators spill
 * around each call of 8 entries) and special-case handling that the clamped exponents never
 * need. Inline: with u = 16 log2(e) t, split u = 16 k + j + r (k, j integers, 0 <= j < 16,
 * |r| <= 1/2):
 *     exp(t) = 2^k * 2^(j/16) * exp(r ln2 / 16),
 * the middle factor from a 16-entry table held in two registers (one permute), the last by its
 * degree-6 Taylor polynomial (|r ln2/16| <= 0.0217: truncation error < 5e-16 relative), the
 * power of two added to the exponent field. Relative error ~1e-15, plus the rounding of u
 * (relative 1e-16, an error of ~|t| 1e-16 in exp(t), like the rounding of t itself).
 *
 * The rounding u -> 16k + j uses the 1.5 * 2^52 shift: the low bits of u + shift hold the
 * integer nearest u. Shifting those bits left by 48 puts k into the exponent field and j into
 * the top 4 bits of the mantissa; the table stores 2^(j/16) with j << 48 subtracted, so that
 * one integer addition gives the bits of 2^k 2^(j/16) (as glibc's scalar exp does).
 */
static uint64_t mmopt_exp_table_bits[16];

static void mmopt_exp_table_init(void)
{
    for (int j = 0; j < 16; ++j) {
        double value = exp2(j / 16.0);
        uint64_t bits;
        memcpy(&bits, &value, sizeof bits);
        mmopt_exp_table_bits[j] = bits - ((uint64_t)j << 48);
    }
}

/* Coefficients of exp(x ln2/16) = sum_k (ln2/16)^k x^k / k!. */
#define MMOPT_EXP_C1 0.04332169878499658 /* ln2 / 16 */
#define MMOPT_EXP_C2 (MMOPT_EXP_C1 * MMOPT_EXP_C1 / 2.0)
#define MMOPT_EXP_C3 (MMOPT_EXP_C2 * MMOPT_EXP_C1 / 3.0)
#define MMOPT_EXP_C4 (MMOPT_EXP_C3 * MMOPT_EXP_C1 / 4.0)
#define MMOPT_EXP_C5 (MMOPT_EXP_C4 * MMOPT_EXP_C1 / 5.0)
#define MMOPT_EXP_C6 (MMOPT_EXP_C5 * MMOPT_EXP_C1 / 6.0)
#define MMOPT_EXP_UNITS 23.083120654223414 /* 16 log2(e) */

__attribute__((target("avx512f,avx512dq")))
static inline __m512d mmopt_exp_avx512(__m512d u, __m512i table_lo, __m512i table_hi)
{
    /* exp(u / MMOPT_EXP_UNITS): callers fold the units into their scaling of the argument. */
    const __m512d bound = _mm512_set1_pd(MMOPT_EXP_CLAMP * MMOPT_EXP_UNITS);
    const __m512d round_shift = _mm512_set1_pd(6755399441055744.0); /* 1.5 * 2^52 */
    u = _mm512_min_pd(bound, _mm512_max_pd(_mm512_sub_pd(_mm512_setzero_pd(), bound), u));
    __m512d shifted = _mm512_add_pd(u, round_shift);
    /* u - round(u), rounding to nearest even like the addition above (VREDUCEPD, imm 0). */
    __m512d r = _mm512_reduce_pd(u, 0);
    /* Estrin's scheme: dependency depth 3 instead of Horner's 6 (measured a little faster). */
    __m512d r2 = _mm512_mul_pd(r, r);
    __m512d low = _mm512_fmadd_pd(_mm512_set1_pd(MMOPT_EXP_C1), r, _mm512_set1_pd(1.0));
    __m512d mid = _mm512_fmadd_pd(_mm512_set1_pd(MMOPT_EXP_C3), r, _mm512_set1_pd(MMOPT_EXP_C2));
    __m512d high = _mm512_fmadd_pd(_mm512_set1_pd(MMOPT_EXP_C5), r, _mm512_set1_pd(MMOPT_EXP_C4));
    high = _mm512_fmadd_pd(_mm512_set1_pd(MMOPT_EXP_C6), r2, high);
    __m512d p = _mm512_fmadd_pd(mid, r2, low);
    p = _mm512_fmadd_pd(high, _mm512_mul_pd(r2, r2), p);
    __m512i bits = _mm512_castpd_si512(shifted);
    __m512i scale = _mm512_add_epi64(_mm512_permutex2var_epi64(table_lo, bits, table_hi),
                                     _mm512_slli_epi64(bits, 48));
    return _mm512_mul_pd(p, _mm512_castsi512_pd(scale));
}

__attribute__((target("avx512f,avx512dq")))
static void mmopt_exprow_avx512(const double *c, const double *g, double shift,
                                double inv_reg, ptrdiff_t m, double *out)
{
    const __m512i table_lo = _mm512_loadu_si512(mmopt_exp_table_bits);
    const __m512i table_hi = _mm512_loadu_si512(mmopt_exp_table_bits + 8);
    const __m512d vshift = _mm512_set1_pd(shift);
    const __m512d vinv = _mm512_set1_pd(inv_reg * MMOPT_EXP_UNITS);
    ptrdiff_t j = 0;
    for (; j + 8 <= m; j += 8) {
        __m512d t = _mm512_mul_pd(
            _mm512_sub_pd(_mm512_add_pd(vshift, _mm512_loadu_pd(g + j)), _mm512_loadu_pd(c + j)),
            vinv);
        _mm512_storeu_pd(out + j, mmopt_exp_avx512(t, table_lo, table_hi));
    }
    if (j < m) {
        __mmask8 tail = (__mmask8)((1u << (m - j)) - 1u);
        __m512d t = _mm512_mul_pd(
            _mm512_sub_pd(_mm512_add_pd(vshift, _mm512_maskz_loadu_pd(tail, g + j)),
                          _mm512_maskz_loadu_pd(tail, c + j)),
            vinv);
        _mm512_mask_storeu_pd(out + j, tail, mmopt_exp_avx512(t, table_lo, table_hi));
    }
}

__attribute__((target("avx512f,avx512dq")))
static double mmopt_expsum_avx512(const double *c, const double *g, double shift,
                                  double inv_reg, ptrdiff_t m)
{
    const __m512i table_lo = _mm512_loadu_si512(mmopt_exp_table_bits);
    const __m512i table_hi = _mm512_loadu_si512(mmopt_exp_table_bits + 8);
    const __m512d vshift = _mm512_set1_pd(shift);
    const __m512d vinv = _mm512_set1_pd(inv_reg * MMOPT_EXP_UNITS);
    __m512d acc[4];
    for (int k = 0; k < 4; ++k) acc[k] = _mm512_setzero_pd();
    ptrdiff_t j = 0;
    for (; j + 32 <= m; j += 32) {
        for (int k = 0; k < 4; ++k) {
            __m512d u = _mm512_mul_pd(
                _mm512_sub_pd(_mm512_add_pd(vshift, _mm512_loadu_pd(g + j + 8 * k)),
                              _mm512_loadu_pd(c + j + 8 * k)),
                vinv);
            acc[k] = _mm512_add_pd(acc[k], mmopt_exp_avx512(u, table_lo, table_hi));
        }
    }
    for (; j + 8 <= m; j += 8) {
        __m512d u = _mm512_mul_pd(
            _mm512_sub_pd(_mm512_add_pd(vshift, _mm512_loadu_pd(g + j)), _mm512_loadu_pd(c + j)),
            vinv);
        acc[0] = _mm512_add_pd(acc[0], mmopt_exp_avx512(u, table_lo, table_hi));
    }
    if (j < m) {
        /* The last 1-7 entries through masked loads: the other lanes never reach the sum. */
        __mmask8 tail = (__mmask8)((1u << (m - j)) - 1u);
        __m512d u = _mm512_mul_pd(
            _mm512_sub_pd(_mm512_add_pd(vshift, _mm512_maskz_loadu_pd(tail, g + j)),
                          _mm512_maskz_loadu_pd(tail, c + j)),
            vinv);
        acc[1] = _mm512_mask_add_pd(acc[1], tail, acc[1], mmopt_exp_avx512(u, table_lo, table_hi));
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(acc[0], acc[1]),
                                              _mm512_add_pd(acc[2], acc[3])));
}

__attribute__((target("avx2,fma")))
static inline __m256d mmopt_exp_avx2(__m256d u)
{
    /* The AVX-512 routine above on 4 lanes: clamp by min/max, rounding by the shift alone,
     * the table read by a gather. */
    const __m256d bound = _mm256_set1_pd(MMOPT_EXP_CLAMP * MMOPT_EXP_UNITS);
    const __m256d round_shift = _mm256_set1_pd(6755399441055744.0);
    u = _mm256_min_pd(bound, _mm256_max_pd(_mm256_sub_pd(_mm256_setzero_pd(), bound), u));
    __m256d shifted = _mm256_add_pd(u, round_shift);
    __m256d r = _mm256_sub_pd(u, _mm256_sub_pd(shifted, round_shift));
    __m256d r2 = _mm256_mul_pd(r, r);
    __m256d low = _mm256_fmadd_pd(_mm256_set1_pd(MMOPT_EXP_C1), r, _mm256_set1_pd(1.0));
    __m256d mid = _mm256_fmadd_pd(_mm256_set1_pd(MMOPT_EXP_C3), r, _mm256_set1_pd(MMOPT_EXP_C2));
    __m256d high = _mm256_fmadd_pd(_mm256_set1_pd(MMOPT_EXP_C5), r, _mm256_set1_pd(MMOPT_EXP_C4));
    high = _mm256_fmadd_pd(_mm256_set1_pd(MMOPT_EXP_C6), r2, high);
    __m256d p = _mm256_fmadd_pd(mid, r2, low);
    p = _mm256_fmadd_pd(high, _mm256_mul_pd(r2, r2), p);
    __m256i bits = _mm256_castpd_si256(shifted);
    __m256i index = _mm256_and_si256(bits, _mm256_set1_epi64x(15));
    __m256i table = _mm256_i64gather_epi64((const long long *)mmopt_exp_table_bits, index, 8);
    __m256i scale = _mm256_add_epi64(table, _mm256_slli_epi64(bits, 48));
    return _mm256_mul_pd(p, _mm256_castsi256_pd(scale));
}

__attribute__((target("avx2,fma")))
static void mmopt_exprow_avx2(const double *c, const double *g, double shift,
                              double inv_reg, ptrdiff_t m, double *out)
{
    const __m256d vshift = _mm256_set1_pd(shift);
    const __m256d vinv = _mm256_set1_pd(inv_reg * MMOPT_EXP_UNITS);
    ptrdiff_t j = 0;
    for (; j + 4 <= m; j += 4) {
        __m256d u = _mm256_mul_pd(
            _mm256_sub_pd(_mm256_add_pd(vshift, _mm256_loadu_pd(g + j)), _mm256_loadu_pd(c + j)),
            vinv);
        _mm256_storeu_pd(out + j, mmopt_exp_avx2(u));
    }
    mmopt_exprow_scalar(c + j, g + j, shift, inv_reg, m - j, out + j);
}

__attribute__((target("avx2,fma")))
static double mmopt_expsum_avx2(const double *c, const double *g, double shift,
                                double inv_reg, ptrdiff_t m)
{
    const __m256d vshift = _mm256_set1_pd(shift);
    const __m256d vinv = _mm256_set1_pd(inv_reg * MMOPT_EXP_UNITS);
    __m256d acc[4];
    for (int k = 0; k < 4; ++k) acc[k] = _mm256_setzero_pd();
    ptrdiff_t j = 0;
    for (; j + 16 <= m; j += 16) {
        for (int k = 0; k < 4; ++k) {
            __m256d u = _mm256_mul_pd(
                _mm256_sub_pd(_mm256_add_pd(vshift, _mm256_loadu_pd(g + j + 4 * k)),
                              _mm256_loadu_pd(c + j + 4 * k)),
                vinv);
            acc[k] = _mm256_add_pd(acc[k], mmopt_exp_avx2(u));
        }
    }
    for (; j + 4 <= m; j += 4) {
        __m256d u = _mm256_mul_pd(
            _mm256_sub_pd(_mm256_add_pd(vshift, _mm256_loadu_pd(g + j)), _mm256_loadu_pd(c + j)),
            vinv);
        acc[0] = _mm256_add_pd(acc[0], mmopt_exp_avx2(u));
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]),
                                          _mm256_add_pd(acc[2], acc[3])));
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
           + mmopt_expsum_tail(c, g, shift, inv_reg, j, m);
}
#endif

/* Fused scaling-domain Sinkhorn sweep over a block of rows of a kernel K (row stride m):
 *
 *     s_i = sum_j K_ij v_j;  err += |u_i s_i - a_i|;  u_i = a_i / s_i;  acc_j += u_i K_ij
 *
 * (with omega != 1 the update of u_i is over-relaxed: u_i^(1 - omega) (a_i / s_i)^omega)
 * for each row i of the block, returning err. K v and K^T u (into acc) in one pass over K:
 * each row is read from memory once for the dot product and again from cache for the
 * update of acc, where BLAS's two matrix-vector products read K from memory twice. err is
 * the L1 row-marginal error of the plan diag(u) K diag(v) before the update of u.
 */
typedef double (*mmopt_scaling_fn)(const double *, ptrdiff_t, ptrdiff_t, const double *,
                                   const double *, double *, double *, double);

/* The same sweep on a float32 copy of K. */
typedef double (*mmopt_scaling_f32_fn)(const float *, ptrdiff_t, ptrdiff_t, const double *,
                                       const double *, double *, double *, double);

/* The same sweep for two problems (v, u, acc, omega, err each) on one block of K. */
typedef void (*mmopt_scaling2_fn)(const double *, ptrdiff_t, ptrdiff_t, const double *,
                                  const double *, const double *, double *, double *, double *,
                                  double *, double, double, double *, double *);

/* The new scaling of a row or column: the Sinkhorn update target = a_i / s_i, over-relaxed
 * by omega (u^(1 - omega) target^omega; omega = 1 is plain Sinkhorn). */
static inline double mmopt_relaxed(double old, double target, double omega)
{
    /* target == 0 (a histogram entry of zero mass): 0, the limit of old^(1 - omega) 0^omega. */
    return omega == 1.0 || target == 0.0 ? target : old * pow(target / old, omega);
}

/* The kernel's storage: K in float64, or a float32 copy of it (half the memory traffic; the
 * products and sums stay in float64). A solve sweeps the float32 copy only while its
 * marginal error is far above the copy's rounding (2^-24 relative per entry). */
static inline const void *mmopt_row(const void *K, ptrdiff_t i, ptrdiff_t m, int single)
{
    return single ? (const void *)((const float *)K + i * m)
                  : (const void *)((const double *)K + i * m);
}

static inline double mmopt_entry(const void *k, ptrdiff_t j, int single)
{
    return single ? (double)((const float *)k)[j] : ((const double *)k)[j];
}

/* The sweep for K of either storage: inlined with `single` constant, so that each storage
 * gets its own loop. */
static inline double mmopt_scaling_rows_any(const void *K, ptrdiff_t m, ptrdiff_t rows,
                                            const double *v, const double *a, double *u,
                                            double *acc, double omega, int single)
{
    double err = 0.0;
    for (ptrdiff_t i = 0; i < rows; ++i) {
        const void *k = mmopt_row(K, i, m, single);
        double s = 0.0;
        for (ptrdiff_t j = 0; j < m; ++j) s += mmopt_entry(k, j, single) * v[j];
        err += fabs(u[i] * s - a[i]);
        double w = mmopt_relaxed(u[i], a[i] / s, omega);
        u[i] = w;
        for (ptrdiff_t j = 0; j < m; ++j) acc[j] += w * mmopt_entry(k, j, single);
    }
    return err;
}

static double mmopt_scaling_rows_scalar(const double *K, ptrdiff_t m, ptrdiff_t rows,
                                        const double *v, const double *a, double *u,
                                        double *acc, double omega)
{
    return mmopt_scaling_rows_any(K, m, rows, v, a, u, acc, omega, 0);
}

static double mmopt_scaling_rows_f32_scalar(const float *K, ptrdiff_t m, ptrdiff_t rows,
                                            const double *v, const double *a, double *u,
                                            double *acc, double omega)
{
    return mmopt_scaling_rows_any(K, m, rows, v, a, u, acc, omega, 1);
}

/* The plan diag(u) K diag(v) written over a block of rows of K (row stride m), with its
 * row sums into row_sums, its column sums added into cols, and <C, P> over the block
 * returned: one pass over K and C where NumPy would take five. */
typedef double (*mmopt_plan_fn)(double *, const double *, ptrdiff_t, ptrdiff_t, const double *,
                                const double *, double *, double *);

/* Entries j0..m-1 of one row of it, adding to the row's sum and its <C, P>. */
static inline void mmopt_plan_entries(double *k, const double *c, double scale,
                                      const double *v, ptrdiff_t j, ptrdiff_t m, double *cols,
                                      double *total, double *dot)
{
    for (; j < m; ++j) {
        double p = k[j] * scale * v[j];
        k[j] = p;
        *total += p;
        cols[j] += p;
        *dot += c[j] * p;
    }
}

static double mmopt_plan_rows_scalar(double *K, const double *C, ptrdiff_t m, ptrdiff_t rows,
                                     const double *u, const double *v, double *row_sums,
                                     double *cols)
{
    double cost = 0.0;
    for (ptrdiff_t i = 0; i < rows; ++i) {
        double total = 0.0, dot = 0.0;
        mmopt_plan_entries(K + i * m, C + i * m, u[i], v, 0, m, cols, &total, &dot);
        row_sums[i] = total;
        cost += dot;
    }
    return cost;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma")))
static inline double mmopt_hsum_avx2(__m256d x)
{
    __m128d low = _mm256_castpd256_pd128(x), high = _mm256_extractf128_pd(x, 1);
    low = _mm_add_pd(low, high);
    return _mm_cvtsd_f64(_mm_add_sd(low, _mm_unpackhi_pd(low, low)));
}

/* A 4-row tile's new scalings from its dot products d (the update of u), adding the tile's
 * row errors to *err in row order. */
static inline void mmopt_tile_scalings(const double *d, const double *a, double *u,
                                       double omega, double *w, double *err)
{
    for (int r = 0; r < 4; ++r) {
        *err += fabs(u[r] * d[r] - a[r]);
        w[r] = mmopt_relaxed(u[r], a[r] / d[r], omega);
        u[r] = w[r];
    }
}

/* acc + sum_r w_r x_r over a 4-row tile (x_r: 4 entries of row r): one store of acc per
 * tile. */
__attribute__((target("avx2,fma")))
static inline __m256d mmopt_tile_update_avx2(__m256d acc, const __m256d *w, __m256d x0,
                                             __m256d x1, __m256d x2, __m256d x3)
{
    __m256d x = _mm256_fmadd_pd(w[0], x0, acc);
    __m256d y = _mm256_mul_pd(w[1], x1);
    x = _mm256_fmadd_pd(w[2], x2, x);
    y = _mm256_fmadd_pd(w[3], x3, y);
    return _mm256_add_pd(x, y);
}

/* The same for the entries j of acc beyond the last multiple of 4. */
static inline void mmopt_tile_update_tail(double *acc, const double *w, const void *k0,
                                          const void *k1, const void *k2, const void *k3,
                                          ptrdiff_t j, ptrdiff_t m, int single)
{
    for (; j < m; ++j)
        acc[j] += (w[0] * mmopt_entry(k0, j, single) + w[1] * mmopt_entry(k1, j, single)) +
                  (w[2] * mmopt_entry(k2, j, single) + w[3] * mmopt_entry(k3, j, single));
}

/* 4 entries of a row from j on, as float64. */
__attribute__((target("avx2,fma"), always_inline))
static inline __m256d mmopt_load4(const void *k, ptrdiff_t j, int single)
{
    return single ? _mm256_cvtps_pd(_mm_loadu_ps((const float *)k + j))
                  : _mm256_loadu_pd((const double *)k + j);
}

/* Blocks of 4 rows: the dot products share each load of v, the update of acc loads and
 * stores acc once per 4 rows (the store port, not the arithmetic, bounds a plain axpy). */
__attribute__((target("avx2,fma"), always_inline))
static inline double mmopt_scaling_rows_avx2_any(const void *K, ptrdiff_t m, ptrdiff_t rows,
                                                 const double *v, const double *a, double *u,
                                                 double *acc, double omega, int single)
{
    double err = 0.0;
    ptrdiff_t i = 0;
    for (; i + 4 <= rows; i += 4) {
        const void *k0 = mmopt_row(K, i, m, single), *k1 = mmopt_row(K, i + 1, m, single);
        const void *k2 = mmopt_row(K, i + 2, m, single), *k3 = mmopt_row(K, i + 3, m, single);
        __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
        __m256d s2 = _mm256_setzero_pd(), s3 = _mm256_setzero_pd();
        __m256d t0 = _mm256_setzero_pd(), t1 = _mm256_setzero_pd();
        __m256d t2 = _mm256_setzero_pd(), t3 = _mm256_setzero_pd();
        ptrdiff_t j = 0;
        for (; j + 8 <= m; j += 8) {
            __m256d va = _mm256_loadu_pd(v + j), vb = _mm256_loadu_pd(v + j + 4);
            s0 = _mm256_fmadd_pd(mmopt_load4(k0, j, single), va, s0);
            s1 = _mm256_fmadd_pd(mmopt_load4(k1, j, single), va, s1);
            s2 = _mm256_fmadd_pd(mmopt_load4(k2, j, single), va, s2);
            s3 = _mm256_fmadd_pd(mmopt_load4(k3, j, single), va, s3);
            t0 = _mm256_fmadd_pd(mmopt_load4(k0, j + 4, single), vb, t0);
            t1 = _mm256_fmadd_pd(mmopt_load4(k1, j + 4, single), vb, t1);
            t2 = _mm256_fmadd_pd(mmopt_load4(k2, j + 4, single), vb, t2);
            t3 = _mm256_fmadd_pd(mmopt_load4(k3, j + 4, single), vb, t3);
        }
        double d[4] = {mmopt_hsum_avx2(_mm256_add_pd(s0, t0)),
                       mmopt_hsum_avx2(_mm256_add_pd(s1, t1)),
                       mmopt_hsum_avx2(_mm256_add_pd(s2, t2)),
                       mmopt_hsum_avx2(_mm256_add_pd(s3, t3))};
        for (; j < m; ++j) {
            d[0] += mmopt_entry(k0, j, single) * v[j];
            d[1] += mmopt_entry(k1, j, single) * v[j];
            d[2] += mmopt_entry(k2, j, single) * v[j];
            d[3] += mmopt_entry(k3, j, single) * v[j];
        }
        double w[4];
        mmopt_tile_scalings(d, a + i, u + i, omega, w, &err);
        const __m256d wv[4] = {_mm256_set1_pd(w[0]), _mm256_set1_pd(w[1]),
                               _mm256_set1_pd(w[2]), _mm256_set1_pd(w[3])};
        j = 0;
        for (; j + 4 <= m; j += 4)
            _mm256_storeu_pd(acc + j, mmopt_tile_update_avx2(
                _mm256_loadu_pd(acc + j), wv, mmopt_load4(k0, j, single),
                mmopt_load4(k1, j, single), mmopt_load4(k2, j, single),
                mmopt_load4(k3, j, single)));
        mmopt_tile_update_tail(acc, w, k0, k1, k2, k3, j, m, single);
    }
    if (i < rows)
        err += mmopt_scaling_rows_any(mmopt_row(K, i, m, single), m, rows - i, v, a + i, u + i,
                                      acc, omega, single);
    return err;
}

__attribute__((target("avx2,fma")))
static double mmopt_scaling_rows_avx2(const double *K, ptrdiff_t m, ptrdiff_t rows,
                                      const double *v, const double *a, double *u,
                                      double *acc, double omega)
{
    return mmopt_scaling_rows_avx2_any(K, m, rows, v, a, u, acc, omega, 0);
}

__attribute__((target("avx2,fma")))
static double mmopt_scaling_rows_f32_avx2(const float *K, ptrdiff_t m, ptrdiff_t rows,
                                          const double *v, const double *a, double *u,
                                          double *acc, double omega)
{
    return mmopt_scaling_rows_avx2_any(K, m, rows, v, a, u, acc, omega, 1);
}

__attribute__((target("avx2,fma")))
static double mmopt_plan_rows_avx2(double *K, const double *C, ptrdiff_t m, ptrdiff_t rows,
                                   const double *u, const double *v, double *row_sums,
                                   double *cols)
{
    double cost = 0.0;
    for (ptrdiff_t i = 0; i < rows; ++i) {
        double *k = K + i * m;
        const double *c = C + i * m;
        const __m256d scale = _mm256_set1_pd(u[i]);
        __m256d total = _mm256_setzero_pd(), dot = _mm256_setzero_pd();
        ptrdiff_t j = 0;
        for (; j + 4 <= m; j += 4) {
            __m256d p = _mm256_mul_pd(_mm256_mul_pd(_mm256_loadu_pd(k + j), scale),
                                      _mm256_loadu_pd(v + j));
            _mm256_storeu_pd(k + j, p);
            total = _mm256_add_pd(total, p);
            _mm256_storeu_pd(cols + j, _mm256_add_pd(_mm256_loadu_pd(cols + j), p));
            dot = _mm256_fmadd_pd(_mm256_loadu_pd(c + j), p, dot);
        }
        double row_total = mmopt_hsum_avx2(total), row_dot = mmopt_hsum_avx2(dot);
        mmopt_plan_entries(k, c, u[i], v, j, m, cols, &row_total, &row_dot);
        row_sums[i] = row_total;
        cost += row_dot;
    }
    return cost;
}
#endif

/* Two problems, one sweep each (the paths without a paired variant). */
static void mmopt_scaling_rows2_each(const double *K, ptrdiff_t m, ptrdiff_t rows,
                                     const double *v0, const double *v1, const double *a,
                                     double *u0, double *u1, double *acc0, double *acc1,
                                     double omega0, double omega1, double *err0, double *err1)
{
    *err0 = mmopt_scaling_rows_scalar(K, m, rows, v0, a, u0, acc0, omega0);
    *err1 = mmopt_scaling_rows_scalar(K, m, rows, v1, a, u1, acc1, omega1);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* mmopt_scaling_rows_avx2 for two problems at once, each with the same operations in the
 * same order as its own sweep (bit-identical results): each loaded vector of K serves both
 * problems' dot products, and again both updates of acc. One problem's sweep reads every
 * entry of K twice from L2 (a 4-row tile, v and acc do not stay in L1 together), and that
 * traffic, not the arithmetic, bounds it; two problems share it. The dot products take 2
 * rows at a time (8 accumulators, 4 vectors of K, 2 of v: the 16 AVX2 registers). */
__attribute__((target("avx2,fma")))
static void mmopt_scaling_rows2_avx2(const double *K, ptrdiff_t m, ptrdiff_t rows,
                                     const double *v0, const double *v1, const double *a,
                                     double *u0, double *u1, double *acc0, double *acc1,
                                     double omega0, double omega1, double *err0, double *err1)
{
    double e0 = 0.0, e1 = 0.0;
    ptrdiff_t i = 0;
    for (; i + 4 <= rows; i += 4) {
        const double *k0 = K + i * m, *k1 = k0 + m, *k2 = k1 + m, *k3 = k2 + m;
        const double *tile[4] = {k0, k1, k2, k3};
        double d0[4], d1[4];
        for (int h = 0; h < 4; h += 2) {
            const double *ka = tile[h], *kb = tile[h + 1];
            __m256d sa0 = _mm256_setzero_pd(), ta0 = _mm256_setzero_pd();
            __m256d sb0 = _mm256_setzero_pd(), tb0 = _mm256_setzero_pd();
            __m256d sa1 = _mm256_setzero_pd(), ta1 = _mm256_setzero_pd();
            __m256d sb1 = _mm256_setzero_pd(), tb1 = _mm256_setzero_pd();
            ptrdiff_t j = 0;
            for (; j + 8 <= m; j += 8) {
                __m256d xa = _mm256_loadu_pd(ka + j), ya = _mm256_loadu_pd(ka + j + 4);
                __m256d xb = _mm256_loadu_pd(kb + j), yb = _mm256_loadu_pd(kb + j + 4);
                __m256d p = _mm256_loadu_pd(v0 + j), q = _mm256_loadu_pd(v0 + j + 4);
                sa0 = _mm256_fmadd_pd(xa, p, sa0);
                ta0 = _mm256_fmadd_pd(ya, q, ta0);
                sb0 = _mm256_fmadd_pd(xb, p, sb0);
                tb0 = _mm256_fmadd_pd(yb, q, tb0);
                p = _mm256_loadu_pd(v1 + j);
                q = _mm256_loadu_pd(v1 + j + 4);
                sa1 = _mm256_fmadd_pd(xa, p, sa1);
                ta1 = _mm256_fmadd_pd(ya, q, ta1);
                sb1 = _mm256_fmadd_pd(xb, p, sb1);
                tb1 = _mm256_fmadd_pd(yb, q, tb1);
            }
            d0[h] = mmopt_hsum_avx2(_mm256_add_pd(sa0, ta0));
            d0[h + 1] = mmopt_hsum_avx2(_mm256_add_pd(sb0, tb0));
            d1[h] = mmopt_hsum_avx2(_mm256_add_pd(sa1, ta1));
            d1[h + 1] = mmopt_hsum_avx2(_mm256_add_pd(sb1, tb1));
            for (; j < m; ++j) {
                d0[h] += ka[j] * v0[j];
                d0[h + 1] += kb[j] * v0[j];
                d1[h] += ka[j] * v1[j];
                d1[h + 1] += kb[j] * v1[j];
            }
        }
        double w0[4], w1[4];
        mmopt_tile_scalings(d0, a + i, u0 + i, omega0, w0, &e0);
        mmopt_tile_scalings(d1, a + i, u1 + i, omega1, w1, &e1);
        const __m256d wv0[4] = {_mm256_set1_pd(w0[0]), _mm256_set1_pd(w0[1]),
                                _mm256_set1_pd(w0[2]), _mm256_set1_pd(w0[3])};
        const __m256d wv1[4] = {_mm256_set1_pd(w1[0]), _mm256_set1_pd(w1[1]),
                                _mm256_set1_pd(w1[2]), _mm256_set1_pd(w1[3])};
        ptrdiff_t j = 0;
        for (; j + 4 <= m; j += 4) {
            __m256d x0 = _mm256_loadu_pd(k0 + j), x1 = _mm256_loadu_pd(k1 + j);
            __m256d x2 = _mm256_loadu_pd(k2 + j), x3 = _mm256_loadu_pd(k3 + j);
            _mm256_storeu_pd(acc0 + j, mmopt_tile_update_avx2(
                _mm256_loadu_pd(acc0 + j), wv0, x0, x1, x2, x3));
            _mm256_storeu_pd(acc1 + j, mmopt_tile_update_avx2(
                _mm256_loadu_pd(acc1 + j), wv1, x0, x1, x2, x3));
        }
        mmopt_tile_update_tail(acc0, w0, k0, k1, k2, k3, j, m, 0);
        mmopt_tile_update_tail(acc1, w1, k0, k1, k2, k3, j, m, 0);
    }
    if (i < rows) {
        e0 += mmopt_scaling_rows_scalar(K + i * m, m, rows - i, v0, a + i, u0 + i, acc0, omega0);
        e1 += mmopt_scaling_rows_scalar(K + i * m, m, rows - i, v1, a + i, u1 + i, acc1, omega1);
    }
    *err0 = e0;
    *err1 = e1;
}
#endif

/* Paths by name: 0 scalar, 1 SSE2, 2 AVX2, 3 AVX-512. */
static const char *mmopt_expsum_names[4] = {"scalar", "sse2", "avx2", "avx512"};
static mmopt_expsum_fn mmopt_expsum = mmopt_expsum_scalar;
static mmopt_exprow_fn mmopt_exprow = mmopt_exprow_scalar;
static mmopt_scaling_fn mmopt_scaling_rows = mmopt_scaling_rows_scalar;
static mmopt_scaling_f32_fn mmopt_scaling_rows_f32 = mmopt_scaling_rows_f32_scalar;
static mmopt_plan_fn mmopt_plan_rows = mmopt_plan_rows_scalar;
static mmopt_scaling2_fn mmopt_scaling_rows2 = mmopt_scaling_rows2_each;
static int mmopt_expsum_path = -1;

/* y = x rounded to float32, entries below float32's smallest normal number set to 0
 * (subnormal operands can take a slow path in the float32 sweep). The entries are zeroed
 * in float64 before the conversion: converting them would itself give subnormal floats,
 * which cost a microcode assist each on some CPUs (10x the whole copy, measured). */
#define MMOPT_FLOAT32_TINY 1.1754943508222875e-38
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2")))
static void mmopt_to_single_avx2(const double *x, float *y, ptrdiff_t m)
{
    const __m256d tiny = _mm256_set1_pd(MMOPT_FLOAT32_TINY);
    ptrdiff_t j = 0;
    for (; j + 4 <= m; j += 4) {
        __m256d value = _mm256_loadu_pd(x + j);
        value = _mm256_and_pd(value, _mm256_cmp_pd(value, tiny, _CMP_GE_OQ));
        _mm_storeu_ps(y + j, _mm256_cvtpd_ps(value));
    }
    for (; j < m; ++j) y[j] = x[j] >= MMOPT_FLOAT32_TINY ? (float)x[j] : 0.0f;
}
#endif

static inline void mmopt_to_single(const double *x, float *y, ptrdiff_t m)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (mmopt_expsum_path >= 2) {
        mmopt_to_single_avx2(x, y, m);
        return;
    }
#endif
    for (ptrdiff_t j = 0; j < m; ++j) y[j] = x[j] >= MMOPT_FLOAT32_TINY ? (float)x[j] : 0.0f;
}

/* 1 when path `which` can run on this build and CPU. */
static int mmopt_expsum_available(int which)
{
    if (which == 0) return 1;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (which == 3)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
    if (which == 2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#if defined(MMOPT_HAVE_LIBMVEC)
    if (which == 1) return 1;
#endif
#endif
    return 0;
}

/* Select path `which` (-1: the fastest available). Returns the path in use. */
static int mmopt_expsum_select(int which)
{
    if (which < 0) {
        which = 3;
        while (!mmopt_expsum_available(which)) --which;
    } else if (which > 3 || !mmopt_expsum_available(which)) {
        return -1;
    }
    mmopt_expsum = mmopt_expsum_scalar;
    mmopt_exprow = mmopt_exprow_scalar;
    mmopt_scaling_rows = mmopt_scaling_rows_scalar;
    mmopt_scaling_rows_f32 = mmopt_scaling_rows_f32_scalar;
    mmopt_plan_rows = mmopt_plan_rows_scalar;
    mmopt_scaling_rows2 = mmopt_scaling_rows2_each;
#if defined(__x86_64__) && defined(__GNUC__)
    mmopt_exp_table_init();
    /* The fused scaling sweep has no AVX-512 variant: it is bound by memory, not arithmetic. */
    if (which >= 2) {
        mmopt_scaling_rows = mmopt_scaling_rows_avx2;
        mmopt_scaling_rows_f32 = mmopt_scaling_rows_f32_avx2;
        mmopt_plan_rows = mmopt_plan_rows_avx2;
        mmopt_scaling_rows2 = mmopt_scaling_rows2_avx2;
    }
    if (which == 3) { mmopt_expsum = mmopt_expsum_avx512; mmopt_exprow = mmopt_exprow_avx512; }
    if (which == 2) { mmopt_expsum = mmopt_expsum_avx2; mmopt_exprow = mmopt_exprow_avx2; }
#if defined(MMOPT_HAVE_LIBMVEC)
    if (which == 1) { mmopt_expsum = mmopt_expsum_sse2; mmopt_exprow = mmopt_exprow_sse2; }
#endif
#endif
    mmopt_expsum_path = which;
    return which;
}

#endif /* MMOPT_EXPSUM_H */
