r"""
Routing tokens to experts: balanced top-k routing by sparsity-constrained OT
=============================================================================

A sparse mixture of experts sends each token (here: an image of a hand-written digit) to
``k`` of its experts. Sending every token to its nearest experts overloads some experts and
starves others. Optimal transport balances the load: the plan :math:`T` (experts x tokens)
moves each token's unit of mass to the experts, every expert receiving the same total, at
the least total cost. Liu, Puigcerver and Blondel (ICLR 2023) keep the routing sparse with a
constraint: **at most** :math:`k` **nonzeros in each column**, so that each token is
processed by at most :math:`k` experts,

.. math::

   \min_{T \ge 0,\ T1 = a,\ T^\top 1 = b,\ \|t_j\|_0 \le k}\ \langle C, T\rangle
   + \sum_j \frac{\mathrm{reg}}{2} \|t_j\|^2 .

:func:`mmopt.ot.sparsity_constrained_ot` solves it through its semi-dual. Below, the tokens
are 300 digit images, the ten experts are k-means centroids of *other* digit images, and the
cost is the squared distance between an expert and a token. We compare nearest-expert
routing with balanced plans for several :math:`k`, from hard routing (:math:`k = 1`) to no
constraint.
"""

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits

import mmopt
from mmopt.ot import sparsity_constrained_ot

digits = load_digits()
features = digits.data / 16.0
rng = np.random.default_rng(0)
order = rng.permutation(len(features))
tokens, token_labels = features[order[:300]], digits.target[order[:300]]
# Sort the tokens by digit, so that the plans below show their structure.
by_label = np.argsort(token_labels, kind="stable")
tokens, token_labels = tokens[by_label], token_labels[by_label]
experts = KMeans(n_clusters=10, n_init=4, random_state=0).fit(features[order[300:]])
centroids = experts.cluster_centers_

# Rows are experts, columns are tokens: the constraint limits the experts per token.
C = ((centroids[:, None, :] - tokens[None, :, :]) ** 2).sum(-1)
C /= C.max()
n, m = C.shape
b = np.ones(m)  # each token sends one unit of mass
a = np.full(n, m / n)  # each expert receives the same share: a balanced load

# %%
# Nearest-expert routing ignores the load.
nearest = C.argmin(axis=0)
load = np.bincount(nearest, minlength=n)
print("nearest expert: tokens per expert", load.tolist())

# %%
# Balanced plans with at most k experts per token. With a small ``k`` the relaxation may
# end at a kink, where the marginals cannot all be met by a k-sparse plan: the solver then
# says so (status 5, a warning) and reports each marginal's violation; ``polish=True``
# rescales the plan on its support when that support admits a balanced plan.
reg = 0.1
capacities = [1, 2, 3, n]
results = {}
for k in capacities:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mmopt.ConvergenceWarning)
        res = sparsity_constrained_ot(a, b, C, k=k, reg=reg, polish=True)
    results[k] = res
    print(
        f"k={k:2d}: cost {res.transport_cost:.5f}, experts per token <= "
        f"{res.nnz_per_column.max():2d}, load violation {res.row_violation:.1e}, "
        f"status {res.status}, polished {res.polished}"
    )

# %%
# The plans: each row is an expert, each column a token (sorted by digit), darker is more
# mass. With ``k = 1`` every token goes to a single expert; larger ``k`` lets tokens near
# the boundary between two experts be shared.
fig, axes = plt.subplots(len(capacities), 1, figsize=(10, 7), sharex=True)
for ax, k in zip(axes, capacities):
    plan = results[k].plan.toarray()
    ax.imshow(plan, aspect="auto", cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
    title = "no constraint" if k == n else f"at most {k} expert(s) per token"
    ax.set_title(f"{title}: {results[k].plan.nnz} nonzeros", fontsize=10)
    ax.set_ylabel("expert")
axes[-1].set_xlabel("token (sorted by digit)")
fig.tight_layout()

# %%
# The trade-off between sparsity and cost. The objective (transport cost plus the
# regularization) can only fall as ``k`` grows; the transport cost alone rises a little,
# since the regularization spreads each token over more experts. Nearest-expert routing
# is cheaper still, but unbalanced.
ks = np.arange(1, n + 1)
objectives, transport = [], []
for k in ks:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mmopt.ConvergenceWarning)
        res = sparsity_constrained_ot(a, b, C, k=int(k), reg=reg)
    objectives.append(res.objective)
    transport.append(res.transport_cost)
fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(ks, objectives, "o-", label=r"objective $\langle C, T\rangle + \frac{reg}{2}\|T\|^2$")
ax.plot(ks, transport, "s--", label=r"transport cost $\langle C, T\rangle$")
ax.axhline(C[nearest, np.arange(m)].sum(), color="grey", ls=":",
           label="nearest expert (unbalanced)")
ax.set_xlabel("k (max experts per token)")
ax.set_ylabel("value at the solution")
ax.legend()
fig.tight_layout()
plt.show()
