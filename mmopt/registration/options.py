"""Grouped options of :class:`~mmopt.registration.ICP`: the loss-scale schedule and the
stopping criteria of its intermediate stages.

Each group is a small frozen dataclass, checked when it is made (messages name the field and
the class), so that an :class:`ICP` keeps plain keyword options that scikit-learn's
``get_params`` / ``set_params`` / ``clone`` handle, as Open3D passes its estimation and
convergence-criteria objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from mmopt._core.params import Interval, constraints_of, validate_params

__all__ = ["ScaleSchedule", "StageCriteria"]

_POSITIVE = Interval(float, 0, None, closed="neither")


class _Checked:
    """Validates the dataclass fields against the class's ``_parameter_constraints``."""

    _parameter_constraints: ClassVar[dict] = {}

    def __post_init__(self):
        table, rules = constraints_of(type(self))
        validate_params(table, asdict(self), rules, owner=type(self).__name__)


@dataclass(frozen=True)
class ScaleSchedule(_Checked):
    """How ICP anneals the scale ``nu`` of its robust loss (and subsamples early stages).

    ``nu`` starts at ``init_factor`` times the median initial residual and halves at each
    stage down to ``nu_min``; with ``nu`` given, one stage runs at that fixed scale (the
    "tracking" mode). The scale-free losses (``"l2"``, ``"trimmed"``) ignore the schedule.

    Parameters
    ----------
    nu : float, optional
        Fixed loss scale in the data's units (one stage); annealed when None.
    init_factor : float, default=3.0
        First ``nu`` as a multiple of the median initial residual (> 0).
    nu_min : float, optional
        Smallest ``nu`` in the data's units (> 0). When None it is the larger of the
        official floor ``spacing / (3 sqrt 3)`` (``spacing``: the target's typical point
        spacing) and ``noise_factor`` times the target's noise estimate.
    noise_factor : float, default=1.0
        Multiple of the noise estimate that floors the estimated ``nu_min`` (at least 0;
        0 keeps the official floor alone).
    coarse_stride : int, default=4
        Coarse-to-fine (at least 1; 1 uses every point throughout): all stages but the last
        three match a regular subsample of the source, every ``coarse_stride``-th point in
        the last coarse stage and half as many in each stage before it (the subsample
        doubles as ``nu`` halves), but never fewer than about 1000 points. The last three
        stages, and so the result, use the whole source.

    Examples
    --------
    >>> from mmopt.registration import ScaleSchedule
    >>> ScaleSchedule(nu_min=0.002)
    ScaleSchedule(nu=None, init_factor=3.0, nu_min=0.002, noise_factor=1.0, coarse_stride=4)
    """

    nu: float | None = None
    init_factor: float = 3.0
    nu_min: float | None = None
    noise_factor: float = 1.0
    coarse_stride: int = 4

    _parameter_constraints: ClassVar[dict] = {
        "nu": [_POSITIVE, None],
        "init_factor": [_POSITIVE],
        "nu_min": [_POSITIVE, None],
        "noise_factor": [Interval(float, 0, None)],
        "coarse_stride": [Interval(int, 1, None)],
    }


@dataclass(frozen=True)
class StageCriteria(_Checked):
    """When ICP's intermediate stages (``nu`` above ``nu_min``) end.

    An intermediate stage ends when the transform moves by less than ``tol`` (Frobenius
    norm of ``T_k - T_{k-1}`` in normalized units) or after ``max_iter`` iterations. These
    stages only lead the pose into the basin of the final scale, so a loose ``tol`` saves
    iterations for the same answer; the ``nu_min`` stage and the surface refinement always
    run to the solver's own ``tol``.

    Parameters
    ----------
    max_iter : int, default=100
        Iteration cap of each intermediate stage (at least 1).
    tol : float, optional, default=1e-3
        Step threshold that ends an intermediate stage (at least 0); the solver's ``tol``
        when None.

    Examples
    --------
    >>> from mmopt.registration import StageCriteria
    >>> StageCriteria(tol=None)
    StageCriteria(max_iter=100, tol=None)
    """

    max_iter: int = 100
    tol: float | None = 1e-3

    _parameter_constraints: ClassVar[dict] = {
        "max_iter": [Interval(int, 1, None)],
        "tol": [Interval(float, 0, None), None],
    }
