"""mmopt.losses against closed forms, finite differences and the 95%-efficiency constants."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from mmopt.losses import LOSSES, RobustLoss, TrimmedLoss, get_loss

POINTWISE = [name for name, cls in LOSSES.items() if cls is not TrimmedLoss]


@pytest.mark.parametrize("name", POINTWISE)
def test_psi_is_the_derivative_of_rho(name):
    loss = get_loss(name, c=1.7)
    u = np.linspace(-6.0, 6.0, 241) + 1e-3  # off the kinks of Huber and Tukey
    h = 1e-6
    fd = (loss.rho(u + h) - loss.rho(u - h)) / (2 * h)
    np.testing.assert_allclose(loss.psi(u), fd, atol=1e-6)
    np.testing.assert_allclose(loss.weight(u), loss.psi(u) / u, atol=1e-12)
    assert float(loss.weight(0.0)) == 1.0 and float(loss.rho(0.0)) == 0.0


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(POINTWISE), u0=st.floats(-20, 20), u=st.floats(-50, 50),
       c=st.floats(0.1, 10.0))
def test_quadratic_majorizer(name, u0, u, c):
    # The MM condition: rho(u) <= rho(u0) + w(u0) / 2 (u^2 - u0^2), equality at u0.
    loss = get_loss(name, c=c)
    bound = loss.rho(u0) + 0.5 * loss.weight(u0) * (u * u - u0 * u0)
    assert loss.rho(u) <= bound + 1e-9 * (1.0 + abs(bound))


@pytest.mark.parametrize("name", ["huber", "cauchy", "welsch", "tukey"])
def test_default_constants_give_95_percent_efficiency(name):
    # Asymptotic efficiency at the normal: E[psi']^2 / E[psi^2] (numerical integration,
    # psi' by central differences so that no formula is shared with the module).
    loss = get_loss(name)
    phi = lambda x: np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)  # noqa: E731
    h = 1e-6
    dpsi = lambda x: float(loss.psi(x + h) - loss.psi(x - h)) / (2 * h)  # noqa: E731
    kinks = [-loss.c, loss.c]
    a = integrate.quad(lambda x: dpsi(x) * phi(x), -12, 12, points=kinks, limit=400)[0]
    b = integrate.quad(lambda x: float(loss.psi(x)) ** 2 * phi(x), -12, 12, points=kinks,
                       limit=400)[0]
    assert a * a / b == pytest.approx(0.95, abs=2e-4)


@pytest.mark.parametrize("name", POINTWISE)
def test_weights_and_energy_in_data_units(name):
    loss = get_loss(name, c=1.3)
    r = np.array([-4.0, -0.5, 0.0, 0.2, 3.0, np.inf])
    scale = 2.5
    w = loss.weights(r, scale)
    np.testing.assert_allclose(w[:-1], loss.weight(r[:-1] / scale))
    assert w[-1] == 0.0  # no match: no weight
    finite = r[:-1]
    assert loss.energy(finite, scale) == pytest.approx(
        scale**2 * float(np.sum(loss.rho(finite / scale))))
    assert np.isfinite(loss.energy(r, scale)) == (name in ("welsch", "tukey"))


@pytest.mark.parametrize("name", ["welsch", "tukey"])
def test_search_bound_leaves_negligible_weight(name):
    loss = get_loss(name, c=0.8)
    assert loss.weight(loss.search_bound) < 1e-5
    assert loss.weight(0.5 * loss.search_bound) > 1e-5 or name == "tukey"


def test_trimmed_keeps_the_smallest_residuals():
    r = np.array([5.0, -0.1, 3.0, 0.2, np.nan, 1.0])
    loss = TrimmedLoss(keep=0.5)
    np.testing.assert_array_equal(loss.weights(r), [0, 1, 0, 1, 0, 1])
    assert loss.energy(r) == pytest.approx(0.5 * (0.01 + 0.04 + 1.0))
    with pytest.raises(TypeError, match="pointwise"):
        loss.rho(1.0)


@pytest.mark.parametrize(
    "call, match",
    [(lambda: get_loss("bogus"), "loss"), (lambda: get_loss("huber", c=0.0), "c"),
     (lambda: get_loss(3), "loss"), (lambda: TrimmedLoss(keep=1.5), "keep"),
     (lambda: TrimmedLoss(keep=0.0), "keep")],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_get_loss_with_an_instance():
    loss = get_loss("cauchy")
    assert get_loss(loss) is loss
    other = get_loss(loss, c=1.0)
    assert isinstance(other, RobustLoss) and other.c == 1.0 and loss.c != 1.0
