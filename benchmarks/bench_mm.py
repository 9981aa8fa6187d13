"""MM family: Anderson-accelerated vs plain MM, and the built-in estimators vs scikit-learn."""

from __future__ import annotations

import time
import warnings

import numpy as np
from _common import best_time, first_index_below, markdown_table
from mmopt.mm.nmf import NMFProblem
from sklearn.datasets import load_digits
from sklearn.decomposition import NMF
from sklearn.linear_model import HuberRegressor, LinearRegression

from mmopt import ConvergenceWarning
from mmopt.datasets import load_diabetes_with_outliers, make_regression_with_outliers
from mmopt.mm import MMNMF, MMRobustRegressor, MMSolver
from mmopt.mm.robust_regression import RobustRegressionProblem, mad_scale


def _solve(problem, anderson, max_iter, tol, x0=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return MMSolver(anderson=anderson, tol=tol, max_iter=max_iter).solve(problem, x0=x0)


def _anderson_row(label, problem, *, max_iter, tol, x0=None):
    """Cost for MM+AA to reach the objective plain MM ends at (same start, same problem)."""
    plain = _solve(problem, False, max_iter, tol, x0)
    fast = _solve(problem, True, max_iter, tol, x0)
    target = plain.fun
    k = first_index_below(fast.history["fun"], target)
    if k is None:
        return {
            "problem": label,
            "plain iters": plain.nit,
            "AA iters": None,
            "iter ratio": None,
            "eval ratio": None,
            "time ratio": None,
            "AA final <= plain final": bool(fast.fun <= plain.fun),
            "AA accepted/rejected": f"{fast.n_accepted}/{fast.n_rejected}",
        }
    evals = fast.history["n_evaluations"][k - 1]
    return {
        "problem": label,
        "plain iters": plain.nit,
        "AA iters": k,
        "iter ratio": k / plain.nit,
        "eval ratio": evals / plain.n_evaluations,
        "time ratio": fast.history["time"][k - 1] / plain.history["time"][-1],
        "AA final <= plain final": bool(fast.fun <= plain.fun * (1 + 1e-12)),
        "AA accepted/rejected": f"{fast.n_accepted}/{fast.n_rejected}",
    }


def _robust_problems(quick):
    X, y, _ = load_diabetes_with_outliers(outlier_fraction=0.1, random_state=0)
    problems = []
    for loss in ("huber", "cauchy", "welsch"):
        scale = mad_scale(y - LinearRegression().fit(X, y).predict(X))
        huber = RobustRegressionProblem(X, y, loss="huber", scale=scale)
        start = _solve(huber, True, 500, 1e-12).x
        problems.append(
            (f"robust {loss}, diabetes+10% outliers",
             RobustRegressionProblem(X, y, loss=loss, scale=scale), start)
        )
    n = 500 if quick else 5000
    Xg, yg, _, _ = make_regression_with_outliers(
        n_samples=n, n_features=20, outlier_fraction=0.3, random_state=1
    )
    scale = mad_scale(yg - LinearRegression().fit(Xg, yg).predict(Xg))
    problems.append(
        (f"robust welsch, generated n={n} p=20, 30% outliers",
         RobustRegressionProblem(Xg, yg, loss="welsch", scale=scale), None)
    )
    return problems


def _nmf_problems(quick):
    digits = load_digits().data
    if quick:
        digits = digits[:500]
    rng = np.random.default_rng(0)
    out = []
    for k in (10, 20):
        avg = np.sqrt(digits.mean() / k)
        W0 = avg * rng.random((digits.shape[0], k))
        H0 = avg * rng.random((k, digits.shape[1]))
        out.append(
            (f"NMF frobenius, digits {digits.shape[0]}x64, k={k}",
             NMFProblem(digits, W0, H0, loss="frobenius"))
        )
    W0 = rng.random((digits.shape[0], 10))
    H0 = rng.random((10, digits.shape[1]))
    out.append(
        (f"NMF kullback-leibler, digits {digits.shape[0]}x64, k=10",
         NMFProblem(digits, W0, H0, loss="kullback-leibler"))
    )
    return out


def _anderson_section(quick):
    rows = []
    for label, problem, start in _robust_problems(quick):
        rows.append(_anderson_row(label, problem, max_iter=20_000, tol=1e-10, x0=start))
    for label, problem in _nmf_problems(quick):
        rows.append(_anderson_row(label, problem, max_iter=500 if quick else 2000, tol=0.0))
    return (
        "## Anderson-accelerated vs plain MM\n\n"
        "Same problem, same start. Plain MM runs to `tol=1e-10` (robust regression) or for a "
        "fixed number of iterations (NMF, `tol=0`); the ratios are the iterations, MM-map "
        "evaluations and time MM+AA needs to reach the objective plain MM ended at. Robust "
        "Cauchy/Welsch start from the Huber fit, as the estimator does. Must show: iteration "
        "ratio <= 0.5.\n\n" + markdown_table(rows)
    )


def _huber_section(quick):
    X, y, outliers = load_diabetes_with_outliers(outlier_fraction=0.1, random_state=0)
    clean = LinearRegression().fit(X[~outliers], y[~outliers]).coef_
    repeat = 3 if quick else 7
    ours = MMRobustRegressor(loss="huber", tol=1e-8)
    theirs = HuberRegressor(epsilon=1.345, alpha=0.0, max_iter=1000)
    t_ours = best_time(lambda: ours.fit(X, y), repeat=repeat)
    t_theirs = best_time(lambda: theirs.fit(X, y), repeat=repeat)

    def err(coef):
        return float(np.linalg.norm(coef - clean) / np.linalg.norm(clean))

    rows = [
        {
            "estimator": "mmopt MMRobustRegressor(loss='huber')",
            "fit time / sklearn": t_ours / t_theirs,
            "coef error vs clean OLS": err(ours.coef_),
            "iterations": ours.n_iter_,
        },
        {
            "estimator": "sklearn HuberRegressor(epsilon=1.345, alpha=0)",
            "fit time / sklearn": 1.0,
            "coef error vs clean OLS": err(theirs.coef_),
            "iterations": int(theirs.n_iter_),
        },
    ]
    return (
        "## Robust regression: MMRobustRegressor vs scikit-learn HuberRegressor\n\n"
        "Diabetes (442x10) with 10% of the targets replaced by gross outliers; coefficient "
        "error relative to least squares on the clean samples only. Best of "
        f"{repeat} fits each. HuberRegressor estimates the scale jointly (L-BFGS), mmopt uses "
        "a MAD scale and IRLS with Anderson acceleration.\n\n" + markdown_table(rows)
    )


def _nmf_section(quick):
    digits = load_digits().data
    k, n_iter = 10, (100 if quick else 300)
    rng = np.random.default_rng(0)
    avg = np.sqrt(digits.mean() / k)
    W0 = avg * rng.random((digits.shape[0], k))
    H0 = avg * rng.random((k, digits.shape[1]))
    repeat = 3 if quick else 5
    sk = NMF(k, solver="mu", init="custom", tol=0.0, max_iter=n_iter, beta_loss="frobenius")
    ours = MMNMF(k, init="custom", anderson=False, tol=0.0, max_iter=n_iter)

    def fit_sklearn():
        sk.fit_transform(digits, W=W0.copy(), H=H0.copy())

    def fit_ours():
        ours.fit(digits, W=W0, H=H0)

    t_sk = best_time(fit_sklearn, repeat=repeat)
    t_ours = best_time(fit_ours, repeat=repeat)
    f_sk = 0.5 * sk.reconstruction_err_**2
    f_ours = 0.5 * ours.reconstruction_err_**2
    # Accelerated: time to reach sklearn's objective after n_iter iterations.
    fast = MMNMF(k, init="custom", anderson=True, tol=0.0, max_iter=n_iter)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fast.fit(digits, W=W0, H=H0)
    t_fast_total = time.perf_counter() - start
    k_hit = first_index_below(fast.result_.history["fun"], f_sk)
    t_fast = None if k_hit is None else fast.result_.history["time"][k_hit - 1]
    rows = [
        {
            "run": f"MMNMF(anderson=False), {n_iter} iterations",
            "objective rel. diff vs sklearn": abs(f_ours - f_sk) / f_sk,
            "time per iteration / sklearn": t_ours / t_sk,
        },
        {
            "run": f"MMNMF(anderson=True): time to sklearn's {n_iter}-iteration objective",
            "objective rel. diff vs sklearn": None,
            "time per iteration / sklearn": None,
            "time / sklearn": None if t_fast is None else t_fast / t_sk,
            "iterations": k_hit,
        },
    ]
    rows[0]["time / sklearn"] = t_ours / t_sk
    rows[0]["iterations"] = n_iter
    del t_fast_total
    return (
        "## NMF: MMNMF vs scikit-learn NMF(solver='mu')\n\n"
        f"Digits (1797x64), k={k}, the same random initial factors, Frobenius loss, sklearn "
        f"with `tol=0, max_iter={n_iter}`. Best of {repeat} fits each. Must show: the same "
        "objective within 1e-4 relative and time per iteration ratio <= 1.\n\n"
        + markdown_table(rows)
    )


def run(quick: bool = False) -> str:
    return "\n\n".join(
        ["# Majorization-minimization", _anderson_section(quick), _huber_section(quick),
         _nmf_section(quick)]
    )
