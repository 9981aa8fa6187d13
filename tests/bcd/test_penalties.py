"""Penalties: prox against brute-force minimization, subdifferential distances."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmopt.bcd import L1, L2, ElasticNet, L1Positive, NoPenalty

PENALTIES = [
    NoPenalty(),
    L2(0.7),
    L1(0.4),
    L1Positive(0.4),
    ElasticNet(0.6, 0.3),
    ElasticNet(0.6, 0.3, positive=True),
]


@settings(max_examples=40, deadline=None)
@given(v=st.floats(-5, 5), step=st.floats(0.05, 3.0), which=st.integers(0, len(PENALTIES) - 1))
def test_prox_minimizes_its_objective(v, step, which):
    pen = PENALTIES[which]
    u = pen.prox(np.array([v]), step)[0]
    grid = np.linspace(-8, 8, 160_001)
    values = (grid - v) ** 2 / (2 * step) + np.where(
        (grid < 0) & pen.positive, np.inf, pen.l1 * np.abs(grid) + 0.5 * pen.l2 * grid**2
    )
    best = grid[np.argmin(values)]
    assert abs(u - best) <= 2e-4


@pytest.mark.parametrize("pen", PENALTIES, ids=repr)
def test_subdiff_distance_is_zero_exactly_at_prox_fixed_points(pen):
    rng = np.random.default_rng(0)
    x = pen.prox(rng.standard_normal(50), 1.0)
    # x = prox(x - grad) exactly when -grad is in the subdifferential at x.
    for grad in (rng.standard_normal(50), np.zeros(50)):
        fixed = np.isclose(pen.prox(x - grad, 1.0), x, atol=1e-12)
        dist = pen.subdiff_distance(x, grad)
        assert np.all((dist <= 1e-12) == fixed)


def test_values_and_repr():
    x = np.array([1.0, -2.0])
    assert L1(0.5).value(x) == pytest.approx(1.5)
    assert L2(2.0).value(x) == pytest.approx(5.0)
    assert L1Positive(1.0).value(x) == np.inf
    assert ElasticNet(1.0, 0.5).value(x) == pytest.approx(1.5 + 1.25)
    assert "alpha=0.5" in repr(L1(0.5))


@pytest.mark.parametrize("cls", [L1, L2, L1Positive, ElasticNet])
def test_negative_alpha_is_rejected(cls):
    with pytest.raises(ValueError, match="alpha"):
        cls(-1.0)
