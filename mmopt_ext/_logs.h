/* Natural logarithms of a vector: libmvec's AVX2 log where setup.py linked libmvec and the
 * CPU has AVX2, else the C library's, one entry at a time. */
#ifndef MMOPT_LOGS_H
#define MMOPT_LOGS_H

#include <math.h>
#include <stddef.h>

typedef void (*mmopt_logs_fn)(const double *, ptrdiff_t, double *);

static void mmopt_logs_scalar(const double *x, ptrdiff_t m, double *out)
{
    for (ptrdiff_t i = 0; i < m; ++i) out[i] = log(x[i]);
}

#if defined(__x86_64__) && defined(__GNUC__) && defined(MMOPT_HAVE_LIBMVEC)
#include <immintrin.h>
/* glibc's libmvec, x86-64 vector ABI name of its AVX2 log. */
__m256d _ZGVdN4v_log(__m256d);

__attribute__((target("avx2")))
static void mmopt_logs_avx2(const double *x, ptrdiff_t m, double *out)
{
    ptrdiff_t i = 0;
    for (; i + 4 <= m; i += 4) _mm256_storeu_pd(out + i, _ZGVdN4v_log(_mm256_loadu_pd(x + i)));
    for (; i < m; ++i) out[i] = log(x[i]);
}
#endif

static mmopt_logs_fn mmopt_logs = mmopt_logs_scalar;

/* Select the vector path when available (`vector` nonzero) or the scalar one; returns 1 when
 * the vector path is in use. */
static int mmopt_logs_select(int vector)
{
    mmopt_logs = mmopt_logs_scalar;
#if defined(__x86_64__) && defined(__GNUC__) && defined(MMOPT_HAVE_LIBMVEC)
    __builtin_cpu_init();
    if (vector && __builtin_cpu_supports("avx2")) {
        mmopt_logs = mmopt_logs_avx2;
        return 1;
    }
#endif
    return 0;
}

#endif /* MMOPT_LOGS_H */
