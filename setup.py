"""Build the Cython kernels in ``mmopt_ext/``; all metadata lives in pyproject.toml."""

import glob
import os
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("MMOPT_CYTHON_DEBUG", "0") == "1"
NO_OPENMP = os.environ.get("MMOPT_NO_OPENMP", "0") == "1"
NO_LIBMVEC = os.environ.get("MMOPT_NO_LIBMVEC", "0") == "1"
# Kernels that include mmopt_ext/_expsum.h (libmvec gives them an SSE2 exp for CPUs without
# AVX2; their AVX2/AVX-512 exp is inline).
SIMD_EXP_MODULES = {
    "mmopt_ext._sinkhorn", "mmopt_ext._pointcloud", "mmopt_ext._gauss_grid",
    "mmopt_ext._cloud_gemm", "mmopt_ext._moe",
}

LIBMVEC_PROBE = textwrap.dedent(
    """
    #include <emmintrin.h>
    __m128d _ZGVbN2v_exp(__m128d);
    int main(void) {
        double out[2];
        _mm_storeu_pd(out, _ZGVbN2v_exp(_mm_set1_pd(0.0)));
        return out[0] == 1.0 ? 0 : 1;
    }
    """
)

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
    """
)


def _compiles_and_links(compiler, program, name, compile_args=(), link_args=()) -> bool:
    """Compile and link a tiny program with the compiler that will build the kernels."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"probe_{name}.c"
        source.write_text(program)
        try:
            objects = compiler.compile(
                [str(source)], output_dir=tmp, extra_postargs=list(compile_args)
            )
            compiler.link_executable(
                objects, f"probe_{name}", output_dir=tmp, extra_postargs=list(link_args)
            )
        except Exception:  # any compile or link error means: not usable here
            return False
    return True


class BuildExtWithOpenMP(build_ext):
    """Add ``-fopenmp`` when the compiler in use supports it; build serially otherwise.

    Also links glibc's vector math library (libmvec) into the kernels that use SIMD ``exp``
    (``_expsum.h``; its SSE2 ``exp`` serves CPUs without AVX2) when a probe program using it
    compiles and links.
    """

    def build_extensions(self):
        use_openmp = not NO_OPENMP and _compiles_and_links(
            self.compiler, OPENMP_PROBE, "openmp", ["-fopenmp"], ["-fopenmp"]
        )
        if not use_openmp:
            print("mmopt: building the kernels without OpenMP (prange runs serially)")
        use_libmvec = not NO_LIBMVEC and _compiles_and_links(
            self.compiler, LIBMVEC_PROBE, "libmvec", (), ["-lmvec", "-lm"]
        )
        if not use_libmvec:
            print("mmopt: no libmvec; CPUs without AVX2 get scalar exp in the Sinkhorn kernel")
        for ext in self.extensions:
            if use_openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
            if use_libmvec and ext.name in SIMD_EXP_MODULES:
                ext.define_macros.append(("MMOPT_HAVE_LIBMVEC", "1"))
                ext.extra_link_args.extend(["-lmvec", "-lm"])
        super().build_extensions()


def _extensions():
    # Fresh lists per extension: build_ext appends the OpenMP flags to each one.
    modules = [
        Extension(
            f"mmopt_ext.{Path(path).stem}",
            [path],
            include_dirs=[np.get_include(), "mmopt_ext"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=["-O3"],
        )
        for path in sorted(glob.glob("mmopt_ext/*.pyx"))
    ]
    # Cython's shared utility module: one copy of the memoryview machinery for all kernels.
    modules.append(Extension("mmopt_ext._cyutility", []))
    return cythonize(
        modules,
        compiler_directives={
            "language_level": 3,
            "boundscheck": DEBUG,
            "initializedcheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
            "nonecheck": False,
        },
        shared_utility_qualified_name="mmopt_ext._cyutility",
        annotate=DEBUG,
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExtWithOpenMP})
