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
