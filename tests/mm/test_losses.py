import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmopt.mm.losses import LOSSES, CauchyLoss, HuberLoss, WelschLoss, get_loss

NAMES = sorted(LOSSES)
DEFAULT_C = {"huber": 1.345, "cauchy": 2.3849, "welsch": 2.9846}

residual = st.floats(-1e3, 1e3, allow_nan=False)
tuning = st.floats(0.05, 20.0)


@pytest.mark.parametrize("name", NAMES)
def test_defaults_and_override(name):
    assert get_loss(name).c == DEFAULT_C[name]
    assert get_loss(name, c=0.7).c == 0.7
    assert get_loss(name).name == name
    assert get_loss(get_loss(name, c=3.0)).c == 3.0


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(NAMES), c=tuning, u=residual, u0=residual)
def test_quadratic_majorizer(name, c, u, u0):
    # The MM condition: rho(sqrt(t)) concave in t, i.e. the quadratic through u0 with
    # curvature w(u0) lies above rho and touches it at u0.
    loss = get_loss(name, c=c)
    rho, rho0, w0 = (float(v) for v in (loss.rho(u), loss.rho(u0), loss.weight(u0)))
    bound = rho0 + 0.5 * w0 * (u * u - u0 * u0)
    assert rho <= bound + 1e-12 * (1.0 + abs(rho) + 0.5 * w0 * (u * u + u0 * u0))
    touch = rho0 + 0.5 * w0 * (u0 * u0 - u0 * u0)
    assert float(loss.rho(u0)) == pytest.approx(touch, rel=1e-14, abs=1e-300)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(NAMES), c=tuning, u=st.floats(-50.0, 50.0))
def test_weight_is_finite_difference_psi_over_u(name, c, u):
    loss = get_loss(name, c=c)
    h = 1e-5 * max(1.0, abs(u))
    psi_fd = (float(loss.rho(u + h)) - float(loss.rho(u - h))) / (2.0 * h)
    # Huber's psi has kinks at +-c, where the central difference is off by O(h).
    tol = 1e-6 * max(1.0, c * c) + (h if name == "huber" else 0.0)
    assert float(loss.psi(u)) == pytest.approx(psi_fd, abs=tol)
    if abs(u) > 1e-3:
        assert float(loss.weight(u)) == pytest.approx(psi_fd / u, abs=tol / abs(u))


@pytest.mark.parametrize("name", NAMES)
def test_weights_at_zero_bounded_and_non_increasing(name):
    loss = get_loss(name)
    assert loss.weight(0.0) == 1.0
    assert loss.rho(0.0) == 0.0
    u = np.linspace(0.0, 1e3, 20_001)
    w = loss.weight(u)
    assert np.all(np.isfinite(w)) and np.all((w >= 0) & (w <= 1))
    assert np.all(np.diff(w) <= 0)
    np.testing.assert_array_equal(loss.weight(-u), w)  # symmetric
    np.testing.assert_allclose(loss.psi(u), u * w, rtol=1e-15)


def test_closed_forms():
    u = np.array([0.5, 2.0, -7.0])
    np.testing.assert_allclose(HuberLoss(c=1.0).rho(u), [0.125, 1.5, 6.5], rtol=1e-15)
    np.testing.assert_allclose(HuberLoss(c=1.0).psi(u), [0.5, 1.0, -1.0])
    np.testing.assert_allclose(CauchyLoss(c=2.0).rho(u), 2.0 * np.log(1 + u**2 / 4))
    np.testing.assert_allclose(WelschLoss(c=2.0).rho(u), 2.0 * (1 - np.exp(-(u**2) / 4)))
    # Welsch is bounded: a gross outlier costs at most c^2 / 2.
    assert WelschLoss(c=2.0).rho(1e10) == 2.0
    # Accurate for tiny residuals (no cancellation).
    assert WelschLoss().rho(1e-10) == pytest.approx(0.5e-20, rel=1e-12)
    assert CauchyLoss().rho(1e-10) == pytest.approx(0.5e-20, rel=1e-12)


def test_convexity_flags():
    assert HuberLoss.convex and not CauchyLoss.convex and not WelschLoss.convex


def test_losses_are_immutable():
    loss = HuberLoss()
    with pytest.raises(dataclasses.FrozenInstanceError):
        loss.c = 2.0


@pytest.mark.parametrize(
    "args, error, match",
    [
        (("tukey",), ValueError, "loss must be one of 'huber', 'cauchy', 'welsch'"),
        ((3,), ValueError, "loss must be one of"),
        (("huber", 0.0), ValueError, "c must be > 0"),
        (("welsch", -1.0), ValueError, "c must be > 0"),
        (("cauchy", "big"), TypeError, "c must be a real number"),
        (("cauchy", np.inf), ValueError, "c must be finite"),
    ],
)
def test_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        get_loss(*args)
