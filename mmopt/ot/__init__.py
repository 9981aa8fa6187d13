"""Optimal transport: entropic OT by Sinkhorn, and exact OT by linear programming.

:class:`OTProblem` holds the histograms, the cost and the regularization; :func:`sinkhorn`
(:class:`Sinkhorn`) solves the entropic problem and :func:`exact_ot`
(:class:`ExactOT`) the unregularized one.
Sinkhorn-Newton-Sparse (:func:`sinkhorn_newton_sparse`) accelerates small ``reg``.
:func:`sparsity_constrained_ot` (:class:`SparsityConstrainedOT`) keeps at most ``k``
nonzeros per column of a quadratically regularized plan. :class:`OTMapping` maps samples
through a plan, as a scikit-learn transformer.
"""

from mmopt.ot.clustering import ImbalancedOTClustering
from mmopt.ot.exact import ExactOT, exact_ot
from mmopt.ot.lazy_plan import LazyPlan
from mmopt.ot.mapping import OTMapping
from mmopt.ot.p2ot import (
    P2OTProblem,
    ProgressivePartialOT,
    progressive_partial_ot,
    rho_schedule,
)
from mmopt.ot.partial import PartialOTProblem, PartialSinkhorn, partial_ot
from mmopt.ot.pointcloud import PointCloudOTProblem, PointCloudSinkhorn, pointcloud_sinkhorn
from mmopt.ot.problem import OTProblem
from mmopt.ot.sinkhorn import Sinkhorn, sinkhorn
from mmopt.ot.sns import SinkhornNewtonSparse, sinkhorn_newton_sparse
from mmopt.ot.sp2ot import SP2OT, SP2OTProblem, semantic_graph, sp2ot_pseudo_labels
from mmopt.ot.sparsity_constrained import SparsityConstrainedOT, sparsity_constrained_ot
from mmopt.ot.unbalanced import UnbalancedOTProblem, UnbalancedSinkhorn, unbalanced_sinkhorn

__all__ = [
    "ImbalancedOTClustering",
    "ExactOT",
    "LazyPlan",
    "OTMapping",
    "OTProblem",
    "P2OTProblem",
    "PartialOTProblem",
    "PartialSinkhorn",
    "PointCloudOTProblem",
    "PointCloudSinkhorn",
    "ProgressivePartialOT",
    "SP2OT",
    "SP2OTProblem",
    "Sinkhorn",
    "SinkhornNewtonSparse",
    "SparsityConstrainedOT",
    "UnbalancedOTProblem",
    "UnbalancedSinkhorn",
    "exact_ot",
    "partial_ot",
    "pointcloud_sinkhorn",
    "progressive_partial_ot",
    "rho_schedule",
    "semantic_graph",
    "sinkhorn",
    "sinkhorn_newton_sparse",
    "sp2ot_pseudo_labels",
    "sparsity_constrained_ot",
    "unbalanced_sinkhorn",
]
