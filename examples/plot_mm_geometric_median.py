r"""
The geometric median by MM: Weiszfeld's algorithm, with Anderson acceleration
=============================================================================

The geometric median of points :math:`a_1, \dots, a_n` minimizes the sum of distances

.. math::

   F(x) = \sum_{i=1}^n \|x - a_i\|.

It is a robust centre: unlike the mean, moving a few points far away barely moves it. There
is no closed form, and :math:`F` is not differentiable at the data points.

**Weiszfeld's algorithm is majorization-minimization.** At the current point :math:`x_k`,
write :math:`d_i = \|x_k - a_i\|`. For :math:`d_i > 0` the inequality between the arithmetic
and geometric means gives a quadratic that lies above each distance and touches it at
:math:`x_k`:

.. math::

   \|x - a_i\| \le \frac{\|x - a_i\|^2}{2 d_i} + \frac{d_i}{2}.

Summing these, the surrogate is a weighted sum of squares whose minimizer is the weighted mean
:math:`T(x_k) = \sum_i w_i a_i / \sum_i w_i` with :math:`w_i = 1 / d_i`: one step of
Weiszfeld's iteration.

**The singularity.** When :math:`x_k` *is* a data point, some :math:`d_i` are zero and the
quadratic bound does not exist. Capping the weights (``1 / max(d_i, 1e-12)``) is a common
patch, and a wrong one: the huge weight pins the next iterate to the data point, and the
iteration stalls there whether or not that point is the median. The MM view gives the right
step. Keep the :math:`\eta` distances with :math:`d_i = 0` exactly as they are, since
:math:`\|x - a_i\| = \|x - x_k\|` for them (still a valid majorizer: equal, not just above),
and majorize only the others. The surrogate becomes

.. math::

   Q(x \mid x_k) = \eta \|x - x_k\| + \frac{W}{2} \|x - \tilde T(x_k)\|^2 + \text{const},
   \qquad W = \sum_{d_i > 0} w_i,

where :math:`\tilde T` is the weighted mean over the points with :math:`d_i > 0`. Its
minimizer is a shrinkage of the Weiszfeld step towards :math:`x_k`. With the "pull" of the
other points :math:`R = \sum_{d_i > 0} (a_i - x_k) / d_i = W (\tilde T(x_k) - x_k)`,

.. math::

   x_{k+1} = \begin{cases}
       x_k & \text{if } \|R\| \le \eta \quad (x_k \text{ is the median}), \\
       x_k + \left(1 - \eta / \|R\|\right) (\tilde T(x_k) - x_k) & \text{otherwise,}
   \end{cases}

which is the modification of Weiszfeld's algorithm by Vardi and Zhang (2000), here obtained
as an exact surrogate minimizer. :math:`\|R\| \le \eta` is exactly the optimality condition
of :math:`F` at a data point of multiplicity :math:`\eta`.

mmopt only needs :math:`F` and this minimizer (:class:`mmopt.mm.MMProblem`); the solver adds
the loop, the stopping test, the history and, optionally, safeguarded Anderson acceleration.
The data are the petal length and width of the 150 iris flowers, measured to the millimetre,
so several flowers share the same point.
"""

import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_iris

import mmopt
from mmopt.mm import MMProblem

iris = load_iris()
points = iris.data[:, 2:4]  # petal length, petal width (cm)
# Two points closer than this are treated as equal: far below the data's precision, and far
# above the rounding error of a distance.
coincide = 1e-12 * float(np.std(points))


def objective(x):
    """F(x), the sum of the distances from x to the points."""
    return float(np.linalg.norm(points - x, axis=1).sum())


def surrogate_minimizer(x):
    """Minimizer of the majorizer of F built at x (Weiszfeld, exact at the data points)."""
    offsets = points - x
    distances = np.linalg.norm(offsets, axis=1)
    at_x = distances <= coincide
    weights = 1.0 / distances[~at_x]
    weiszfeld = weights @ points[~at_x] / weights.sum()
    eta = np.count_nonzero(at_x)
    if eta == 0:
        return weiszfeld
    pull = np.linalg.norm(weights @ offsets[~at_x])
    if pull <= eta:
        return x.copy()  # x is a data point and the median: the surrogate's minimum is at x
    return x + (1.0 - eta / pull) * (weiszfeld - x)


# %%
# A start at a data point
# -----------------------
# A natural start is the *medoid*, the data point with the smallest :math:`F`. Being a data
# point, it is exactly where the plain Weiszfeld step is undefined. Here it is also shared
# by two flowers (:math:`\eta = 2`).
start = points[np.argmin([objective(p) for p in points])]
print(
    f"start (medoid): {start}, shared by {np.sum(np.all(points == start, axis=1))} flowers, "
    f"F = {objective(start):.6f}"
)


def capped_weiszfeld(x):
    """The common patch: cap the weights. Pins the iterate to a data point."""
    weights = 1.0 / np.maximum(np.linalg.norm(points - x, axis=1), 1e-12)
    return weights @ points / weights.sum()


# %%
# Solving with and without Anderson acceleration
# ----------------------------------------------
# A reference value :math:`F^\star` comes from a run at a much tighter tolerance. The
# gradient of :math:`F` at the solution (the sum of unit vectors from the points) confirms
# that it is a stationary point away from the data.
problem = MMProblem(objective, surrogate_minimizer, x0=start)
reference = mmopt.solve(problem, tol=1e-15, max_iter=10_000)
f_star = reference.fun
gradient = -((points - reference.x) / np.linalg.norm(points - reference.x, axis=1)[:, None])
print(f"F* = {f_star:.12f}, |grad F(x*)| = {np.linalg.norm(gradient.sum(axis=0)):.1e}")

runs = {}
timings = {}
for name, prob, anderson in (
    ("MM (Weiszfeld)", problem, False),
    ("MM + Anderson", problem, True),
    ("capped weights", MMProblem(objective, capped_weiszfeld, x0=start), False),
):
    tic = time.perf_counter()
    runs[name] = mmopt.solve(prob, anderson=anderson, tol=1e-10, max_iter=1000)
    timings[name] = time.perf_counter() - tic

header = f"{'method':16s} {'status':>6s} {'iterations':>10s} {'evaluations':>11s} "
header += f"{'accepted':>8s} {'rejected':>8s} {'F - F*':>9s} {'ms':>6s}"
print(header)
print("-" * len(header))
for name, res in runs.items():
    print(
        f"{name:16s} {res.status:6d} {res.nit:10d} {res.n_evaluations:11d} "
        f"{res.n_accepted:8d} {res.n_rejected:8d} {max(res.fun - f_star, 0.0):9.1e} "
        f"{1e3 * timings[name]:6.1f}"
    )

# %%
# Both correct runs reach the median (their gaps are at the rounding level of :math:`F`,
# about :math:`10^{-14}`). Anderson acceleration needs several times fewer iterations, and
# every extrapolated point passed the safeguard (the objective went down). An "evaluation"
# is one call of the MM map; a rejected extrapolation would cost one more.
#
# The capped map reports success after a single iteration, at the start: the step it takes
# is about :math:`10^{-12}` long, below any tolerance. Its objective is still far above
# :math:`F^\star`. Stalling at a data point that is not the median is the classic failure
# of Weiszfeld's algorithm, and the exact surrogate minimizer above avoids it.
#
# Convergence, and the median against the mean
# --------------------------------------------
fig, (ax_gap, ax_points) = plt.subplots(1, 2, figsize=(11, 4.2))
floor = 1e-16 * f_star  # rounding level of F
for name in ("MM (Weiszfeld)", "MM + Anderson"):
    res = runs[name]
    values = np.concatenate([[objective(start)], res.history["fun"]])
    ax_gap.semilogy(np.arange(values.size), np.maximum(values - f_star, floor), ".-", label=name)
ax_gap.axhline(
    runs["capped weights"].fun - f_star,
    color="0.5",
    ls="--",
    label="capped weights (stalls at the start)",
)
ax_gap.set_xlabel("iteration")
ax_gap.set_ylabel(r"$F(x_k) - F^\star$")
ax_gap.set_title("Convergence from the medoid", fontsize=10)
ax_gap.legend(fontsize=8, loc="center right")

jitter = np.random.default_rng(0).uniform(-0.03, 0.03, points.shape)  # reveal duplicates
for label, species in enumerate(iris.target_names):
    mine = iris.target == label
    ax_points.scatter(*(points[mine] + jitter[mine]).T, s=10, alpha=0.6, label=species)
ax_points.scatter(*points.mean(axis=0), marker="X", s=120, c="k", label="mean")
ax_points.scatter(
    *runs["MM + Anderson"].x, marker="*", s=220, c="C3", edgecolor="k", label="geometric median"
)
ax_points.scatter(
    *start, marker="o", s=90, facecolor="none", edgecolor="k", label="start (medoid)"
)
ax_points.set_xlabel("petal length (cm)")
ax_points.set_ylabel("petal width (cm)")
ax_points.set_title("Iris petals (jittered by 0.3 mm to show repeats)", fontsize=10)
ax_points.legend(fontsize=8, loc="upper left")
fig.tight_layout()
plt.show()

# %%
# The mean sits between the setosa cluster and the others, in a region with few flowers;
# the median stays within the bulk of the versicolor and virginica flowers, which are two
# thirds of the data.
#
# References: E. Weiszfeld, "Sur le point pour lequel la somme des distances de n points
# donnés est minimum", *Tohoku Math. J.* 43, 1937. Y. Vardi and C.-H. Zhang, "The
# multivariate L1-median and associated data depth", *PNAS* 97(4), 2000.
