import os
import subprocess
import sys

import pytest

from mmopt import openmp_enabled
from mmopt._core.threads import MIN_PARALLEL_SIZE, effective_n_threads, single_threaded


def test_effective_n_threads_rules():
    assert effective_n_threads(1) == 1
    assert effective_n_threads(-1) >= 1
    assert effective_n_threads(None) >= 1
    with single_threaded():
        assert effective_n_threads(None) == 1
    with pytest.raises(ValueError, match="n_threads"):
        effective_n_threads(0)
    with pytest.raises(TypeError, match="n_threads"):
        effective_n_threads(1.5)


def test_single_threaded_limits_every_pool_and_restores_it():
    from mmopt._core.threads import _threadpool_controller

    # The pools of the libraries loaded when the controller was made (NumPy's and SciPy's
    # BLAS, the OpenMP runtimes); one loaded later by another test in this process (e.g.
    # torch's) is not the controller's and is not checked.
    def pools():
        return {lib.filepath: lib.num_threads
                for lib in _threadpool_controller().lib_controllers}

    before = pools()
    for _ in range(2):  # the second time with the controller made by the first
        with single_threaded():
            inside = pools()
            assert effective_n_threads(None) == 1
        assert inside and set(inside.values()) == {1}
        assert pools() == before


@pytest.mark.skipif(not openmp_enabled(), reason="built without OpenMP")
def test_small_passes_run_on_one_thread():
    assert effective_n_threads(2, size=MIN_PARALLEL_SIZE - 1) == 1
    assert effective_n_threads(2, size=MIN_PARALLEL_SIZE) == 2
    assert effective_n_threads(None, size=10) == 1
    with pytest.raises(ValueError, match="n_threads"):
        effective_n_threads(0, size=10)  # still validated when the size decides


def test_small_ot_problems_resolve_one_thread():
    import numpy as np

    from mmopt.ot import progressive_partial_ot, unbalanced_sinkhorn

    rng = np.random.default_rng(0)
    C = rng.random((40, 30))
    a, b = np.full(40, 1 / 40), np.full(30, 1 / 30)
    one = unbalanced_sinkhorn(a, b, C, 0.1, 1.0, n_threads=1)
    two = unbalanced_sinkhorn(a, b, C, 0.1, 1.0, n_threads=2)
    np.testing.assert_array_equal(one.plan, two.plan)  # the same single-threaded passes
    assert progressive_partial_ot(C, rho=0.5, n_threads=2).status == 0


def test_openmp_build_flag_matches_environment():
    # The build probes the compiler; unless forced serial, gcc here has OpenMP.
    forced_serial = os.environ.get("MMOPT_NO_OPENMP") == "1"
    assert openmp_enabled() is (not forced_serial)


@pytest.mark.skipif(not openmp_enabled(), reason="serial build")
def test_omp_num_threads_is_honoured():
    code = (
        "from mmopt._core.threads import effective_n_threads; print(effective_n_threads())"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "1", out.stderr
