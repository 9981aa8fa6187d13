import inspect
import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import BaseEstimator, clone

from mmopt._core.params import (
    InstanceOf,
    Interval,
    Options,
    Param,
    ParamsValidationMixin,
    Rule,
    constraints_of,
    invalid_values,
    options_of,
    validate_params,
)

TABLE = {
    "tol": [Interval(float, 0, None)],
    "max_iter": [Interval(int, 1, None)],
    "step": [Interval(float, 0, 1, closed="right")],
    "method": [Options({"auto", "log"})],
    "callback": [None, callable],
    "flag": [bool],
    "k": [None, Interval(int, 1, None)],
    "refine": [bool, Options({"auto"})],
}
GOOD = {"tol": 0.0, "max_iter": 3, "step": 1.0, "method": "log", "callback": None,
        "flag": True, "k": None, "refine": "auto"}


def test_good_values_pass():
    validate_params(TABLE, GOOD)


@pytest.mark.parametrize(
    "name, value, error",
    [("tol", -1e-300, ValueError), ("tol", math.nan, ValueError), ("tol", math.inf, ValueError),
     ("tol", "1", TypeError), ("max_iter", 0, ValueError), ("max_iter", 1.5, TypeError),
     ("max_iter", True, TypeError), ("step", 0.0, ValueError), ("step", 1.0000001, ValueError),
     ("method", "exp", ValueError), ("method", 3, TypeError), ("callback", 3, TypeError),
     ("flag", 1, TypeError), ("k", 0, ValueError), ("refine", "yes", ValueError),
     ("refine", 2, TypeError)],
)
def test_bad_values_raise_naming_the_option(name, value, error):
    with pytest.raises(error, match=rf"^{name} must be "):
        validate_params(TABLE, {**GOOD, name: value})


def test_generated_invalid_values_are_rejected_and_cover_every_option():
    cases = invalid_values(TABLE)
    assert {name for name, _, _ in cases} == set(TABLE)
    for name, value, error in cases:
        with pytest.raises(error, match=name):
            validate_params(TABLE, {**GOOD, name: value})


@settings(max_examples=100, deadline=None)
@given(low=st.integers(-5, 5), width=st.integers(0, 5), value=st.integers(-20, 20),
       closed=st.sampled_from(["both", "left", "right", "neither"]))
def test_interval_membership_matches_its_definition(low, width, value, closed):
    high = low + width
    above = value >= low if closed in ("both", "left") else value > low
    below = value <= high if closed in ("both", "right") else value < high
    inside = above and below
    assert Interval(int, low, high, closed=closed).is_satisfied_by(value) == inside
    assert Interval(float, low, high, closed=closed).is_satisfied_by(float(value)) == inside


def test_rules_and_inheritance():
    class Base:
        _parameter_constraints = {"a": [Interval(int, 0, None)], "b": [bool]}

    class Child(Base):
        _parameter_constraints = {"a": [Interval(int, 1, None)]}
        _parameter_rules = [Rule(("a", "b"), lambda p: not (p["b"] and p["a"] > 2),
                                 "b=True needs a <= 2")]

    table, rules = constraints_of(Child)
    assert set(table) == {"a", "b"} and len(rules) == 1
    with pytest.raises(ValueError, match="a must be"):
        validate_params(table, {"a": 0, "b": False}, rules)
    with pytest.raises(ValueError, match=r"b=True needs a <= 2; got a=3, b=True"):
        validate_params(table, {"a": 3, "b": True}, rules)


def test_descriptions():
    assert Interval(int, 1, None).describe() == "an integer in [1, inf)"
    assert InstanceOf(bool).describe() == "True or False"
    assert Options({"b", "a"}).describe() == "one of 'a', 'b'"


class _Base(ParamsValidationMixin, BaseEstimator):
    _options = {
        "tol": Param(1e-6, Interval(float, 0, None)),
        "callback": Param(None, None, callable),
        "gone": Param(1, Interval(int, 0, None)),
    }


class _Child(_Base):
    _options = {
        "alpha": Param(1.0, Interval(float, 0, None), positional=True),
        "method": Param("auto", Options({"auto", "log"})),
        "tol": Param(1e-9),
        "gone": None,
    }


class _GrandChild(_Child):
    pass


class _Written(_Child):
    def __init__(self, alpha=2.0):
        self.alpha = alpha


def test_declared_options_write_the_init():
    # The generated __init__ must look hand-written to inspect (scikit-learn reads it):
    # the class's own options first, the positional one before the keyword-only ones,
    # a subclass's default replacing its base's and a removed option absent.
    signature = inspect.signature(_Child.__init__)
    kinds = {name: p.kind for name, p in signature.parameters.items()}
    assert list(kinds) == ["self", "alpha", "method", "tol", "callback"]
    assert kinds["alpha"] == inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert {kinds[n] for n in ("method", "tol", "callback")} == {inspect.Parameter.KEYWORD_ONLY}
    assert [p.default for p in signature.parameters.values()][1:] == [1.0, "auto", 1e-9, None]
    model = _Child(0.5, tol=1e-3)
    assert model.get_params() == {"alpha": 0.5, "method": "auto", "tol": 1e-3, "callback": None}
    assert repr(model) == "_Child(alpha=0.5, tol=0.001)"
    with pytest.raises(TypeError):
        _Child(0.5, "log")  # keyword-only
    with pytest.raises(TypeError):
        _Child(gone=2)


def test_declared_options_inherit_constraints_and_init():
    table, _ = constraints_of(_Child)
    assert set(table) == {"alpha", "method", "tol", "callback"}
    assert table["tol"] == [Interval(float, 0, None)]  # the base's, under the new default
    assert _GrandChild.__init__ is _Child.__init__
    assert list(inspect.signature(_Written.__init__).parameters) == ["self", "alpha"]
    with pytest.raises(ValueError, match="tol must be"):
        _Child(tol=-1.0)._validate_params()
    with pytest.raises(ValueError, match="method must be"):
        _Child(method="nope")._validate_params()


def test_a_written_init_with_its_own_table_overrides_the_declared_constraints():
    class Tight(_Base):
        _parameter_constraints = {"tol": [Interval(float, 1, None)]}

        def __init__(self, tol=2.0):
            self.tol = tol

    assert constraints_of(Tight)[0]["tol"] == [Interval(float, 1, None)]
    with pytest.raises(ValueError, match="tol must be"):
        Tight(tol=0.5)._validate_params()


def test_declared_options_clone_and_pickle():
    model = _Child(3.0, method="log", callback=print)
    copy = clone(model)
    assert copy.get_params() == model.get_params() and copy is not model
    back = pickle.loads(pickle.dumps(_Child(3.0, method="log")))
    assert back.get_params() == {"alpha": 3.0, "method": "log", "tol": 1e-9, "callback": None}
    assert _Child.__init__.__qualname__ == "_Child.__init__"


def test_declared_option_needs_constraints():
    with pytest.raises(TypeError, match="'x' has no constraints"):
        class _Bad(ParamsValidationMixin, BaseEstimator):
            _options = {"x": Param(1)}


def test_options_of_shares_a_solvers_declarations():
    from mmopt.registration import ICP, ICPRegistration, NonRigidRegistration
    from mmopt.registration.nonrigid import SPARE

    # The wrapping estimators' defaults are their solvers', read from one declaration.
    for estimator, solver in [(ICPRegistration, ICP), (NonRigidRegistration, SPARE)]:
        shared = set(estimator().get_params()) & set(solver().get_params())
        assert shared and all(getattr(estimator(), name) == getattr(solver(), name)
                              for name in shared)
    assert options_of(_Child, "method")["method"].default == "auto"
    with pytest.raises(KeyError, match="'gone'"):
        options_of(_Child, "method", "gone")
