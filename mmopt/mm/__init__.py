"""Majorization-minimization (MM) with safeguarded Anderson acceleration.

:class:`MMProblem` is the protocol (an objective and the minimizer of a majorizing surrogate),
:class:`MMSolver` the solver, and the built-in problems come with scikit-learn estimators:
robust linear regression by iteratively reweighted least squares
(:class:`RobustRegressionProblem`, :class:`MMRobustRegressor`) and non-negative matrix
factorization by multiplicative updates (:class:`NMFProblem`, :class:`MMNMF`), mixtures of
linear experts by EM (:class:`MixtureOfExperts`) and their distributed fit with an MM
reduction of the local models (:class:`DistributedMixtureOfExperts`,
:func:`aggregate_mixtures`), and target-based surrogates for losses of a model's outputs
(:class:`TargetSurrogateProblem`, the :class:`SSO` solver, :class:`SSORegressor`,
:class:`SSOClassifier`). The robust losses are those of :mod:`mmopt.losses`, re-exported
here.
"""

from mmopt.losses import CauchyLoss, HuberLoss, RobustLoss, TukeyLoss, WelschLoss, get_loss
from mmopt.mm.distributed import DistributedMixtureOfExperts
from mmopt.mm.moe import MixtureOfExperts, MoEProblem
from mmopt.mm.moe_reduction import MixtureReductionProblem, aggregate_mixtures
from mmopt.mm.nmf import MMNMF, NMFProblem
from mmopt.mm.problem import MMProblem
from mmopt.mm.robust_regression import MMRobustRegressor, RobustRegressionProblem, mad_scale
from mmopt.mm.solver import MMSolver
from mmopt.mm.sso import SSO
from mmopt.mm.sso_estimators import SSOClassifier, SSORegressor
from mmopt.mm.target_surrogate import LinearTargetModel, TargetModel, TargetSurrogateProblem

__all__ = [
    "CauchyLoss",
    "DistributedMixtureOfExperts",
    "HuberLoss",
    "LinearTargetModel",
    "MMNMF",
    "MMProblem",
    "MMRobustRegressor",
    "MMSolver",
    "MixtureOfExperts",
    "MixtureReductionProblem",
    "MoEProblem",
    "NMFProblem",
    "RobustLoss",
    "RobustRegressionProblem",
    "SSO",
    "SSOClassifier",
    "SSORegressor",
    "TargetModel",
    "TargetSurrogateProblem",
    "TukeyLoss",
    "WelschLoss",
    "aggregate_mixtures",
    "get_loss",
    "mad_scale",
]
