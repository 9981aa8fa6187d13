"""The OT family's shared support module, against plain NumPy/SciPy references."""

import numpy as np
import pytest
from scipy.special import logsumexp as scipy_logsumexp
from scipy.special import rel_entr

from mmopt.ot import OTProblem
from mmopt.ot._support import ScalingRun, Support, kl, log_ratio_sum, logsumexp, measure


def _problem(reg=0.5):
    rng = np.random.default_rng(0)
    a = np.array([0.2, 0.0, 0.3, 0.5])
    b = np.array([0.0, 0.6, 0.4])
    return OTProblem(a, b, rng.random((4, 3)), reg=reg)


def test_support_restricts_and_scatters_back():
    problem = _problem()
    support = Support(problem)
    assert support.rows.tolist() == [0, 2, 3] and support.cols.tolist() == [1, 2]
    assert not support.full
    np.testing.assert_array_equal(support.C, problem.C[[0, 2, 3]][:, [1, 2]])
    block = np.arange(6.0).reshape(3, 2)
    plan = support.plan(block)
    expected = np.zeros((4, 3))
    expected[np.ix_([0, 2, 3], [1, 2])] = block
    np.testing.assert_array_equal(plan, expected)
    f, g = support.potentials(np.ones(3), np.full(2, 2.0))
    assert f.tolist() == [1.0, -np.inf, 1.0, 1.0] and g.tolist() == [-np.inf, 2.0, 2.0]


def test_read_start_takes_the_support_and_checks_it():
    support = Support(_problem())
    x0 = np.array([1.0, np.nan, 2.0, 3.0, np.inf, 4.0, 5.0, 6.0])
    f, g, rest = support.read_start(x0, extra=1)
    assert f.tolist() == [1.0, 2.0, 3.0] and g.tolist() == [4.0, 5.0] and rest.tolist() == [6.0]
    with pytest.raises(ValueError, match="x0 must have shape"):
        support.read_start(x0)
    x0[2] = np.nan  # on the support now
    with pytest.raises(ValueError, match="finite on the entries of positive mass"):
        support.read_start(x0, extra=1)


def test_measure_checks_name_the_argument():
    np.testing.assert_allclose(measure(None, "a", 4, "row"), 0.25)
    with pytest.raises(ValueError, match="b must have one entry per column"):
        measure([1.0, 2.0], "b", 3, "column")
    with pytest.raises(ValueError, match="a must have a positive total"):
        measure([0.0, 0.0], "a", 2, "row")


def test_divergences_match_scipy():
    rng = np.random.default_rng(1)
    x, y = rng.random(7), rng.random(7) + 0.1
    x[2] = 0.0
    assert kl(x, y) == pytest.approx(float(rel_entr(x, y).sum() - x.sum() + y.sum()))
    z = rng.normal(size=9) * 300
    assert logsumexp(z) == pytest.approx(float(scipy_logsumexp(z)))
    assert logsumexp(np.array([-np.inf, -np.inf])) == -np.inf


def test_log_ratio_sum_is_the_plans_entropy():
    problem = _problem()
    rng = np.random.default_rng(2)
    f, g = rng.normal(size=4), rng.normal(size=3)
    P = np.exp((f[:, None] + g[None] - problem.C) / problem.reg)
    value = log_ratio_sum(f, g, P.sum(1), P.sum(0), float(np.vdot(problem.C, P)), problem.reg)
    assert value == pytest.approx(float((P * np.log(P)).sum()))


@pytest.mark.parametrize("transpose", [False, True])
def test_half_step_is_the_same_in_both_domains(transpose):
    problem = _problem(reg=0.5)
    scaling = ScalingRun(problem, "auto", 1)
    log = ScalingRun(problem, "log", 1)
    assert scaling.method == "scaling"
    rng = np.random.default_rng(3)
    n, m = scaling.C.shape
    own, other = (rng.normal(size=m), rng.normal(size=n)) if transpose else (
        rng.normal(size=n), rng.normal(size=m))
    log_w = scaling.log_b if transpose else scaling.log_a
    h_s, mass_s = scaling.half(own, other, log_w, transpose)
    h_l, mass_l = log.half(own, other, log_w, transpose)
    # NumPy reference: h = reg (log w - logsumexp((other - C) / reg)) along the block.
    C = scaling.C.T if transpose else scaling.C
    lse = scipy_logsumexp((other[None, :] - C) / problem.reg, axis=1)
    np.testing.assert_allclose(h_s, problem.reg * (log_w - lse), rtol=1e-12)
    np.testing.assert_allclose(h_l, h_s, rtol=1e-12)
    np.testing.assert_allclose(mass_l, np.exp(own / problem.reg + lse), rtol=1e-12)
    np.testing.assert_allclose(mass_s, mass_l, rtol=1e-12)
