"""Bilevel hyperparameter learning with adaptive accuracy and inexact backtracking (MAID).

:class:`BilevelProblem` holds the lower level(s) (:class:`LowerLevel`, smooth and strongly
convex in ``x``) and the upper level(s) (:class:`UpperLevel`); :class:`MAID` learns the
hyperparameters with inexact hypergradients whose error is bounded a posteriori, and offers
the a-priori accuracy schedules of HOAG for comparison. Built-in problems: cross-validated
ridge and L2-regularized logistic regression (:mod:`mmopt.bilevel.glm`), with the estimators
:class:`BilevelRidge` and :class:`BilevelLogisticRegression`, and smoothed-TV denoising with
a learned strength and smoothing (:mod:`mmopt.bilevel.tv`).
"""

from mmopt.bilevel.estimators import BilevelLogisticRegression, BilevelRidge
from mmopt.bilevel.glm import (
    LogisticLowerLevel,
    LogLossUpperLevel,
    RidgeLowerLevel,
    SquaredLossUpperLevel,
    logistic_cv_problem,
    ridge_cv_problem,
)
from mmopt.bilevel.maid import MAID
from mmopt.bilevel.problem import BilevelProblem, LowerLevel, SpreadPenalty, UpperLevel
from mmopt.bilevel.tv import (
    SquaredErrorUpperLevel,
    TVDenoisingLowerLevel,
    make_tv_denoising_data,
    tv_denoising_problem,
)

__all__ = [
    "MAID",
    "BilevelLogisticRegression",
    "BilevelProblem",
    "BilevelRidge",
    "LogLossUpperLevel",
    "LogisticLowerLevel",
    "LowerLevel",
    "RidgeLowerLevel",
    "SpreadPenalty",
    "SquaredErrorUpperLevel",
    "SquaredLossUpperLevel",
    "TVDenoisingLowerLevel",
    "UpperLevel",
    "logistic_cv_problem",
    "make_tv_denoising_data",
    "ridge_cv_problem",
    "tv_denoising_problem",
]
