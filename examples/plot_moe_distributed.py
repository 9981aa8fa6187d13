r"""
Distributed mixture of experts: local fits on shards, one MM reduction
======================================================================

A mixture of three linear experts with softmax gates is simulated
(:func:`mmopt.datasets.make_moe_regression`), split into four shards, and fitted twice:

- globally, by EM on all the data (:class:`mmopt.mm.MixtureOfExperts`);
- in a distributed way (:class:`mmopt.mm.DistributedMixtureOfExperts`): each shard fits its
  own mixture (here through joblib's processes; inside
  ``joblib.parallel_config(backend="dask")`` they would run on a Dask cluster), and the
  driver reduces the union of the 4 x 3 local experts to 3 experts by minimizing the
  transportation divergence with MM (:func:`mmopt.mm.aggregate_mixtures`).

The left panel shows the data, the local experts (thin grey lines), the reduced experts and
the global EM experts; the right panel the gate probabilities of both fits. The reduction's
divergence decreases at every iteration.
"""

import matplotlib.pyplot as plt
import numpy as np
from scipy.optimize import linear_sum_assignment

from mmopt.datasets import make_moe_regression
from mmopt.mm import DistributedMixtureOfExperts, MixtureOfExperts

X, y, truth = make_moe_regression(8000, 1, 3, noise=0.3, gate_scale=3.0, random_state=5)

global_fit = MixtureOfExperts(3, n_init=2, random_state=0).fit(X, y)
dist_fit = DistributedMixtureOfExperts(3, n_shards=4, n_init=2, n_support=300,
                                       random_state=0).fit(X, y)

# Match the distributed experts to the global ones for the colours.
cost = (dist_fit.intercept_[:, None] - global_fit.intercept_[None]) ** 2 + (
    dist_fit.coef_[:, 0][:, None] - global_fit.coef_[:, 0][None]) ** 2
rows, cols = linear_sum_assignment(cost)
order = rows[np.argsort(cols)]

print(f"global EM:   mean log-likelihood {global_fit.score(X, y):.4f}")
print(f"distributed: mean log-likelihood {dist_fit.score(X, y):.4f}, "
      f"divergence {dist_fit.reduction_.fun:.2e} after {dist_fit.n_iter_} MM iterations")

grid = np.linspace(X.min(), X.max(), 200)[:, None]
colors = ["C0", "C1", "C2"]
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
left.scatter(X[::4, 0], y[::4], s=2, c="0.75")
for local in dist_fit.local_models_:
    for b, c in zip(local.intercept_, local.coef_[:, 0]):
        left.plot(grid, b + c * grid, color="0.4", lw=0.6)
for k in range(3):
    left.plot(grid, global_fit.intercept_[k] + global_fit.coef_[k, 0] * grid,
              color=colors[k], lw=3, alpha=0.5, label="global EM" if k == 0 else None)
    j = order[k]
    left.plot(grid, dist_fit.intercept_[j] + dist_fit.coef_[j, 0] * grid,
              color=colors[k], lw=1.5, ls="--", label="distributed" if k == 0 else None)
left.set(xlabel="x", ylabel="y", title="experts (grey: the 12 local experts)")
left.set_ylim(y.min() - 1, y.max() + 1)
left.legend()

gates_global = global_fit.predict_proba(grid)
gates_dist = dist_fit.predict_proba(grid)[:, order]
for k in range(3):
    right.plot(grid, gates_global[:, k], color=colors[k], lw=3, alpha=0.5)
    right.plot(grid, gates_dist[:, k], color=colors[k], lw=1.5, ls="--")
right.set(xlabel="x", ylabel="gate probability",
          title="gates: global (solid), distributed (dashed)")
fig.tight_layout()
plt.show()
