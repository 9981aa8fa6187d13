"""
Anderson-accelerated MM on the built-in problems
================================================

Majorization-minimization never increases the objective, but it often crawls. Here the two
built-in MM problems are solved from the same start with plain MM and with safeguarded
Anderson acceleration, and the objective gap is plotted against the number of MM-map
evaluations (an Anderson rejection costs one extra evaluation, so this is the fair axis).

- Robust (Welsch) regression on the diabetes data with 10% of the targets replaced by gross
  outliers, at a small scale where iteratively reweighted least squares is slow.
- Non-negative matrix factorization of the digits images (Frobenius loss, 10 components).
"""

import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from mmopt.datasets import load_diabetes_with_outliers
from mmopt.mm import MMRobustRegressor, MMSolver, NMFProblem, RobustRegressionProblem

# %%
# Robust regression
# -----------------
# The estimator finds a robust (MAD) scale; we then solve the Welsch problem at a fifth of
# it, a regime where the IRLS weights change a lot from one iteration to the next.
X, y, outliers = load_diabetes_with_outliers(outlier_fraction=0.1, random_state=0)
scale = MMRobustRegressor(loss="welsch").fit(X, y).scale_ / 5
problem = RobustRegressionProblem(X, y, loss="welsch", scale=scale)
start = RobustRegressionProblem(X, y, loss="huber", scale=scale).solve(tol=1e-3).x
robust = {
    name: MMSolver(anderson=anderson, tol=1e-12, max_iter=5000).solve(problem, x0=start)
    for name, anderson in (("MM", False), ("MM + Anderson", True))
}

# %%
# Non-negative matrix factorization
# ---------------------------------
digits = load_digits().data
rng = np.random.default_rng(0)
k = 10
avg = np.sqrt(digits.mean() / k)
nmf = NMFProblem(digits, avg * rng.random((digits.shape[0], k)), avg * rng.random((k, 64)))
# Both runs get the same budget of 800 sweeps (tol=0), so the warning that max_iter was
# reached is expected here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=UserWarning)
    factorizations = {
        name: MMSolver(anderson=anderson, tol=0.0, max_iter=800).solve(nmf)
        for name, anderson in (("MM", False), ("MM + Anderson", True))
    }

# %%
# Convergence
# -----------
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, runs, title in (
    (axes[0], robust, "Welsch regression, diabetes + 10% outliers"),
    (axes[1], factorizations, "NMF of digits, k = 10"),
):
    best = min(r.fun for r in runs.values())
    for name, res in runs.items():
        gap = np.maximum(res.history["fun"] - best, 1e-16 * abs(best))
        ax.semilogy(res.history["n_evaluations"], gap, label=name)
    ax.set_xlabel("MM-map evaluations")
    ax.set_ylabel("F(x) - F(best)")
    ax.set_title(title, fontsize=10)
    ax.legend()
fig.tight_layout()

for label, runs in (("robust regression", robust), ("NMF", factorizations)):
    for name, res in runs.items():
        print(
            f"{label:18s} {name:14s} iterations={res.nit:5d} evaluations={res.n_evaluations:5d} "
            f"objective={res.fun:.8g} accepted={res.n_accepted} rejected={res.n_rejected}"
        )
