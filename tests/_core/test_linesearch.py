
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmopt._core.linesearch import armijo, backtracking


@settings(max_examples=50, deadline=None)
@given(
    curvature=st.floats(0.01, 1e4),
    start=st.floats(-10.0, 10.0),
    c1=st.floats(1e-6, 0.4),
)
def test_armijo_step_on_a_quadratic(curvature, start, c1):
    # f(x) = curvature / 2 x^2 along the steepest-descent direction from `start`.
    def f(x):
        return 0.5 * curvature * x * x

    grad = curvature * start
    if grad == 0.0:
        return
    direction = -grad
    slope = grad * direction
    out = backtracking(lambda t: f(start + t * direction), armijo(f(start), slope, c1=c1),
                       max_trials=80)
    assert out.success
    # The accepted step satisfies the test; the one before it (twice as long) did not,
    # unless the first step was accepted.
    assert f(start + out.step * direction) <= f(start) + c1 * out.step * slope
    if out.n_trials > 1:
        longer = 2 * out.step
        assert f(start + longer * direction) > f(start) + c1 * longer * slope
    # Armijo accepts any step up to 2 (1 - c1) / curvature, so halving from 1 ends within a
    # factor 2 of that.
    assert out.step > min(1.0, (1.0 - c1) / curvature) * (1 - 1e-12)


def test_failure_reports_the_last_step_tried():
    calls = []
    out = backtracking(lambda t: calls.append(t) or np.nan, lambda t, v: v < 0, step=4.0,
                       shrink=0.25, max_trials=3)
    assert not out.success and out.n_trials == 3 and calls == [4.0, 1.0, 0.25]
    assert out.step == 0.25 and np.isnan(out.trial)


def test_trial_payload_is_returned_without_recomputation():
    calls = []

    def trial(t):
        calls.append(t)
        return {"value": (t - 0.3) ** 2, "x": t}

    out = backtracking(trial, armijo(0.09, -0.6, value=lambda p: p["value"]))
    assert out.success and out.trial["x"] == out.step and len(calls) == out.n_trials


def test_maximize_and_rounding():
    # Ascent on g(x) = -(x - 1)^2 from 0: slope +2 along d = +1.
    def g(x):
        return -((x - 1.0) ** 2)

    out = backtracking(g, armijo(g(0.0), 2.0, maximize=True))
    assert out.success and out.step == 1.0
    # A flat function passes only with rounding slack.
    assert not backtracking(lambda t: 1.0, armijo(1.0, -1.0), max_trials=5).success
    assert backtracking(lambda t: 1.0, armijo(1.0, -1.0, rounding=1e-3), max_trials=12).success


def test_nan_is_rejected():
    assert not armijo(0.0, -1.0)(1.0, np.nan)
    assert not armijo(0.0, 1.0, maximize=True)(1.0, np.nan)


@pytest.mark.parametrize("kwargs, match", [({"shrink": 1.0}, "shrink"),
                                           ({"shrink": 0.0}, "shrink"),
                                           ({"max_trials": 0}, "max_trials")])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        backtracking(lambda t: t, lambda t, v: True, **kwargs)
