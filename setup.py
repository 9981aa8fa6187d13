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

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
    """
)


def _compiler_has_openmp(compiler) -> bool:
    """Compile and link a tiny OpenMP program with the compiler that will build the kernels."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe_openmp.c"
        source.write_text(OPENMP_PROBE)
        try:
            objects = compiler.compile(
                [str(source)], output_dir=tmp, extra_postargs=["-fopenmp"]
            )
            compiler.link_executable(
                objects, "probe_openmp", output_dir=tmp, extra_postargs=["-fopenmp"]
            )
        except Exception:  # any compile or link error means: no usable OpenMP
            return False
    return True


class BuildExtWithOpenMP(build_ext):
    """Add ``-fopenmp`` when the compiler in use supports it; build serially otherwise."""

    def build_extensions(self):
        use_openmp = not NO_OPENMP and _compiler_has_openmp(self.compiler)
        if not use_openmp:
            print("mmopt: building the kernels without OpenMP (prange runs serially)")
        for ext in self.extensions:
            if use_openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        super().build_extensions()


def _extensions():
    # Fresh lists per extension: build_ext appends the OpenMP flags to each one.
    modules = [
        Extension(
            f"mmopt_ext.{Path(path).stem}",
            [path],
            include_dirs=[np.get_include()],
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
