"""Target-based surrogates (SSO) vs scikit-learn's SGD and scipy's L-BFGS, per gradient.

Every method minimizes the same objective, the mean loss plus ``alpha / 2 ||w||^2`` (the
intercept unpenalized): SGDClassifier/SGDRegressor's with ``penalty="l2"``. The cost unit is
the per-sample gradient of the loss (one epoch = n of them): SSO counts them in
``Result.n_target_gradients``, SGD uses n per epoch (``partial_fit`` over the data with its
default schedule), L-BFGS n per function-and-gradient evaluation.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from _common import markdown_table
from scipy.optimize import minimize
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, make_classification
from sklearn.linear_model import SGDClassifier, SGDRegressor
from sklearn.preprocessing import StandardScaler

from mmopt import ConvergenceWarning
from mmopt.mm import SSO, LinearTargetModel, TargetSurrogateProblem

LEVELS = (1e-2, 1e-4, 1e-8)
BUDGETS = (1, 5, 20)


def _problems(quick: bool):
    scale = StandardScaler()
    X, y = load_breast_cancer(return_X_y=True)
    yield "breast_cancer (569 x 30), logistic, alpha=1e-3", "logistic", scale.fit_transform(X), \
        y.astype(float), 1e-3
    X, y = load_digits(return_X_y=True)
    yield "digits, 0-4 vs 5-9 (1797 x 64), logistic, alpha=1e-3", "logistic", \
        scale.fit_transform(X), (y >= 5).astype(float), 1e-3
    X, y = load_diabetes(return_X_y=True)
    yield "diabetes (442 x 10), squared, alpha=1e-3", "squared", scale.fit_transform(X), \
        (y - y.mean()) / y.std(), 1e-3
    n = 4000 if quick else 40000
    X, y = make_classification(n, 50, n_informative=20, flip_y=0.05, random_state=0)
    yield f"make_classification ({n} x 50), logistic, alpha=1e-4", "logistic", X, \
        y.astype(float), 1e-4


def _curve_sso(problem, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = SSO(**options).solve(problem)
    epochs = res.history["n_target_gradients"] / problem.n_samples
    return epochs, res.history["fun"], res.history["time"]


def _curve_lbfgs(problem, max_evals):
    model, n = problem.model, problem.n_samples
    log = []
    start = time.perf_counter()

    def fun_and_grad(theta):
        Z = model.predict(theta, problem.X)
        grad = model.vjp(theta, problem.X, problem.loss.gradient(Z) / n)
        value = problem.loss.value(Z) + problem.penalty(theta)
        log.append((value, time.perf_counter() - start))
        return value, grad + problem.alpha * problem.mask * theta

    minimize(fun_and_grad, problem.initial_point(), jac=True, method="L-BFGS-B",
             options={"maxfun": max_evals, "maxiter": max_evals, "gtol": 1e-14, "ftol": 0.0})
    values, times = np.array(log).T
    return np.arange(1, len(values) + 1, dtype=float), values, times


def _curve_sgd(problem, loss, max_epochs, seed=0):
    X, y, alpha = problem.X, problem.loss.Y[:, 0], problem.alpha
    if loss == "logistic":
        sgd = SGDClassifier(loss="log_loss", alpha=alpha, random_state=seed)
        fit = lambda: sgd.partial_fit(X, y, classes=np.array([0.0, 1.0]))  # noqa: E731
    else:
        sgd = SGDRegressor(alpha=alpha, random_state=seed)
        fit = lambda: sgd.partial_fit(X, y)  # noqa: E731
    values, times, elapsed = [], [], 0.0
    for _ in range(max_epochs):
        start = time.perf_counter()
        fit()
        elapsed += time.perf_counter() - start
        theta = np.concatenate([np.ravel(sgd.coef_), np.ravel(sgd.intercept_)])
        values.append(problem.objective(theta))
        times.append(elapsed)
    return np.arange(1.0, max_epochs + 1), np.array(values), np.array(times)


def _repeated(curve, *args, repeat=3, **kwargs):
    """The curve of a deterministic run, with the fastest of ``repeat`` timings per point
    (the first run also pays one-off costs: scipy's L-BFGS-B takes ~0.7 s on its first call
    here)."""
    runs = [curve(*args, **kwargs) for _ in range(repeat)]
    epochs, values, _ = runs[0]
    return epochs, values, np.min([times for _, _, times in runs], axis=0)


def _first(epochs, values, times, target):
    hits = np.flatnonzero(values <= target)
    return (None, None) if hits.size == 0 else (epochs[hits[0]], times[hits[0]])


def _at_budget(epochs, values, budget):
    seen = np.flatnonzero(epochs <= budget + 1e-9)
    return None if seen.size == 0 else values[seen[-1]]


def _section(label, loss, X, y, alpha, quick):
    problem = TargetSurrogateProblem(LinearTargetModel(), loss, X, y, alpha=alpha)
    minibatch = TargetSurrogateProblem(LinearTargetModel(), loss, X, y, alpha=alpha, n_inner=1)
    armijo = TargetSurrogateProblem(LinearTargetModel(), loss, X, y, alpha=alpha, inner="gd",
                                    n_inner=3)
    max_epochs = 10 if quick else 50
    curves = {
        "SSO full batch (exact inner, Anderson)": _repeated(
            _curve_sso, problem, tol=1e-13, max_iter=2000),
        "SSO full batch, no Anderson": _repeated(
            _curve_sso, problem, anderson=False, tol=1e-13, max_iter=2000),
        "SSO minibatch 32, paper's surrogate (exact projection)": _repeated(
            _curve_sso, problem, batch_size=32, max_iter=max_epochs, random_state=0),
    }
    if X.shape[0] <= 5000:  # each inner step evaluates the model on all rows
        curves["SSO minibatch 32, paper's surrogate (3 Armijo steps)"] = _repeated(
            _curve_sso, armijo, batch_size=32, max_iter=max_epochs, random_state=0)
    curves |= {
        "SSO minibatch 32, minibatch-only surrogate (1 Armijo step)": _repeated(
            _curve_sso, minibatch, batch_size=32, max_iter=max_epochs, random_state=0,
            projection="batch"),
        "scipy L-BFGS-B": _repeated(_curve_lbfgs, problem, 2000),
        "sklearn SGD (partial_fit epochs)": _repeated(_curve_sgd, problem, loss, max_epochs),
    }
    best = min(float(np.min(c[1])) for c in curves.values())
    rows = []
    for method, (epochs, values, times) in curves.items():
        row = {"method": method}
        for budget in BUDGETS:
            value = _at_budget(epochs, values, budget)
            row[f"subopt @ {budget} ep"] = None if value is None else \
                f"{(value - best) / abs(best):.1e}"
        for level in LEVELS:
            hit_epochs, hit_time = _first(epochs, values, times, best + level * abs(best))
            row[f"ep to {level:g}"] = None if hit_epochs is None else f"{hit_epochs:g}"
            row[f"ms to {level:g}"] = None if hit_time is None else f"{1e3 * hit_time:.1f}"
        rows.append(row)
    return f"### {label}\n\nf* = {best:.10g} (best value any method reached).\n\n" + \
        markdown_table(rows)


def run(quick: bool = False) -> str:
    parts = [
        "## Target-based surrogates (SSO) vs SGD and L-BFGS",
        "",
        "Same objective for every method (mean loss + alpha/2 ||w||^2, intercept free). Cost "
        "in epochs of per-sample loss gradients (SSO's `n_target_gradients` / n; SGD: one "
        "`partial_fit` pass = 1 epoch; L-BFGS: one function+gradient evaluation = 1 epoch). "
        "`subopt @ k ep`: relative suboptimality (f - f*)/f* after k epochs' worth of "
        "gradients; `ep to eps` / `ms to eps`: epochs and wall milliseconds to reach "
        "(f - f*)/f* <= eps (empty: not reached within the budget: 2000 MM steps or "
        "L-BFGS evaluations, 50 epochs for the stochastic methods). Wall times include "
        "each method's own bookkeeping (SGD's excludes the objective evaluations done for "
        "this table); each is the fastest of 3 identical runs.",
        "",
    ]
    for label, loss, X, y, alpha in _problems(quick):
        parts.append(_section(label, loss, X, y, alpha, quick))
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(run(quick=True))
