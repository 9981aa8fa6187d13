"""Block coordinate descent: greedy rules, variable blocks, matrix/Newton/exact updates.

Problems are a smooth datafit plus a separable penalty (:class:`BCDProblem`);
:class:`BlockCoordinateDescent` implements the rules of Nutini, Laradji and Schmidt (one block
per iteration), :class:`CoordinateDescent` the fast compiled coordinate descent with working
sets, gap-safe screening and duality-gap stopping behind the estimators
:class:`BCDLasso`, :class:`BCDElasticNet`, :class:`BCDLogisticRegression` and
:class:`BCDLabelPropagation`.
"""

from mmopt.bcd.cd import CoordinateDescent
from mmopt.bcd.datafits import (
    Datafit,
    LabelPropagationQuadratic,
    LeastSquares,
    Logistic,
    Multinomial,
)
from mmopt.bcd.estimators import (
    BCDElasticNet,
    BCDLabelPropagation,
    BCDLasso,
    BCDLogisticRegression,
)
from mmopt.bcd.partition import check_blocks, make_partition, red_black_partition
from mmopt.bcd.penalties import L1, L2, ElasticNet, L1Positive, NoPenalty, Penalty
from mmopt.bcd.problem import BCDProblem
from mmopt.bcd.solver import BlockCoordinateDescent

__all__ = [
    "BCDElasticNet",
    "BCDLabelPropagation",
    "BCDLasso",
    "BCDLogisticRegression",
    "BCDProblem",
    "BlockCoordinateDescent",
    "CoordinateDescent",
    "Datafit",
    "ElasticNet",
    "L1",
    "L1Positive",
    "L2",
    "LabelPropagationQuadratic",
    "LeastSquares",
    "Logistic",
    "Multinomial",
    "NoPenalty",
    "Penalty",
    "check_blocks",
    "make_partition",
    "red_black_partition",
]
