"""Option checking shared by the BCD solvers and estimators (their tables are declared on
each class, see :mod:`mmopt._core.params`)."""

from __future__ import annotations

import functools

from mmopt._core.params import constraints_of, validate_params


@functools.cache
def _tables(cls):
    # Built once per class: the table does not change after the class is defined.
    return constraints_of(cls)


def check_options(obj) -> None:
    """Check ``obj``'s options against its class's ``_parameter_constraints`` and
    ``_parameter_rules`` (an option a subclass does not have is skipped)."""
    table, rules = _tables(type(obj))
    params = {name: getattr(obj, name) for name in table if hasattr(obj, name)}
    validate_params(table, params, rules)
