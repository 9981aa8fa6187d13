"""OTProblem and the histogram checks of mmopt/ot/problem.py."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmopt.ot import OTProblem, P2OTProblem, PartialOTProblem, UnbalancedOTProblem
from mmopt.ot.problem import check_histograms, check_n_threads


def _data(n=4, m=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m)), rng.random((n, m))


def test_empty_or_none_histograms_are_uniform():
    C = np.ones((4, 5))
    for empty in ([], None, np.array([])):
        a, b, _ = check_histograms(empty, empty, C)
        np.testing.assert_array_equal(a, np.full(4, 0.25))
        np.testing.assert_array_equal(b, np.full(5, 0.2))


def test_problem_converts_once_to_readonly_float64_and_keeps_the_inputs():
    a, b, C = _data()
    a32, b_list, C_int = a.astype(np.float32), b.tolist(), (10 * C).astype(int)
    before = (a32.copy(), list(b_list), C_int.copy())
    problem = OTProblem(a32, b_list, C_int, reg=0.5)
    for array in (problem.a, problem.b, problem.C):
        assert array.dtype == np.float64 and not array.flags.writeable
    assert problem.shape == (4, 3) and problem.reg == 0.5
    np.testing.assert_array_equal(a32, before[0])
    assert b_list == before[1]
    np.testing.assert_array_equal(C_int, before[2])
    # float32 histograms sum to 1 only in float32: b is rescaled to the mass of a.
    assert problem.b.sum() == pytest.approx(problem.a.sum(), rel=1e-15)


def test_plan_is_the_gibbs_kernel_of_the_potentials():
    a, b, C = _data(seed=1)
    problem = OTProblem(a, b, C, reg=0.3)
    f, g = np.array([0.1, -0.2, 0.0, 0.3]), np.array([0.05, 0.0, -0.1])
    expected = np.array([[np.exp((f[i] + g[j] - C[i, j]) / 0.3) for j in range(3)]
                         for i in range(4)])
    np.testing.assert_allclose(problem.plan(f, g), expected, rtol=1e-14)


@pytest.mark.parametrize(
    "a, b, C, error, match",
    [
        ([0.5, 0.5], [1.0], np.ones((2, 2)), ValueError, "b must have one entry per column"),
        ([1.0], [], np.ones((2, 2)), ValueError, "a must have one entry per row"),
        ([0.5, -0.5], [], np.ones((2, 2)), ValueError, "a must be non-negative"),
        ([0.5, 0.6], [0.5, 0.5], np.ones((2, 2)), ValueError, "same total mass"),
        ([0.0, 0.0], [], np.ones((2, 2)), ValueError, "a must have a positive total mass"),
        ([1e308, 1e308], [], np.ones((2, 2)), ValueError, "total mass of a overflows"),
        ([], [], np.ones(3), ValueError, "C"),
        ([], [], [[0.0, np.nan]], ValueError, "C must not contain NaN"),
    ],
)
def test_bad_histograms_are_named(a, b, C, error, match):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clear error, without a NumPy warning first
        with pytest.raises(error, match=match):
            check_histograms(a, b, C)


@pytest.mark.parametrize("reg, error", [(0.0, ValueError), (-1.0, ValueError),
                                        (np.nan, ValueError), ("0.1", TypeError)])
def test_bad_reg_is_named(reg, error):
    with pytest.raises(error, match="reg"):
        OTProblem([], [], np.ones((2, 2)), reg=reg)


def test_float64_masses_must_match_to_rounding_only():
    a, b, C = _data(seed=2)
    check_histograms(a, b * (1 + 1e-12), C)  # within the float64 tolerance
    with pytest.raises(ValueError, match="same total mass"):
        check_histograms(a, b * (1 + 1e-6), C)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), m=st.integers(1, 6), scale=st.sampled_from([1e-200, 1.0, 1e200]),
       seed=st.integers(0, 1000))
def test_valid_histograms_pass_unchanged(n, m, scale, seed):
    rng = np.random.default_rng(seed)
    a = rng.dirichlet(np.ones(n)) * scale
    b = rng.dirichlet(np.ones(m)) * scale
    b *= a.sum() / b.sum()
    out_a, out_b, out_C = check_histograms(a, b, rng.random((n, m)))
    np.testing.assert_array_equal(out_a, a)
    assert out_b.sum() == pytest.approx(a.sum(), rel=1e-12)


@pytest.mark.parametrize("value, error", [(0, ValueError), (-10_000, ValueError),
                                          (1.5, TypeError), (True, TypeError)])
def test_check_n_threads_names_the_argument(value, error):
    with pytest.raises(error, match="n_threads"):
        check_n_threads(value)
    assert check_n_threads(None) is None and check_n_threads(np.int64(3)) == 3


def test_repr_and_default_solver():
    problem = OTProblem([], [], np.ones((3, 2)), reg=0.25)
    assert repr(problem) == "OTProblem(n=3, m=2, reg=0.25)"
    assert problem.default_solver == "sinkhorn"


@pytest.mark.parametrize(
    "make, text",
    [
        (lambda C: OTProblem([], [], C, reg=0.25), "OTProblem(n=3, m=2, reg=0.25)"),
        (lambda C: PartialOTProblem([], [], C, 0.5, 0.1),
         "PartialOTProblem(n=3, m=2, mass=0.5, reg=0.1)"),
        (lambda C: UnbalancedOTProblem([], [], C, 0.1, (1.0, np.inf), "entropy"),
         "UnbalancedOTProblem(n=3, m=2, reg=0.1, reg_m=(1, inf), reg_type='entropy')"),
        (lambda C: P2OTProblem(C, 0.5, 2.0, 0.1),
         "P2OTProblem(n=3, k=2, rho=0.5, gamma=2, reg=0.1)"),
    ],
)
def test_cost_matrix_problems_share_shape_and_repr(make, text):
    """The problems on a dense cost matrix: the plan has C's shape; the repr gives the sizes
    and the scalar parameters (not the dataclass's field dump of the arrays)."""
    problem = make(np.arange(6.0).reshape(3, 2))
    assert problem.shape == (3, 2)
    assert repr(problem) == text
