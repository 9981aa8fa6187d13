"""
Message passing on forest blocks: label propagation on a lattice
=================================================================

Quadratic label propagation on a graph is a linear system with the graph's Laplacian. When a
block of nodes induces a forest of the graph, the block's subproblem is solved exactly by
Gaussian elimination from the leaves to the roots and back (message passing), in time linear
in the block's size. So blocks can be huge: half of a lattice (the red-black colouring, whose
classes have no internal edges) or a forest grown greedily each iteration from the nodes with
the largest Gauss-Southwell-Lipschitz scores (greedy tree). Here both are compared with small
random and greedy blocks on the 50 x 50 lattice of Nutini, Laradji and Schmidt, 100 labelled
nodes held by a weight of 1e5; the panel on the right shows the labels that propagate.
"""

import warnings

import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse.linalg as spla

from mmopt.bcd import BCDProblem, BlockCoordinateDescent, LabelPropagationQuadratic
from mmopt.datasets import make_lattice_graph

W, y = make_lattice_graph(50, n_labelled=100, random_state=0)
datafit = LabelPropagationQuadratic(W, y, label_weight=1e5)
problem = BCDProblem(datafit)
f_star = problem.objective(spla.spsolve(datafit.A.tocsc(), datafit.c))

configs = {
    "greedy tree (GSL), exact": dict(partition="greedy-tree", selection="gsl"),
    "red-black, exact": dict(partition="red-black", selection="cyclic", update="exact"),
    "GSL, variable blocks of 50, exact": dict(
        partition="variable", selection="gsl", update="exact", block_size=50
    ),
    "random blocks of 50, exact": dict(
        partition="order", selection="random", update="exact", block_size=50
    ),
}

fig, (ax, ax_map) = plt.subplots(1, 2, figsize=(10, 4.2))
results = {}
for label, options in configs.items():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fixed budget of 500 iterations
        res = BlockCoordinateDescent(max_iter=500, tol=0.0, random_state=0, **options).solve(
            problem
        )
    results[label] = res
    gap = np.maximum(res.history["fun"] - f_star, 1e-12)
    ax.semilogy(np.arange(1, res.nit + 1), gap, label=label)
    print(
        f"{label:36s} f - f* = {res.fun - f_star:.3g} after {res.nit} iterations"
    )
ax.set_xlabel("iterations (block updates)")
ax.set_ylabel("f - f*")
ax.legend(fontsize=8)
ax.set_title("50 x 50 lattice, 100 labels")

image = ax_map.imshow(results["greedy tree (GSL), exact"].x.reshape(50, 50), cmap="coolwarm")
rows, cols = np.divmod(np.flatnonzero(np.isfinite(y)), 50)
ax_map.scatter(cols, rows, c="k", s=6)
ax_map.set_title("propagated labels (dots: labelled nodes)")
ax_map.set_axis_off()
fig.colorbar(image, ax=ax_map, shrink=0.8)
fig.tight_layout()
plt.show()
