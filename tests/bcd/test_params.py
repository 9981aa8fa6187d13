"""The option tables of the BCD solvers and estimators: every invalid value is refused with
an error naming its option, and clashes between options are found before any work."""

import numpy as np
import pytest

from mmopt import bcd
from mmopt._core.params import constraints_of, invalid_values

PROBLEM = bcd.BCDProblem(bcd.LeastSquares(np.eye(3), np.ones(3)))
X = np.random.default_rng(0).standard_normal((12, 2))
Y_REG = X[:, 0].copy()
Y_CLS = (X[:, 0] > 0).astype(int)
Y_SEMI = np.where(np.arange(12) < 4, Y_CLS, -1)


def _cases(cls):
    table, _ = constraints_of(cls)
    own = set(cls().get_params(deep=False))
    cases = [c for c in invalid_values(table) if c[0] in own]
    # Every option of the table is exercised, with both a wrong type and a wrong value
    # where the option has a range or a set.
    assert {name for name, _, _ in cases} == set(table) & own
    return cases


def _solve(cls):
    return lambda **kw: cls(**kw).solve(PROBLEM)


RUNNERS = {
    bcd.BlockCoordinateDescent: _solve(bcd.BlockCoordinateDescent),
    bcd.CoordinateDescent: _solve(bcd.CoordinateDescent),
    bcd.BCDLasso: lambda **kw: bcd.BCDLasso(**kw).fit(X, Y_REG),
    bcd.BCDElasticNet: lambda **kw: bcd.BCDElasticNet(**kw).fit(X, Y_REG),
    bcd.BCDLogisticRegression: lambda **kw: bcd.BCDLogisticRegression(**kw).fit(X, Y_CLS),
    bcd.BCDLabelPropagation: lambda **kw: bcd.BCDLabelPropagation(**kw).fit(X, Y_SEMI),
}


@pytest.mark.parametrize("cls", list(RUNNERS), ids=lambda c: c.__name__)
def test_every_invalid_option_value_is_refused_naming_it(cls):
    run = RUNNERS[cls]
    for name, value, error in _cases(cls):
        with pytest.raises(error, match=rf"^{name}\b"):
            run(**{name: value})


@pytest.mark.parametrize("cls", [bcd.BlockCoordinateDescent, bcd.BCDLabelPropagation],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "options, match",
    [
        ({"partition": "variable", "selection": "cyclic"}, "need fixed blocks"),
        ({"partition": "greedy-tree", "selection": "lipschitz"}, "need fixed blocks"),
        ({"partition": "greedy-tree", "selection": "gsq"}, "orders nodes by"),
    ],
)
def test_option_clashes_are_rules_found_at_validation(cls, options, match):
    table, rules = constraints_of(cls)
    params = {**cls().get_params(deep=False), **options}
    assert any(not rule.check(params) for rule in rules)
    with pytest.raises(ValueError, match=match):
        RUNNERS[cls](**options)


def test_random_state_accepts_numpy_seeds_and_refuses_others():
    for seed in (None, 0, np.int64(3), np.random.default_rng(1), np.random.SeedSequence(2)):
        solver = bcd.BlockCoordinateDescent(selection="random", random_state=seed, max_iter=3)
        solver.solve(PROBLEM)
    for seed, error in ((-1, ValueError), (1.5, TypeError), ("0", TypeError), (True, TypeError)):
        with pytest.raises(error, match="^random_state"):
            bcd.BlockCoordinateDescent(random_state=seed).solve(PROBLEM)
