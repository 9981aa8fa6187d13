"""scipy's L-BFGS-B driven one iteration at a time."""

import numpy as np
import pytest
from scipy.optimize import minimize, rosen, rosen_der

from mmopt._core.lbfgs import LBFGSBSteps, LBFGSBStopped


def _rosen(x):
    return rosen(x), rosen_der(x)


def test_iterates_are_scipys():
    x0 = np.array([-1.2, 1.0, 0.5, -0.3])
    seen = []
    minimize(_rosen, x0, jac=True, method="L-BFGS-B",
             callback=lambda intermediate_result: seen.append(intermediate_result.x.copy()),
             options={"maxiter": 25, "maxcor": 7, "ftol": 0.0, "gtol": 0.0})
    steps = LBFGSBSteps(_rosen, x0, memory=7)
    ours = [steps.step() for _ in range(25)]
    steps.close()
    np.testing.assert_allclose([s.x for s in ours], seen, rtol=0, atol=0)
    for step in ours:
        value, grad = _rosen(step.x)
        assert step.fun == value
        np.testing.assert_array_equal(step.grad, grad)
    assert [s.nfev for s in ours] == sorted(s.nfev for s in ours)


def test_converged_problem_stops_by_itself_and_close_is_idempotent():
    steps = LBFGSBSteps(lambda x: (float(x @ x), 2 * x), np.ones(3), memory=3)
    with pytest.raises(LBFGSBStopped):
        for _ in range(100):
            steps.step()
    steps.close()
    steps.close()
    with pytest.raises(LBFGSBStopped):
        steps.step()


def test_errors_in_the_function_reach_the_caller():
    def failing(x):
        raise RuntimeError("boom")

    steps = LBFGSBSteps(failing, np.zeros(2))
    with pytest.raises(RuntimeError, match="boom"):
        steps.step()
    steps.close()


def test_close_before_and_during_iterations():
    LBFGSBSteps(_rosen, np.zeros(2)).close()  # never started
    steps = LBFGSBSteps(_rosen, np.zeros(2))
    steps.step()
    steps.close()
    assert not steps._thread.is_alive()


def test_an_abandoned_instance_stops_its_worker():
    # Dropped without close(): garbage collection tells the paused worker to stop.
    import gc
    import threading
    import time

    before = threading.active_count()
    steps = LBFGSBSteps(_rosen, np.zeros(3))
    steps.step()
    thread = steps._thread
    assert thread.is_alive()
    del steps
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()
    time.sleep(0)
    assert threading.active_count() == before


def test_errors_and_stops_end_the_worker():
    import threading

    calls = []

    def failing_later(x):
        calls.append(1)
        if len(calls) > 3:
            raise ValueError("late failure")
        return _rosen(x)

    before = threading.active_count()
    steps = LBFGSBSteps(failing_later, np.zeros(2))
    with pytest.raises(ValueError, match="late failure"):
        for _ in range(10):
            steps.step()
    steps.close()
    with LBFGSBSteps(_rosen, np.zeros(2)) as steps:
        steps.step()
        steps.step()
    assert not steps._thread.is_alive()
    assert threading.active_count() == before


def test_overlapping_workers_restore_the_blas_limit():
    # Each worker limits BLAS to one thread while it runs; with two overlapping workers,
    # the original limit must come back once both are done.
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]

    import mmopt._core.lbfgs as lbfgs

    with threadpool_limits(limits=2, user_api="blas"):
        original = blas_threads()
        first = LBFGSBSteps(_rosen, np.zeros(2))
        second = LBFGSBSteps(_rosen, np.array([-1.2, 1.0]))
        first.step()
        second.step()
        first.close()
        second.step()
        second.close()
        # The last worker to end restored the limit (one shared limit, counted).
        assert lbfgs._blas_workers == 0 and lbfgs._blas_limit is None
        if not original:
            pytest.skip("no BLAS library under threadpoolctl's control here")
        assert blas_threads() == original
