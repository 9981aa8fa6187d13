"""OTMapping: barycentric projection of a plan, and out-of-sample displacement."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from mmopt._core.params import constraints_of, invalid_values
from mmopt.ot import OTMapping


def _clouds(n=40, m=30, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) + np.array([2.0, -1.0])


def test_exact_plan_recovers_a_translation():
    # For the squared Euclidean cost the optimal map between a cloud and its translate is
    # the translation (Brenier), so the exact plan maps every point onto its image.
    source = np.random.default_rng(1).normal(size=(60, 3))
    target = source[::-1] + np.array([1.0, 2.0, -3.0])  # shuffled order
    mapping = OTMapping(solver="exact").fit(source, target)
    np.testing.assert_allclose(mapping.transform(source), source + [1.0, 2.0, -3.0], atol=1e-12)
    np.testing.assert_allclose(mapping.inverse_transform(target), target - [1.0, 2.0, -3.0],
                               atol=1e-12)


@pytest.mark.parametrize("solver", ["sinkhorn", "sns", "exact"])
def test_barycentric_projection_matches_the_plan(solver):
    source, target = _clouds()
    mapping = OTMapping(solver=solver, reg=0.05).fit(source, target)
    plan = np.asarray(mapping.plan_)
    expected = (plan @ target) / plan.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(mapping.transform(source), expected, rtol=1e-10, atol=1e-12)
    assert mapping.result_.plan is mapping.plan_ or np.array_equal(mapping.result_.plan, plan)
    assert mapping.n_features_in_ == 2 and mapping.cost_.max() == pytest.approx(1.0)


def test_out_of_sample_points_move_like_their_nearest_fitted_neighbour():
    source, target = _clouds(seed=2)
    mapping = OTMapping(reg=0.05).fit(source, target)
    new = np.random.default_rng(3).normal(size=(25, 2))
    distances = ((new[:, None] - source[None]) ** 2).sum(-1)
    nearest = distances.argmin(axis=1)
    expected = new + mapping.mapped_source_[nearest] - source[nearest]
    np.testing.assert_allclose(mapping.transform(new), expected, atol=1e-12)


@pytest.mark.filterwarnings("ignore::mmopt.ConvergenceWarning")  # k = 3 may stall at a kink
def test_sparsity_constrained_plan_through_solver_options():
    source, target = _clouds(seed=4)
    mapping = OTMapping(solver="sparsity_constrained", reg=0.5,
                        solver_options={"k": 3, "polish": True}).fit(source, target)
    assert mapping.result_.nnz_per_column.max() <= 3
    assert np.all(np.isfinite(mapping.transform(source)))


def test_weights_and_zero_mass_samples_stay():
    source, target = _clouds(n=10, m=12, seed=5)
    weight = np.ones(10)
    weight[4] = 0.0
    mapping = OTMapping(solver="exact").fit(source, target, sample_weight=weight,
                                            target_weight=np.full(12, 3.0))
    np.testing.assert_array_equal(mapping.transform(source)[4], source[4])
    # Target masses are rescaled to the source total.
    assert np.asarray(mapping.plan_).sum() == pytest.approx(9.0)


def test_clone_and_params():
    mapping = OTMapping(solver="sns", reg=1e-3, solver_options={"tol": 1e-8})
    other = clone(mapping)
    assert other.get_params() == mapping.get_params()
    assert "sns" in repr(mapping)


def test_inputs_are_not_modified():
    source, target = _clouds(seed=6)
    copies = source.copy(), target.copy()
    mapping = OTMapping().fit(source, target)
    mapping.transform(source)
    np.testing.assert_array_equal(source, copies[0])
    np.testing.assert_array_equal(target, copies[1])


@pytest.mark.parametrize(
    "params, fit_args, error, match",
    [
        ({"solver": "emd"}, None, ValueError, "solver"),
        ({"reg": 0.0}, None, ValueError, "reg"),
        ({}, "y_none", ValueError, "target samples y"),
        ({}, "y_features", ValueError, "same number of features"),
        ({}, "x_nan", ValueError, "NaN"),
        ({}, "weights", ValueError, "sample_weight"),
        ({"solver": "exact", "solver_options": {"k": 3}}, None, TypeError, "'k'.*exact"),
        ({"solver_options": {"bogus": 1}}, None, TypeError, "bogus"),
    ],
)
def test_bad_input(params, fit_args, error, match):
    source, target = _clouds(n=8, m=9)
    kwargs = {}
    if fit_args == "y_none":
        target = None
    elif fit_args == "y_features":
        target = np.ones((9, 3))
    elif fit_args == "x_nan":
        source = source.copy()
        source[0, 0] = np.nan
    elif fit_args == "weights":
        kwargs["sample_weight"] = np.ones(3)
    with pytest.raises(error, match=match):
        OTMapping(**params).fit(source, target, **kwargs)


def test_transform_checks():
    source, target = _clouds(n=8, m=9)
    with pytest.raises(NotFittedError):
        OTMapping().transform(source)
    mapping = OTMapping().fit(source, target)
    with pytest.raises(ValueError, match="features"):
        mapping.transform(np.ones((3, 5)))
    with pytest.raises(ValueError, match="features"):
        mapping.inverse_transform(np.ones((3, 5)))


@pytest.mark.parametrize(
    "option, value, error",
    invalid_values(constraints_of(OTMapping)[0]),
    ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__,
)
def test_every_option_rejects_what_its_constraints_rule_out(option, value, error):
    source, target = _clouds(n=8, m=9)
    with pytest.raises(error, match=option):
        OTMapping(**{option: value}).fit(source, target)


def test_the_constraint_table_covers_every_option():
    assert set(constraints_of(OTMapping)[0]) == set(OTMapping().get_params())


def test_exact_plan_goes_through_the_registered_solver():
    source, target = _clouds(n=8, m=9)
    mapping = OTMapping(solver="exact", solver_options={"tol": 1e-9}).fit(source, target)
    assert mapping.result_.solver == "exact" and mapping.result_.nit == 1
