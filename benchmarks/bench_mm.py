"""MM family: Anderson-accelerated vs plain MM, and the built-in estimators vs scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
from _common import best_time, first_index_below, markdown_table
from sklearn.datasets import load_digits
from sklearn.decomposition import NMF
from sklearn.linear_model import HuberRegressor, LinearRegression

from mmopt import ConvergenceWarning
from mmopt.datasets import load_diabetes_with_outliers, make_regression_with_outliers
from mmopt.mm import MMNMF, MMRobustRegressor, MMSolver
from mmopt.mm.nmf import NMFProblem
from mmopt.mm.robust_regression import RobustRegressionProblem, mad_scale


def _solve(problem, anderson, max_iter, tol, x0=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return MMSolver(anderson=anderson, tol=tol, max_iter=max_iter).solve(problem, x0=x0)


def _time_to(problem, anderson, k, tol, x0, repeat):
    """Best of ``repeat`` wall times of the first ``k`` iterations (the same iterates each
    time: the solves are deterministic)."""
    return min(_solve(problem, anderson, k, tol, x0).history["time"][k - 1]
               for _ in range(repeat))


def _anderson_row(label, problem, *, max_iter, tol, x0=None, rtol=None, repeat=3):
    """Cost for plain MM and MM+AA (same problem, same start) to reach the same objective.

    With ``rtol`` (converged runs), the target is the best final objective of the two runs
    plus ``rtol`` relative, and both counts are first hits of it; without (fixed budgets),
    the target is the objective plain MM ends at after ``max_iter`` iterations. Times are
    the best of ``repeat`` runs up to the hit (one run is too noisy for a ratio).
    """
    plain = _solve(problem, False, max_iter, tol, x0)
    fast = _solve(problem, True, max_iter, tol, x0)
    if rtol is None:
        target, k_plain = plain.fun, plain.nit
    else:
        best = min(plain.fun, fast.fun)
        target = best + rtol * abs(best)
        k_plain = first_index_below(plain.history["fun"], target)
    k_fast = first_index_below(fast.history["fun"], target)
    row = {
        "problem": label,
        "plain iters": k_plain,
        "AA iters": k_fast,
        "iter ratio": None,
        "eval ratio": None,
        "time ratio": None,
        "AA final <= plain final": bool(fast.fun <= plain.fun + 1e-12 * abs(plain.fun)),
        "AA accepted/rejected": f"{fast.n_accepted}/{fast.n_rejected}",
    }
    if k_fast is not None and k_plain is not None:
        row["iter ratio"] = k_fast / k_plain
        row["eval ratio"] = (
            fast.history["n_evaluations"][k_fast - 1] / plain.history["n_evaluations"][k_plain - 1]
        )
        row["time ratio"] = (_time_to(problem, True, k_fast, tol, x0, repeat)
                             / _time_to(problem, False, k_plain, tol, x0, repeat))
    return row


def _robust_problems(quick):
    X, y, _ = load_diabetes_with_outliers(outlier_fraction=0.1, random_state=0)
    problems = []
    for loss in ("huber", "cauchy", "welsch"):
        for divisor in (1, 5):
            # The estimator's robust scale, and a fifth of it (the slow IRLS regime).
            scale = MMRobustRegressor(loss=loss).fit(X, y).scale_ / divisor
            huber = RobustRegressionProblem(X, y, loss="huber", scale=scale)
            start = None if loss == "huber" else _solve(huber, True, 500, 1e-12).x
            problems.append(
                (f"robust {loss}, diabetes+10% outliers, scale/{divisor}",
                 RobustRegressionProblem(X, y, loss=loss, scale=scale), start)
            )
    n = 500 if quick else 5000
    Xg, yg, _, _ = make_regression_with_outliers(
        n_samples=n, n_features=20, outlier_fraction=0.3, random_state=1
    )
    scale = mad_scale(yg - LinearRegression().fit(Xg, yg).predict(Xg))
    huber = RobustRegressionProblem(Xg, yg, loss="huber", scale=scale)
    problems.append(
        (f"robust welsch, generated n={n} p=20, 30% outliers",
         RobustRegressionProblem(Xg, yg, loss="welsch", scale=scale),
         _solve(huber, True, 500, 1e-12).x)
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
    repeat = 1 if quick else 3
    for label, problem, start in _robust_problems(quick):
        rows.append(
            _anderson_row(label, problem, max_iter=20_000, tol=1e-12, x0=start, rtol=1e-10,
                          repeat=2 * repeat)
        )
    for label, problem in _nmf_problems(quick):
        for budget in (300, 1000) if quick else (500, 2000):
            rows.append(
                _anderson_row(f"{label}, {budget} iterations", problem, max_iter=budget,
                              tol=0.0, repeat=repeat)
            )
    return (
        "## Anderson-accelerated vs plain MM\n\n"
        "Same problem, same start. Robust regression: both run to convergence and the "
        "columns count the iterations each needs to come within 1e-10 (relative) of the best "
        "objective found; Cauchy/Welsch start from the Huber fit, as the estimator does; "
        "`scale/1` is the estimator's robust scale, `scale/5` a slow IRLS regime. NMF: plain "
        "MM runs a fixed budget of sweeps and the columns count what MM+AA needs to reach "
        "plain MM's final objective. Ratios are MM+AA over plain MM; the time ratio (best of "
        f"{repeat} runs each, {2 * repeat} for the short robust fits) includes the Anderson "
        "overhead and the extra evaluation of every rejected extrapolation. "
        "Must show: iteration ratio <= 0.5.\n\n" + markdown_table(rows)
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
        "a MAD scale and IRLS with Anderson acceleration; its iterations count every IRLS "
        "solve of the fit (the Huber passes that estimate the scale, then the final "
        "fit).\n\n" + markdown_table(rows)
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
    # Accelerated: time to reach sklearn's objective after n_iter iterations, as the best of
    # `repeat` whole fits stopped at the first iteration that reaches it.
    fast = MMNMF(k, init="custom", anderson=True, tol=0.0, max_iter=n_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fast.fit(digits, W=W0, H=H0)
        k_hit = first_index_below(fast.result_.history["fun"], f_sk)
        t_fast = None
        if k_hit is not None:
            fast.set_params(max_iter=k_hit)
            t_fast = best_time(lambda: fast.fit(digits, W=W0, H=H0), repeat=repeat)
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
