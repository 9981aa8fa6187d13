"""Helpers shared by test modules of several families, importable as ``_helpers``: the
``pythonpath`` option of pytest in pyproject.toml puts ``tests/_shared/`` on the path (not
``tests/``, whose ``ot/`` folder would shadow POT where POT is not installed)."""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

import mmopt
from mmopt.bilevel import BilevelProblem, LowerLevel, UpperLevel

REPOSITORY = Path(__file__).resolve().parents[2]


def load_repo_script(relative: str, name: str):
    """The script ``relative`` of the repository (e.g. ``benchmarks/run.py``, not in a
    package) loaded from its file as module ``name``; the test is skipped where the tests
    run without that folder (an installed package)."""
    path = REPOSITORY / relative
    if not path.exists():
        pytest.skip(f"no {path.parent.name}/ next to the tests (installed package)")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The kinds of bad array of conftest's ``BAD_ARRAYS``, for parametrizing at import time.
ARRAY_KINDS = ["ragged", "string", "object", "complex", "nan", "inf", "empty", "none"]


def fuzz_settings(max_examples: int, **options) -> settings:
    """Hypothesis settings of the fuzz tests: ``max_examples`` cases drawn the same way on
    every run (derandomized, so a failure reproduces) and no per-example deadline (a loaded
    machine must not fail a test)."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, **options)


def linear_data(seed: int, n: int, coef, noise: float):
    """``X`` (n, len(coef)) standard normal and ``y = X @ coef + noise * N(0, 1)``."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, len(coef)))
    return X, X @ np.asarray(coef, dtype=float) + noise * rng.standard_normal(n)


@contextlib.contextmanager
def no_numpy_warnings():
    """Non-convergence warnings silenced, and any NumPy RuntimeWarning (overflow, division
    by zero) raised: none may leak out of a solve on valid data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mmopt.ConvergenceWarning)
        warnings.simplefilter("error", RuntimeWarning)
        yield


def assert_thread_safe(solver, problems, fields, *, repeats: int = 4, threads: int = 4):
    """One solver shared by ``threads`` threads on ``problems * repeats`` gives, field by
    field, exactly the answers of solving each problem alone, and leaves its options (the
    very same objects) as they were."""
    expected = [solver.solve(problem) for problem in problems]
    before = dict(vars(solver))
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(solver.solve, list(problems) * repeats))
    for i, res in enumerate(results):
        ref = expected[i % len(problems)]
        for name in fields:
            np.testing.assert_array_equal(res[name], ref[name], err_msg=f"{name} of run {i}")
    assert vars(solver).keys() == before.keys()
    assert all(vars(solver)[key] is before[key] for key in before)
    return expected


def shrinkage_lower_level(c, *, x0=None, solver=None, **constants) -> LowerLevel:
    """``Phi(x, theta) = 1/2 ||x - c||^2 + e^theta / 2 ||x||^2``, whose minimizer
    ``x*(theta) = c / (1 + e^theta)`` shrinks ``c``; ``constants`` are the optional
    Lipschitz constants of :class:`~mmopt.bilevel.LowerLevel`."""
    c = np.asarray(c, dtype=float)
    return LowerLevel(
        value=lambda x, th: 0.5 * np.sum((x - c) ** 2) + 0.5 * np.exp(th[0]) * x @ x,
        grad_x=lambda x, th: x - c + np.exp(th[0]) * x,
        hvp_xx=lambda x, th, v: (1.0 + np.exp(th[0])) * v,
        vjp_theta=lambda x, th, q: np.array([np.exp(th[0]) * x @ q]),
        mu=lambda th: 1.0 + np.exp(th[0]),
        x0=np.zeros(c.size) if x0 is None else x0,
        solver=solver,
        **constants,
    )


def distance_upper_level(t) -> UpperLevel:
    """``g(x) = 1/2 ||x - t||^2``."""
    t = np.asarray(t, dtype=float)
    return UpperLevel(lambda x: 0.5 * np.sum((x - t) ** 2), lambda x: x - t, L_g=1.0)


def shrinkage_problem(c=(1.0, 2.0, 3.0), t=(0.5, 0.8, 1.6), *, theta0=2.0,
                      x0=None) -> BilevelProblem:
    """Learn the shrinkage ``e^theta`` of ``x*(theta)`` towards the target ``t``."""
    return BilevelProblem(shrinkage_lower_level(c, x0=x0), distance_upper_level(t),
                          theta0=theta0)
