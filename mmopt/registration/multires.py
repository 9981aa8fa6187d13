"""ICP's multi-resolution solve: the annealing on a voxel-grid level, then the full clouds.

At 10^5-10^6 points the nearest-neighbour searches of the annealed stages dominate an ICP
solve, yet the stages at a large loss scale only need a coarse view of both clouds to lead
the pose into the basin. The coarse level replaces each cloud by the means of its occupied
voxels (:func:`~mmopt.registration.pyramid.voxel_downsample`, the voxel size chosen from the
target so that it keeps about ``_LEVEL_POINTS`` cells) and runs the whole annealed schedule
there, with its own stopping rules (:class:`StageCriteria`, ``tol``); when its last stage
converges, the full-resolution level starts from that pose (in :class:`ICP`'s loop), where
the initial residuals are small: its schedule (the same rule, ``init_factor`` times the
median residual down to ``nu_min``) has only a few stages, followed by the surface
refinement when the data call for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmopt.registration.problem import RegistrationProblem
from mmopt.registration.pyramid import voxel_downsample, voxel_size_for

__all__ = ["TargetLevel", "coarse_problem"]

# Cells of the coarse target: the size of the shipped scan pair, solved in a fraction of a
# second with the full annealing.
_LEVEL_POINTS = 15000


@dataclass(frozen=True)
class TargetLevel:
    """The coarse level of a target: its voxel size, voxel means and mean normals.

    ``shared`` (a :class:`~mmopt.registration.many.SharedTarget` of the coarse target, or
    None) lets several solves against one target reuse its index and geometry.
    """

    voxel_size: float
    points: np.ndarray
    normals: np.ndarray | None
    shared: object = None

    @classmethod
    def build(cls, target: np.ndarray, normals: np.ndarray | None) -> TargetLevel:
        # Small targets (multires=True) keep a quarter of their points.
        voxel = voxel_size_for(target, min(_LEVEL_POINTS, max(target.shape[0] // 4, 100)))
        means, _, cell_normals = voxel_downsample(target, voxel, normals=normals)
        return cls(voxel, means, cell_normals)


def coarse_problem(solver, problem: RegistrationProblem) -> RegistrationProblem:
    """The voxel-grid level of ``problem`` for ``solver`` (an :class:`ICP`), cached on it.

    Both clouds are downsampled with the voxel size chosen from the target (see
    :class:`TargetLevel`), the target's mean normals kept for the plane metrics; its cache
    holds the voxel size (key ``("voxel size",)``), and the shared index and geometry of
    the coarse target when the level carries them (:func:`~mmopt.registration.icp_many`).
    """
    planes = solver.metric != "point_to_point"

    def build() -> RegistrationProblem:
        level = problem.cached(
            ("pyramid", planes),
            lambda: TargetLevel.build(problem.target, problem.target_normals if planes
                                      else None),
        )
        source = voxel_downsample(problem.source, level.voxel_size)[0]
        coarse = RegistrationProblem(source, level.points, target_normals=level.normals)
        coarse.cached(("voxel size",), lambda: level.voxel_size)
        if level.shared is not None:
            level.shared.attach(solver, coarse)
        return coarse

    return problem.cached(("coarse problem", planes), build)
