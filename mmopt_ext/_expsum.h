/* Sums of exponentials over one row of a cost matrix, vectorized.
 *
 * expsum(c, g, shift, inv_reg, m) = sum_j exp(clamp((shift + g[j] - c[j]) * inv_reg))
 * exprow(c, g, shift, inv_reg, m, out): out[j] = exp(clamp((shift + g[j] - c[j]) * inv_reg))
 *
 * with the exponent clamped to [-700, 700]: exp stays a normal double (no subnormal slow
 * path, no overflow) and the vector exp never leaves its fast range. A clamped term at the
 * bottom adds at most exp(-700) ~ 1e-304 to the sum; callers treat sums outside
 * [MMOPT_EXPSUM_TINY, MMOPT_EXPSUM_HUGE] as unreliable and recompute them exactly.
 *
 * Where glibc's vector math library (libmvec) is available (setup.py probes it and defines
 * MMOPT_HAVE_LIBMVEC), the exponentials go through its SIMD exp (AVX-512, AVX2 or SSE2,
 * chosen once from the CPU); otherwise through the C library's scalar exp. The choice can be
 * forced for testing with mmopt_expsum_select().
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

#if defined(MMOPT_HAVE_LIBMVEC) && defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* glibc's libmvec, x86-64 vector ABI names: b = SSE2, d = AVX2, e = AVX-512. */
__m128d _ZGVbN2v_exp(__m128d);
__attribute__((target("avx2"))) __m256d _ZGVdN4v_exp(__m256d);
__attribute__((target("avx512f"))) __m512d _ZGVeN8v_exp(__m512d);

static double mmopt_expsum_tail(const double *c, const double *g, double shift,
                                double inv_reg, ptrdiff_t start, ptrdiff_t m)
{
    double total = 0.0;
    for (ptrdiff_t j = start; j < m; ++j)
        total += exp(mmopt_clamp_exponent((shift + g[j] - c[j]) * inv_reg));
    return total;
}

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
        acc0 = _mm_add_pd(acc0, _ZGVbN2v_exp(_mm_min_pd(_mm_max_pd(t0, lo), hi)));
        acc1 = _mm_add_pd(acc1, _ZGVbN2v_exp(_mm_min_pd(_mm_max_pd(t1, lo), hi)));
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
        _mm_storeu_pd(out + j, _ZGVbN2v_exp(_mm_min_pd(_mm_max_pd(t, lo), hi)));
    }
    mmopt_exprow_scalar(c + j, g + j, shift, inv_reg, m - j, out + j);
}

__attribute__((target("avx2")))
static void mmopt_exprow_avx2(const double *c, const double *g, double shift,
                              double inv_reg, ptrdiff_t m, double *out)
{
    const __m256d vshift = _mm256_set1_pd(shift), vinv = _mm256_set1_pd(inv_reg);
    const __m256d lo = _mm256_set1_pd(-MMOPT_EXP_CLAMP), hi = _mm256_set1_pd(MMOPT_EXP_CLAMP);
    ptrdiff_t j = 0;
    for (; j + 4 <= m; j += 4) {
        __m256d t = _mm256_mul_pd(
            _mm256_sub_pd(_mm256_add_pd(vshift, _mm256_loadu_pd(g + j)), _mm256_loadu_pd(c + j)),
            vinv);
        _mm256_storeu_pd(out + j, _ZGVdN4v_exp(_mm256_min_pd(_mm256_max_pd(t, lo), hi)));
    }
    mmopt_exprow_scalar(c + j, g + j, shift, inv_reg, m - j, out + j);
}

__attribute__((target("avx512f")))
static void mmopt_exprow_avx512(const double *c, const double *g, double shift,
                                double inv_reg, ptrdiff_t m, double *out)
{
    const __m512d vshift = _mm512_set1_pd(shift), vinv = _mm512_set1_pd(inv_reg);
    const __m512d lo = _mm512_set1_pd(-MMOPT_EXP_CLAMP), hi = _mm512_set1_pd(MMOPT_EXP_CLAMP);
    ptrdiff_t j = 0;
    for (; j + 8 <= m; j += 8) {
        __m512d t = _mm512_mul_pd(
            _mm512_sub_pd(_mm512_add_pd(vshift, _mm512_loadu_pd(g + j)), _mm512_loadu_pd(c + j)),
            vinv);
        _mm512_storeu_pd(out + j, _ZGVeN8v_exp(_mm512_min_pd(_mm512_max_pd(t, lo), hi)));
    }
    mmopt_exprow_scalar(c + j, g + j, shift, inv_reg, m - j, out + j);
}

__attribute__((target("avx2")))
static double mmopt_expsum_avx2(const double *c, const double *g, double shift,
                                double inv_reg, ptrdiff_t m)
{
    const __m256d vshift = _mm256_set1_pd(shift), vinv = _mm256_set1_pd(inv_reg);
    const __m256d lo = _mm256_set1_pd(-MMOPT_EXP_CLAMP), hi = _mm256_set1_pd(MMOPT_EXP_CLAMP);
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    ptrdiff_t j = 0;
    for (; j + 8 <= m; j += 8) {
        __m256d t0 = _mm256_mul_pd(
            _mm256_sub_pd(_mm256_add_pd(vshift, _mm256_loadu_pd(g + j)), _mm256_loadu_pd(c + j)),
            vinv);
        __m256d t1 = _mm256_mul_pd(
            _mm256_sub_pd(_mm256_add_pd(vshift, _mm256_loadu_pd(g + j + 4)),
                          _mm256_loadu_pd(c + j + 4)),
            vinv);
        acc0 = _mm256_add_pd(acc0, _ZGVdN4v_exp(_mm256_min_pd(_mm256_max_pd(t0, lo), hi)));
        acc1 = _mm256_add_pd(acc1, _ZGVdN4v_exp(_mm256_min_pd(_mm256_max_pd(t1, lo), hi)));
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(acc0, acc1));
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
           + mmopt_expsum_tail(c, g, shift, inv_reg, j, m);
}

__attribute__((target("avx512f")))
static double mmopt_expsum_avx512(const double *c, const double *g, double shift,
                                  double inv_reg, ptrdiff_t m)
{
    const __m512d vshift = _mm512_set1_pd(shift), vinv = _mm512_set1_pd(inv_reg);
    const __m512d lo = _mm512_set1_pd(-MMOPT_EXP_CLAMP), hi = _mm512_set1_pd(MMOPT_EXP_CLAMP);
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    ptrdiff_t j = 0;
    for (; j + 16 <= m; j += 16) {
        __m512d t0 = _mm512_mul_pd(
            _mm512_sub_pd(_mm512_add_pd(vshift, _mm512_loadu_pd(g + j)), _mm512_loadu_pd(c + j)),
            vinv);
        __m512d t1 = _mm512_mul_pd(
            _mm512_sub_pd(_mm512_add_pd(vshift, _mm512_loadu_pd(g + j + 8)),
                          _mm512_loadu_pd(c + j + 8)),
            vinv);
        acc0 = _mm512_add_pd(acc0, _ZGVeN8v_exp(_mm512_min_pd(_mm512_max_pd(t0, lo), hi)));
        acc1 = _mm512_add_pd(acc1, _ZGVeN8v_exp(_mm512_min_pd(_mm512_max_pd(t1, lo), hi)));
    }
    double total = _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
    return total + mmopt_expsum_tail(c, g, shift, inv_reg, j, m);
}
#endif

/* Paths by name: 0 scalar, 1 SSE2, 2 AVX2, 3 AVX-512. */
static const char *mmopt_expsum_names[4] = {"scalar", "sse2", "avx2", "avx512"};
static mmopt_expsum_fn mmopt_expsum = mmopt_expsum_scalar;
static mmopt_exprow_fn mmopt_exprow = mmopt_exprow_scalar;
static int mmopt_expsum_path = -1;

/* 1 when path `which` can run on this build and CPU. */
static int mmopt_expsum_available(int which)
{
    if (which == 0) return 1;
#if defined(MMOPT_HAVE_LIBMVEC) && defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (which == 1) return 1;
    if (which == 2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (which == 3) return __builtin_cpu_supports("avx512f");
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
#if defined(MMOPT_HAVE_LIBMVEC) && defined(__x86_64__) && defined(__GNUC__)
    if (which == 1) { mmopt_expsum = mmopt_expsum_sse2; mmopt_exprow = mmopt_exprow_sse2; }
    else if (which == 2) { mmopt_expsum = mmopt_expsum_avx2; mmopt_exprow = mmopt_exprow_avx2; }
    else if (which == 3) {
        mmopt_expsum = mmopt_expsum_avx512;
        mmopt_exprow = mmopt_exprow_avx512;
    } else { mmopt_expsum = mmopt_expsum_scalar; mmopt_exprow = mmopt_exprow_scalar; }
#else
    mmopt_expsum = mmopt_expsum_scalar;
    mmopt_exprow = mmopt_exprow_scalar;
#endif
    mmopt_expsum_path = which;
    return which;
}

#endif /* MMOPT_EXPSUM_H */
