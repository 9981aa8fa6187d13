import os
import subprocess
import sys

import pytest

from mmopt import openmp_enabled
from mmopt._core.threads import effective_n_threads, single_threaded


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
