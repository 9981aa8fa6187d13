"""Optimal transport: entropic OT by Sinkhorn, and exact OT by linear programming.

:class:`OTProblem` holds the histograms, the cost and the regularization; :func:`sinkhorn`
(:class:`Sinkhorn`) solves the entropic problem and :func:`exact_ot`
(:class:`ExactOT`) the unregularized one.
Sinkhorn-Newton-Sparse (:func:`sinkhorn_newton_sparse`) accelerates small ``reg``.
:func:`sparsity_constrained_ot` (:class:`SparsityConstrainedOT`) keeps at most ``k``
nonzeros per column of a quadratically regularized plan. :class:`OTMapping` maps samples
through a plan, as a scikit-learn transformer.
"""

from mmopt.ot.exact import ExactOT, exact_ot
from mmopt.ot.mapping import OTMapping
from mmopt.ot.problem import OTProblem
from mmopt.ot.sinkhorn import Sinkhorn, sinkhorn
from mmopt.ot.sns import SinkhornNewtonSparse, sinkhorn_newton_sparse
from mmopt.ot.sparsity_constrained import SparsityConstrainedOT, sparsity_constrained_ot

__all__ = [
    "ExactOT",
    "OTMapping",
    "OTProblem",
    "Sinkhorn",
    "SinkhornNewtonSparse",
    "SparsityConstrainedOT",
    "exact_ot",
    "sinkhorn",
    "sinkhorn_newton_sparse",
    "sparsity_constrained_ot",
]
