"""Whether the kernels were built with OpenMP, and how many threads a parallel loop may use."""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define MMOPT_OPENMP_ENABLED 1
    #else
    #define MMOPT_OPENMP_ENABLED 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    """
    int MMOPT_OPENMP_ENABLED
    int omp_get_max_threads() noexcept nogil


def openmp_enabled():
    """Return True when the extensions were compiled with OpenMP support."""
    return bool(MMOPT_OPENMP_ENABLED)


def openmp_max_threads():
    """Return OpenMP's default thread count (1 for a serial build)."""
    return omp_get_max_threads()
