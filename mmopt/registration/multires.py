"""ICP's multi-resolution solve: the annealing on a voxel-grid level, then the full clouds.

At 10^5-10^6 points the nearest-neighbour searches of the annealed stages dominate an ICP
solve, yet the stages at a large loss scale only need a coarse view of both clouds to lead
the pose into the basin. The coarse level replaces each cloud by the means of its occupied
voxels (:func:`~mmopt.registration.pyramid.voxel_downsample`, the voxel size chosen from the
target so that it keeps about ``_LEVEL_POINTS`` cells) and runs the whole annealed schedule
there, with its own stopping rules (:class:`StageCriteria`, ``tol``); the full-resolution
level then starts from that pose, where the initial residuals are small: its schedule (the
same rule, ``init_factor`` times the median residual down to ``nu_min``) has only a few
stages, followed by the surface refinement when the data call for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mmopt.registration.problem import RegistrationProblem
from mmopt.registration.pyramid import voxel_downsample, voxel_size_for

__all__ = ["TargetLevel", "solve_pyramid", "stage_times"]

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


def stage_times(history: dict, n_stages: int) -> np.ndarray:
    """Seconds spent in each stage, from a solve's ``history`` (``time`` and ``stage``).

    An iteration's time goes to the stage it ended in; the setup before the first
    iteration counts in stage 0.
    """
    seconds = np.diff(np.concatenate([[0.0], np.asarray(history["time"], dtype=float)]))
    stages = np.asarray(history.get("stage", np.zeros(seconds.size)), dtype=int)
    out = np.zeros(n_stages)
    if seconds.size:
        np.add.at(out, np.clip(stages, 0, n_stages - 1), seconds)
    return out


def solve_pyramid(solver, problem: RegistrationProblem, x0=None):
    """Solve ``problem`` with ``solver`` (an :class:`ICP`) on the coarse level, then in full.

    Returns the full-resolution level's result with the counts of both levels merged
    (``nit``, ``n_queries``, ``n_stages``, ``iterations_per_stage``, ``stage_times``,
    Anderson's counts, ``history``, ``time``) and ``levels``: one dict per level with its
    ``n_source`` and ``n_target`` points, ``voxel_size`` (None at full resolution),
    ``nit``, ``n_queries`` and ``time``.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    bar = tqdm(total=2, desc="icp levels", leave=False, disable=solver.verbose != 1)
    try:
        level = problem.cached(
            ("pyramid", solver.metric == "point_to_point"),
            lambda: TargetLevel.build(
                problem.target,
                None if solver.metric == "point_to_point" else problem.target_normals,
            ),
        )
        source, _, _ = voxel_downsample(problem.source, level.voxel_size)
        coarse_problem = RegistrationProblem(source, level.points, target_normals=level.normals)
        if level.shared is not None:
            level.shared.attach(solver, coarse_problem)
        inner = {"multires": False, "verbose": 0 if solver.verbose == 1 else solver.verbose}
        coarse_solver = solver.__class__(**{**solver.get_params(deep=False), **inner,
                                            "refine": False})
        bar.set_postfix(points=source.shape[0])
        coarse = coarse_solver.solve(coarse_problem, x0)
        bar.update(1)
        fine_solver = solver.__class__(**{
            **solver.get_params(deep=False), **inner,
            "max_iter": max(1, solver.max_iter - coarse.nit),
        })
        bar.set_postfix(points=problem.source.shape[0])
        fine = fine_solver.solve(problem, coarse.transform)
        bar.update(1)
    finally:
        bar.close()
    levels = [_level(coarse_problem, coarse, level.voxel_size), _level(problem, fine, None)]
    result = _merge(coarse, fine, time.perf_counter() - start)
    result.levels = levels
    return result


def _level(problem: RegistrationProblem, result, voxel_size) -> dict:
    return {"n_source": problem.source.shape[0], "n_target": problem.target.shape[0],
            "voxel_size": voxel_size, "nit": result.nit, "n_queries": result.n_queries,
            "time": result.time}


def _merge(coarse, fine, seconds: float):
    result = fine
    # The fine level's clock and stage numbers continue the coarse level's.
    offsets = {"time": coarse.time, "stage": coarse.n_stages}
    result.history = {
        key: np.concatenate([
            np.asarray(coarse.history.get(key, np.full(coarse.nit, np.nan)), dtype=float),
            np.asarray(values, dtype=float) + offsets.get(key, 0.0),
        ])
        for key, values in fine.history.items()
    }
    result.nit = coarse.nit + fine.nit
    result.time = seconds
    result.n_queries = coarse.n_queries + fine.n_queries
    result.n_stages = coarse.n_stages + fine.n_stages
    result.n_coarse_stages = coarse.n_stages + fine.n_coarse_stages
    result.iterations_per_stage = np.concatenate(
        [coarse.iterations_per_stage, fine.iterations_per_stage]
    )
    result.stage_times = np.concatenate([coarse.stage_times, fine.stage_times])
    result.n_accepted = coarse.n_accepted + fine.n_accepted
    result.n_rejected = coarse.n_rejected + fine.n_rejected
    proposals = result.n_accepted + result.n_rejected
    result.acceptance_rate = result.n_accepted / proposals if proposals else 0.0
    return result
