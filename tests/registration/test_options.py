"""ICP's options: the declarative table (every invalid value it generates is refused at the
solve, naming the option), the grouped ScaleSchedule / StageCriteria objects, and the named
losses against ICP's closed forms (written here in NumPy, sharing no code with
mmopt.losses)."""

import dataclasses
import math
import re

import numpy as np
import pytest
from sklearn.base import clone

from mmopt._core.params import constraints_of, invalid_values
from mmopt.losses import TrimmedLoss, WelschLoss
from mmopt.registration import ICP, ScaleSchedule, StageCriteria, icp
from mmopt.registration.icp import _loss_energy, _loss_weights
from mmopt.registration.se3 import se3_exp

TABLE, RULES = constraints_of(ICP)


def _cloud(n=200, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3)) * [3.0, 2.0, 1.0]


def _moved(points):
    T = se3_exp([0.0, 0.0, 0.2, 0.1, 0.0, 0.0])
    return points @ T[:3, :3].T + T[:3, 3]


def test_the_table_covers_every_option():
    assert set(TABLE) == set(ICP().get_params())


@pytest.mark.parametrize(
    "option, value, error", invalid_values(TABLE), ids=lambda v: repr(v)[:30]
)
def test_every_generated_invalid_value_is_refused_at_the_solve(option, value, error):
    solver = ICP(**{option: value})  # options are only stored by __init__
    assert solver.get_params()[option] is value
    with pytest.raises(error, match=rf"^{re.escape(option)} must be"):
        solver.solve(_problem())


def _problem():
    from mmopt.registration import RegistrationProblem

    return RegistrationProblem(_cloud(), _moved(_cloud()))


def test_option_clash_is_a_rule():
    with pytest.raises(ValueError, match="similarity=True needs metric='point_to_point'"):
        icp(_cloud(), _moved(_cloud()), similarity=True, metric="hybrid")


@pytest.mark.parametrize("cls", [ScaleSchedule, StageCriteria])
def test_grouped_options_refuse_bad_fields_naming_them(cls):
    table, _ = constraints_of(cls)
    assert set(table) == {f.name for f in dataclasses.fields(cls)}
    cases = invalid_values(table)
    assert cases
    for field, value, error in cases:
        with pytest.raises(error, match=rf"^{field} \({cls.__name__}\) must be"):
            cls(**{field: value})


def test_grouped_options_work_with_get_set_params_and_clone():
    solver = ICP(schedule=ScaleSchedule(nu_min=0.01), stage_criteria=StageCriteria(tol=None))
    copy = clone(solver)
    assert copy.get_params() == solver.get_params()
    copy.set_params(schedule=ScaleSchedule(nu=0.5))
    assert copy.schedule.nu == 0.5 and solver.schedule.nu is None
    with pytest.raises(AttributeError):
        solver.schedule.nu = 1.0  # frozen: an option cannot change behind the solver's back


def test_grouped_options_change_the_run():
    source, target = _cloud(600), _moved(_cloud(600))
    default = icp(source, target)
    fixed = icp(source, target, schedule=ScaleSchedule(nu=0.3))
    assert default.n_stages > 1 and fixed.n_stages == 1 and fixed.nu == pytest.approx(0.3)
    capped = icp(source, target, stage_criteria=StageCriteria(max_iter=1, tol=0.0))
    assert np.all(capped.iterations_per_stage[:-1] == 1)
    floor = icp(source, target, schedule=ScaleSchedule(nu_min=0.05))
    assert floor.nu_min == pytest.approx(0.05)


# ----------------------------------------------------------------------- the loss option
NU = 0.7
R = np.array([0.0, 0.05, 0.3, 0.69, 0.71, 1.5, 3.0, np.inf])
# ICP's closed forms at scale nu (weights, and the energy psi(r) per residual).
WEIGHTS = {
    "welsch": lambda r: np.exp(-r**2 / (2 * NU**2)),
    "huber": lambda r: np.minimum(1.0, NU / np.abs(r)),
    "cauchy": lambda r: 1.0 / (1.0 + r**2 / NU**2),
    "tukey": lambda r: np.clip(1.0 - r**2 / NU**2, 0.0, None) ** 2,
    "l2": lambda r: np.isfinite(r).astype(float),
}
ENERGY = {  # psi(r); ICP reports sum psi(r) / nu^2 for the scaled losses
    "welsch": lambda r: NU**2 * (1.0 - np.exp(-r**2 / (2 * NU**2))),
    "huber": lambda r: np.where(np.abs(r) <= NU, 0.5 * r**2, NU * np.abs(r) - 0.5 * NU**2),
    "cauchy": lambda r: 0.5 * NU**2 * np.log1p(r**2 / NU**2),
    "tukey": lambda r: NU**2 / 6.0 * (1.0 - np.clip(1.0 - r**2 / NU**2, 0.0, None) ** 3),
}


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_named_losses_are_icps_closed_forms(name):
    loss = ICP(loss=name)._resolved_loss()
    nu = None if name == "l2" else NU
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        expected = WEIGHTS[name](R)
    np.testing.assert_allclose(_loss_weights(loss, R, nu), expected, rtol=1e-14, atol=0)
    finite = R[np.isfinite(R)]
    if name == "l2":
        assert _loss_energy(loss, finite, None) == pytest.approx(0.5 * np.sum(finite**2))
    else:
        assert _loss_energy(loss, finite, NU) == pytest.approx(
            np.sum(ENERGY[name](finite)) / NU**2, rel=1e-13)


@pytest.mark.parametrize("name, bound", [("welsch", 5.0), ("tukey", 1.0), ("huber", None),
                                         ("cauchy", None), ("l2", None), ("trimmed", None)])
def test_search_bounds_in_units_of_nu(name, bound):
    # Beyond 5 nu the Welsch weight is below 4e-6; beyond nu Tukey's is 0.
    got = ICP(loss=name)._resolved_loss().search_bound
    assert got == (None if bound is None else pytest.approx(bound, rel=1e-15))


def test_trimmed_by_name_keeps_ninety_percent():
    loss = ICP(loss="trimmed")._resolved_loss()
    r = np.arange(1.0, 11.0)
    np.testing.assert_array_equal(_loss_weights(loss, r, None), [1] * 9 + [0])


def test_a_loss_instance_is_used_as_is():
    source, target = _cloud(400), _moved(_cloud(400))
    by_name = icp(source, target, loss="welsch")
    by_instance = icp(source, target, loss=WelschLoss(c=math.sqrt(2.0)))
    np.testing.assert_array_equal(by_instance.transform, by_name.transform)
    assert by_instance.nit == by_name.nit
    # A wider kernel (c in units of nu) widens the bounded search with it.
    wide = ICP(loss=WelschLoss(c=3.0))._resolved_loss()
    assert wide.search_bound == pytest.approx(5.0 * 3.0 / math.sqrt(2.0))
    trimmed = icp(source, target, loss=TrimmedLoss(keep=0.8))
    assert trimmed.success and trimmed.nu is None


def test_anderson_option_object_is_used_and_never_mutated():
    from mmopt import AndersonAcceleration
    from mmopt.datasets import load_scan_pair, make_registration_problem

    problem = make_registration_problem(load_scan_pair().source[::8], random_state=3)[0]
    option = AndersonAcceleration(memory=3)
    before = repr(option), option.n_accepted, option.n_rejected
    res = ICP(anderson=option).solve(problem)
    assert (repr(option), option.n_accepted, option.n_rejected) == before
    assert res.n_accepted + res.n_rejected > 0
    plain = ICP(anderson=False).solve(problem)
    assert plain.n_accepted == plain.n_rejected == 0
    default = ICP(anderson=True).solve(problem)
    same = ICP(anderson=AndersonAcceleration()).solve(problem)
    assert default.nit == same.nit and np.array_equal(default.transform, same.transform)
