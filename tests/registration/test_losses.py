"""Robust losses: IRLS weights are the derivative of psi in r^2 (finite differences)."""

import numpy as np
import pytest

from mmopt.registration.losses import LOSSES, loss_energy, loss_weights

NU = 0.7
# d psi / d(r^2) = constant * w(r)
SLOPE = {"l2": 1.0, "welsch": 1.0 / (2 * NU**2), "huber": 0.5, "cauchy": 0.5, "tukey": 0.5}


@pytest.mark.parametrize("loss", sorted(SLOPE))
@pytest.mark.parametrize("r", [0.05, 0.3, 0.69, 0.71, 1.5, 3.0])
def test_weights_are_the_derivative_in_r_squared(loss, r):
    h = 1e-6
    u = r * r
    numeric = (
        loss_energy(loss, np.array([np.sqrt(u + h)]), NU)
        - loss_energy(loss, np.array([np.sqrt(u - h)]), NU)
    ) / (2 * h)
    assert numeric == pytest.approx(SLOPE[loss] * loss_weights(loss, np.array([r]), NU)[0],
                                    rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("loss", sorted(SLOPE))
def test_quadratic_majorizer(loss):
    # psi is concave in r^2, so its tangent in r^2 lies above it: the MM surrogate.
    r0 = np.linspace(0.01, 3.0, 40)
    r = np.linspace(0.0, 3.0, 41)[:, None]
    psi = np.vectorize(lambda x: loss_energy(loss, np.array([x]), NU))
    bound = psi(r0)[None] + SLOPE[loss] * loss_weights(loss, r0, NU)[None] * (r**2 - r0**2)
    assert np.all(psi(r) <= bound + 1e-12)


def test_trimmed_keeps_the_smallest():
    r = np.array([5.0, 0.1, 0.2, 9.0, 0.3])
    np.testing.assert_array_equal(loss_weights("trimmed", r, None, keep=0.6), [0, 1, 1, 0, 1])
    assert loss_energy("trimmed", r, None, keep=0.6) == pytest.approx(0.01 + 0.04 + 0.09)


def test_far_points_weigh_nothing():
    for loss in ("welsch", "tukey"):
        assert loss_weights(loss, np.array([np.inf]), NU)[0] == 0.0
    assert loss_energy("welsch", np.array([np.inf]), NU) == 1.0


def test_unknown_loss():
    with pytest.raises(ValueError, match="loss must be one of"):
        loss_weights("bogus", np.ones(2), 1.0)
    assert set(SLOPE) | {"trimmed"} == set(LOSSES)
