"""Declarative option constraints: one table per solver or estimator instead of hand checks.

A class lists, for each option, the constraints any one of which the value must satisfy
(``Interval``, ``Options``, ``InstanceOf``, ``None``, ``callable``, ``bool``), and rules that
tie options together (:class:`Rule`). :func:`validate_params` checks them with messages that
name the option; :func:`invalid_values` derives, from the same table, values that must be
rejected, so that tests cover every option without a hand-written list.

A value of the wrong type raises ``TypeError``; a value of an accepted type outside its range
or set raises ``ValueError``, as scikit-learn and scipy do.

A class that only stores its options declares each once, with its default, as a
:class:`Param` in ``_options``; :class:`ParamsValidationMixin` then writes its ``__init__``
(see there), and the options every solver shares (``tol``, ``max_iter``, ...) come from the
base class's table instead of being repeated in each signature.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Constraint",
    "InstanceOf",
    "Interval",
    "Options",
    "Param",
    "ParamsValidationMixin",
    "Rule",
    "constraints_of",
    "invalid_values",
    "options_of",
    "validate_params",
]


class Constraint:
    """One way a value may be valid."""

    def accepts_type(self, value) -> bool:  # pragma: no cover - abstract
        """Whether ``value`` has a type this constraint is about."""
        raise NotImplementedError

    def is_satisfied_by(self, value) -> bool:  # pragma: no cover - abstract
        """Whether ``value`` is valid under this constraint."""
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        """What a valid value is, for error messages (``"an integer in [1, inf)"``)."""
        raise NotImplementedError

    def invalid_values(self) -> list:
        """Values of an accepted type that this constraint rejects."""
        return []

    def valid_value(self):  # pragma: no cover - abstract
        """One value this constraint accepts."""
        raise NotImplementedError


def _is_bool(value) -> bool:
    return isinstance(value, bool | np.bool_)


@dataclass(frozen=True)
class Interval(Constraint):
    """A real or integer number in an interval.

    Parameters
    ----------
    kind : {int, float}
        ``int`` accepts integers only; ``float`` accepts any real number (integers too), which
        must be finite unless a bound is infinite and ``closed`` includes it.
    low, high : float or None
        Bounds; None is unbounded.
    closed : {"both", "left", "right", "neither"}
        Which bounds belong to the interval.

    Examples
    --------
    >>> from mmopt._core.params import Interval
    >>> Interval(float, 0, 1, closed="right").describe()
    'a real number in (0, 1]'
    >>> Interval(int, 1, None).is_satisfied_by(0)
    False
    """

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def __post_init__(self):
        if self.kind not in (int, float):
            raise ValueError(f"kind must be int or float; got {self.kind!r}.")
        if self.closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed must be 'both', 'left', 'right' or 'neither'; got "
                             f"{self.closed!r}.")

    def accepts_type(self, value) -> bool:
        # Plain Python numbers first: options are checked at every solve, and the checks
        # against the numbers ABCs below cost more than the rest of the test.
        kind = type(value)
        if kind is float:
            return self.kind is float
        if kind is int:
            return True
        if _is_bool(value):
            return False
        if self.kind is int:
            return isinstance(value, numbers.Integral)
        return isinstance(value, numbers.Real)

    def is_satisfied_by(self, value) -> bool:
        if not self.accepts_type(value):
            return False
        value = float(value)
        if math.isnan(value) or (math.isinf(value) and self.kind is float
                                 and value not in (self.low, self.high)):
            return False
        if self.low is not None:
            if value < self.low or (value == self.low and self.closed in ("right", "neither")):
                return False
        if self.high is not None:
            if value > self.high or (value == self.high and self.closed in ("left", "neither")):
                return False
        return True

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a real number"
        if self.low is None and self.high is None:
            return what if self.kind is int else f"{what} (finite)"
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        low = "-inf" if self.low is None else _number(self.low)
        high = "inf" if self.high is None else _number(self.high)
        return f"{what} in {left}{low}, {high}{right}"

    def invalid_values(self) -> list:
        out = []
        if self.low is not None:
            if self.closed in ("right", "neither"):
                out.append(self._as_kind(self.low))
            out.append(self._as_kind(self.low - 1) if self.kind is int else self.low - 1.0)
        if self.high is not None:
            if self.closed in ("left", "neither"):
                out.append(self._as_kind(self.high))
            out.append(self._as_kind(self.high + 1) if self.kind is int else self.high + 1.0)
        if self.kind is float:
            out.append(math.nan)
        return [v for v in out if v is not None and not self.is_satisfied_by(v)]

    def _as_kind(self, value):
        if self.kind is int:
            return int(value) if float(value).is_integer() else None
        return float(value)

    def valid_value(self):
        low = self.low if self.low is not None else (self.high - 1 if self.high is not None
                                                     else 0)
        high = self.high if self.high is not None else low + 2
        middle = (low + high) / 2
        value = int(math.ceil(middle)) if self.kind is int else float(middle)
        return value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of strings.

    Examples
    --------
    >>> from mmopt._core.params import Options
    >>> Options({"auto", "log"}).describe()
    "one of 'auto', 'log'"
    """

    choices: frozenset

    def __init__(self, choices: Iterable[str]):
        object.__setattr__(self, "choices", frozenset(choices))

    def accepts_type(self, value) -> bool:
        return isinstance(value, str)

    def is_satisfied_by(self, value) -> bool:
        return isinstance(value, str) and value in self.choices

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in sorted(self.choices))

    def invalid_values(self) -> list:
        return ["not-an-option"]

    def valid_value(self):
        return sorted(self.choices)[0]


@dataclass(frozen=True)
class InstanceOf(Constraint):
    """An instance of some types (``bool`` accepts NumPy booleans too).

    Examples
    --------
    >>> from mmopt._core.params import InstanceOf
    >>> InstanceOf(bool).is_satisfied_by(1)
    False
    """

    types: tuple
    name: str | None = None

    def __init__(self, *types: type, name: str | None = None):
        object.__setattr__(self, "types", tuple(types))
        object.__setattr__(self, "name", name)

    def accepts_type(self, value) -> bool:
        return self.is_satisfied_by(value)

    def is_satisfied_by(self, value) -> bool:
        if bool in self.types and isinstance(value, np.bool_):
            return True
        if _is_bool(value) and bool not in self.types:
            return False
        return isinstance(value, self.types)

    def describe(self) -> str:
        if self.name:
            return self.name
        if self.types == (bool,):
            return "True or False"
        return "an instance of " + " or ".join(t.__name__ for t in self.types)

    def valid_value(self):
        return False if bool in self.types else None


class _NoneConstraint(Constraint):
    def accepts_type(self, value) -> bool:
        return value is None

    def is_satisfied_by(self, value) -> bool:
        return value is None

    def describe(self) -> str:
        return "None"

    def valid_value(self):
        return None


class _CallableConstraint(Constraint):
    def accepts_type(self, value) -> bool:
        return callable(value)

    def is_satisfied_by(self, value) -> bool:
        return callable(value)

    def describe(self) -> str:
        return "a callable"

    def valid_value(self):
        return print


def _as_constraint(spec) -> Constraint:
    """``None``, ``callable`` and ``bool`` are shorthands in the tables."""
    if isinstance(spec, Constraint):
        return spec
    if spec is None:
        return _NoneConstraint()
    if spec is callable:
        return _CallableConstraint()
    if spec is bool:
        return InstanceOf(bool)
    if isinstance(spec, type):
        return InstanceOf(spec)
    raise TypeError(f"not a constraint: {spec!r}")


@dataclass(frozen=True)
class Rule:
    """A constraint between options: ``check(params)`` is False when they clash.

    Parameters
    ----------
    options : tuple of str
        The options the rule reads (named in the message).
    check : callable
        ``check(params) -> bool`` on the dict of all options.
    message : str
        What a valid combination is, e.g. ``"similarity=True needs
        metric='point_to_point'"``.
    """

    options: tuple[str, ...]
    check: Callable[[Mapping[str, Any]], bool]
    message: str


class Param:
    """An option declared once: its default and the constraints its value may meet.

    An entry of a class's ``_options`` table (see :class:`ParamsValidationMixin`).

    Parameters
    ----------
    default : object
        The default value in the generated ``__init__``.
    *constraints
        What the value may be, as in ``_parameter_constraints`` (any one suffices). None
        of them: the constraints a base class declared for the option (a subclass that
        only changes a default).
    positional : bool, default=False
        Whether the option may also be passed by position (scikit-learn's convention for
        an estimator's main parameter, such as ``alpha``); other options are keyword-only.

    Examples
    --------
    >>> from mmopt._core.params import Interval, Param
    >>> Param(1e-6, Interval(float, 0, None))
    Param(1e-06, Interval(kind=<class 'float'>, low=0, high=None, closed='both'))
    """

    __slots__ = ("constraints", "default", "positional")

    def __init__(self, default, *constraints, positional: bool = False):
        self.default = default
        self.constraints = constraints
        self.positional = positional

    def __repr__(self) -> str:
        shown = [repr(self.default), *map(repr, self.constraints)]
        if self.positional:
            shown.append("positional=True")
        return f"Param({', '.join(shown)})"


def _declared(cls: type) -> dict[str, Param]:
    """The ``_options`` of ``cls`` and its bases, resolved: for each option the most derived
    default and constraints, the class's own options first (in declaration order), then
    its bases'; an entry None removes a base's option."""
    merged: dict[str, Param] = {}
    removed: set[str] = set()
    for klass in cls.__mro__:
        for name, param in vars(klass).get("_options", {}).items():
            if name in removed:
                continue
            if param is None:
                removed.add(name)
            elif name not in merged:
                merged[name] = param
            elif not merged[name].constraints and param.constraints:
                first = merged[name]
                merged[name] = Param(first.default, *param.constraints,
                                     positional=first.positional)
    return merged


def options_of(cls: type, *names: str) -> dict[str, Param]:
    """The declared options ``names`` of ``cls`` (defaults and constraints), for a class that
    passes them on to ``cls`` (an estimator to its solver) and so shares their defaults.

    Examples
    --------
    >>> from mmopt._core.params import options_of
    >>> from mmopt.mm import MMSolver
    >>> options_of(MMSolver, "max_iter")
    {'max_iter': Param(1000, Interval(kind=<class 'int'>, low=1, high=None, closed='both'))}
    """
    declared = _declared(cls)
    unknown = [name for name in names if name not in declared]
    if unknown:
        raise KeyError(f"{cls.__name__} declares no option {', '.join(map(repr, unknown))}.")
    return {name: declared[name] for name in names}


@functools.cache
def constraints_of(cls: type) -> tuple[dict[str, list[Constraint]], list[Rule]]:
    """The option table of a class and its bases (a subclass's entry replaces its base's):
    ``_parameter_constraints`` and the constraints of the ``_options`` entries.

    Built once per class (a table does not change after its class is defined); callers must
    not modify what it returns.
    """
    table: dict[str, list[Constraint]] = {}
    rules: list[Rule] = []
    for klass in reversed(cls.__mro__):
        for name, specs in vars(klass).get("_parameter_constraints", {}).items():
            table[name] = [_as_constraint(s) for s in specs]
        for name, param in vars(klass).get("_options", {}).items():
            if param is None:
                table.pop(name, None)
            elif param.constraints:
                table[name] = [_as_constraint(s) for s in param.constraints]
        rules.extend(vars(klass).get("_parameter_rules", ()))
    return table, rules


def _make_init(cls: type, params: Mapping[str, Param]) -> Callable:
    """An ``__init__`` that stores each option under its name, written out as source (as
    :mod:`dataclasses` does) so that it costs what a hand-written one costs and
    ``inspect.signature`` shows the options, as scikit-learn's ``get_params`` needs."""
    for name, param in params.items():
        if not param.constraints:
            raise TypeError(f"{cls.__name__}: option {name!r} has no constraints in its class "
                            "or its bases.")
    positional = [name for name, param in params.items() if param.positional]
    keyword = [name for name, param in params.items() if not param.positional]
    arguments = ["self"] + [f"{name}=_default_{name}" for name in positional]
    if keyword:
        arguments += ["*"] + [f"{name}=_default_{name}" for name in keyword]
    body = "".join(f"    self.{name} = {name}\n" for name in params) or "    pass\n"
    namespace = {f"_default_{name}": param.default for name, param in params.items()}
    exec(f"def __init__({', '.join(arguments)}):\n{body}", namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    return init


def validate_params(table: Mapping[str, list], params: Mapping[str, Any],
                    rules: Iterable[Rule] = (), *, owner: str | None = None) -> None:
    """Check ``params`` against the option table and the rules.

    Raises
    ------
    TypeError
        If a value has a type no constraint accepts (the message names the option).
    ValueError
        If a value has an accepted type but no constraint accepts it, or a rule fails.

    Examples
    --------
    >>> from mmopt._core.params import Interval, validate_params
    >>> validate_params({"tol": [Interval(float, 0, None)]}, {"tol": -1.0})
    Traceback (most recent call last):
    ...
    ValueError: tol must be a real number in [0, inf); got -1.0.
    """
    for name, specs in table.items():
        if name not in params:
            continue
        value = params[name]
        if any(_as_constraint(s).is_satisfied_by(value) for s in specs):
            continue
        constraints = [_as_constraint(s) for s in specs]
        wanted = " or ".join(c.describe() for c in constraints)
        where = f" ({owner})" if owner else ""
        message = f"{name}{where} must be {wanted}; got {value!r}."
        if any(c.accepts_type(value) for c in constraints):
            raise ValueError(message)
        raise TypeError(message[:-1] + f" of type {type(value).__name__}.")
    for rule in rules:
        if not rule.check(params):
            shown = ", ".join(f"{o}={params.get(o)!r}" for o in rule.options)
            raise ValueError(f"{rule.message}; got {shown}.")


class ParamsValidationMixin:
    """``_validate_params`` for a class with ``get_params`` (a solver or a scikit-learn
    estimator): checks its options against the ``_parameter_constraints`` tables and
    ``_parameter_rules`` merged along its bases. A class with checks no table can say
    extends ``_validate_params`` and calls ``super()``.

    A class whose ``__init__`` would only store its options declares them instead in
    ``_options``, a dict of :class:`Param` (default and constraints side by side), and gets
    that ``__init__`` written for it: the options of the class and its bases, keyword-only
    unless declared ``positional``. A subclass's entry replaces its base's (``Param(100)``
    changes only the default; ``None`` removes the option); a subclass without a table of
    its own inherits its base's ``__init__``, and a class that defines ``__init__`` itself
    keeps it.

    Examples
    --------
    >>> from sklearn.base import BaseEstimator
    >>> from mmopt._core.params import Interval, Param, ParamsValidationMixin
    >>> class Model(ParamsValidationMixin, BaseEstimator):
    ...     _parameter_constraints = {"tol": [Interval(float, 0, None)]}
    ...     def __init__(self, tol=1e-6):
    ...         self.tol = tol
    >>> Model(tol=-1.0)._validate_params()
    Traceback (most recent call last):
    ...
    ValueError: tol must be a real number in [0, inf); got -1.0.
    >>> class Declared(ParamsValidationMixin, BaseEstimator):
    ...     _options = {"tol": Param(1e-6, Interval(float, 0, None))}
    >>> Declared(tol=1e-3)
    Declared(tol=0.001)
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "_options" in vars(cls) and "__init__" not in vars(cls):
            cls.__init__ = _make_init(cls, _declared(cls))

    def _validate_params(self) -> None:
        cls = type(self)
        table, rules = constraints_of(cls)
        names = _option_names(cls)
        # Solvers check their options at every solve: read them directly rather than through
        # get_params, which inspects the constructor's signature on each call.
        params = (
            self.get_params(deep=False)
            if names is None
            else {name: getattr(self, name) for name in names}
        )
        validate_params(table, params, rules)


@functools.cache
def _option_names(cls: type) -> tuple[str, ...] | None:
    """The names ``get_params(deep=False)`` returns, found once per class; None when the class
    defines its own ``get_params`` (which is then called)."""
    for klass in cls.__mro__:
        if "get_params" in vars(klass):
            break
    if klass.__module__.split(".")[0] != "sklearn" or not hasattr(cls, "_get_param_names"):
        return None
    return tuple(cls._get_param_names())


class _Unlikely:
    """A value of a type no option accepts."""

    def __repr__(self) -> str:
        return "<object>"


def invalid_values(table: Mapping[str, list]) -> list[tuple[str, Any, type]]:
    """``(option, value, expected error)`` triples that the table must reject.

    For each option: values of an accepted type outside every constraint (``ValueError``)
    and a value of a type no constraint accepts (``TypeError``).
    """
    out = []
    for name, specs in table.items():
        constraints = [_as_constraint(s) for s in specs]
        for constraint in constraints:
            for value in constraint.invalid_values():
                if not any(c.is_satisfied_by(value) for c in constraints):
                    out.append((name, value, ValueError))
        strange = _Unlikely()
        if not any(c.accepts_type(strange) for c in constraints):
            out.append((name, strange, TypeError))
    return out
