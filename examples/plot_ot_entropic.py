r"""
Entropic optimal transport: plans, convergence, and distances between digit images
===================================================================================

Three uses of :mod:`mmopt.ot` on small real problems:

1. the transport plan between two 2-D point clouds, exact and entropic, and how the entropic
   cost approaches the exact one as ``reg`` shrinks;
2. the convergence of Sinkhorn against Sinkhorn-Newton-Sparse at a small ``reg``, where
   Sinkhorn slows down;
3. Wasserstein distances :math:`W_1` and :math:`W_2` between hand-written digits, each image
   read as a density on its 8 x 8 pixel grid.
"""

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

import mmopt
from mmopt.ot import exact_ot, sinkhorn, sinkhorn_newton_sparse

rng = np.random.default_rng(0)
n = 120
source = rng.normal(size=(n, 2)) * [1.0, 0.4]
angle = rng.uniform(0, 2 * np.pi, n)
target = np.c_[np.cos(angle), np.sin(angle)] * 2.0 + rng.normal(scale=0.15, size=(n, 2))
C = ((source[:, None] - target[None]) ** 2).sum(-1)
C /= C.max()

exact = exact_ot([], [], C)
plans = [("exact", exact.plan)]
for reg in (1e-1, 1e-2):
    plans.append((f"entropic, reg = {reg:g}", sinkhorn([], [], C, reg).plan))

fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True)
for ax, (title, plan) in zip(axes, plans):
    rows, cols = np.nonzero(plan > 1e-3 * plan.max())
    for i, j in zip(rows, cols):
        ax.plot(*zip(source[i], target[j]), color="grey", lw=0.5,
                alpha=float(plan[i, j] / plan.max()) * 0.7)
    ax.scatter(*source.T, s=8, label="source")
    ax.scatter(*target.T, s=8, label="target")
    ax.set_title(title)
    ax.set_aspect("equal")
axes[0].legend(loc="lower left", fontsize=8)
fig.tight_layout()

# %%
# As ``reg`` goes to 0 the entropic transport cost :math:`\langle C, P\rangle` approaches
# the exact one from above.
regs = np.logspace(-1, -3, 7)
costs = [sinkhorn_newton_sparse([], [], C, reg).transport_cost for reg in regs]
print(f"exact cost {exact.fun:.6f}")
for reg, cost in zip(regs, costs):
    print(f"reg {reg:.1e}: entropic cost {cost:.6f} (+{cost - exact.fun:.2e})")

# %%
# At small ``reg`` Sinkhorn needs many iterations; Sinkhorn-Newton-Sparse switches to Newton
# steps on a sparsified Hessian once the marginal error is below ``switch_tol`` and
# converges in a few of them. Both stop at an L1 marginal error of 1e-9.
reg = 2e-3
runs = {
    "Sinkhorn": sinkhorn([], [], C, reg, tol=1e-9, max_iter=50_000),
    "Sinkhorn-Newton-Sparse": sinkhorn_newton_sparse([], [], C, reg, tol=1e-9, max_iter=50_000),
}
fig, ax = plt.subplots(figsize=(6, 4))
for name, res in runs.items():
    ax.semilogy(res.history["time"], np.maximum(res.history["residual"], 1e-16),
                label=f"{name}: {res.nit} iterations")
ax.set_xlabel("seconds")
ax.set_ylabel("L1 marginal error")
ax.set_title(f"{n} points, reg = {reg:g}")
ax.legend()
fig.tight_layout()

# %%
# Digits as densities on the 8 x 8 grid: the cost between two pixels is their distance
# (:math:`W_1`) or squared distance (:math:`W_2^2`), and the exact OT cost between two
# normalized images is the Wasserstein distance. The average image of each class gives a
# 10 x 10 table; the closest classes are those whose strokes overlap after a small move.
digits = load_digits()
grid = np.stack(np.meshgrid(np.arange(8), np.arange(8), indexing="ij"), -1).reshape(-1, 2)
distance = np.sqrt(((grid[:, None] - grid[None]) ** 2).sum(-1))
means = np.array([digits.data[digits.target == d].mean(axis=0) for d in range(10)])
densities = means / means.sum(axis=1, keepdims=True)
W1, W2 = np.zeros((10, 10)), np.zeros((10, 10))
for i in range(10):
    for j in range(i + 1, 10):
        # Pixels with no ink in any image of the class carry no mass.
        W1[i, j] = W1[j, i] = exact_ot(densities[i], densities[j], distance).fun
        W2[i, j] = W2[j, i] = np.sqrt(exact_ot(densities[i], densities[j], distance**2).fun)

fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
for ax, (name, table) in zip(axes, [("$W_1$", W1), ("$W_2$", W2)]):
    image = ax.imshow(table, cmap="viridis")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_title(f"{name} between mean digit images (pixels)")
    fig.colorbar(image, ax=ax, shrink=0.8)
fig.tight_layout()

# An entropic approximation of the same distances, for comparison.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", mmopt.ConvergenceWarning)
    approx = sinkhorn(densities[3], densities[8], distance / distance.max(), 1e-2).transport_cost
print(f"W1(3, 8): exact {W1[3, 8]:.4f}, entropic (reg 1e-2 of the max) "
      f"{approx * distance.max():.4f}")
plt.show()
