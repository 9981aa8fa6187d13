"""Many sources against one target: :func:`icp_many`, with the target's index built once."""

from __future__ import annotations

import numpy as np

from mmopt._core.result import Result
from mmopt.registration._neighbors import NeighborIndex
from mmopt.registration.icp import ICP
from mmopt.registration.multires import TargetLevel
from mmopt.registration.normals import _power_of_two_size
from mmopt.registration.problem import RegistrationProblem, check_point_cloud

__all__ = ["SharedTarget", "icp_many"]


class _ScaledIndex:
    """A target's index in its own coordinates, queried in one problem's normalized ones.

    A problem normalizes ``y -> (y - centroid) / scale``; nearest neighbours do not change
    under that map, so a query maps back, searches, and divides the distances.
    """

    def __init__(self, index: NeighborIndex, origin: np.ndarray, unit: float, scale: float,
                 centroid: np.ndarray):
        self._index = index
        self._shift = (centroid - origin) / unit
        self._ratio = scale / unit
        self.points = None  # not needed by ICP: only queries are

    def query(self, x, *, k: int = 1, bound: float = np.inf, n_threads: int = 1, **options):
        dist, idx = self._index.query(
            np.asarray(x) * self._ratio + self._shift, k=k, bound=bound * self._ratio,
            n_threads=n_threads, **options,
        )
        return dist / self._ratio, idx


class SharedTarget:
    """A target's KD-tree, geometry and coarse level, built once for many solves.

    The index and the geometry estimates live in the target's own coordinates (centred on
    its lowest corner, divided by a power of two near its size: exact scaling); each
    problem against this target gets views of them in its normalized coordinates
    (:meth:`attach`). Thread-safe once built (read only); picklable (joblib processes and
    Dask workers receive a copy).
    """

    def __init__(self, target, target_normals, solver: ICP, *, coarse: bool):
        self.target = check_point_cloud(target, "target")
        self.target_normals = target_normals
        self.unit = _power_of_two_size(self.target)
        self.origin = self.target.min(axis=0)
        self.index = NeighborIndex((self.target - self.origin) / self.unit,
                                   backend=solver.neighbors)
        self.geometry_key = solver._geometry_key(self.target.shape[0])
        self.geometry = solver._target_geometry(self.index.points, self.index)
        self.level = None
        if coarse:
            level = TargetLevel.build(
                self.target, None if solver.metric == "point_to_point" else target_normals
            )
            self.level = TargetLevel(
                level.voxel_size, level.points, level.normals,
                SharedTarget(level.points, level.normals, solver, coarse=False),
            )

    def attach(self, solver: ICP, problem: RegistrationProblem) -> None:
        """Fill ``problem``'s cache with this target's index, geometry and coarse level."""
        s, ct = problem.scale, problem.target_centroid
        problem.cached(("index", solver.neighbors),
                       lambda: _ScaledIndex(self.index, self.origin, self.unit, s, ct))
        normals, thickness, spacing = self.geometry
        ratio = self.unit / s
        problem.cached(self.geometry_key,
                       lambda: (normals, thickness * ratio, spacing * ratio))
        if self.level is not None:
            problem.cached(("pyramid", solver.metric != "point_to_point"), lambda: self.level)


def _solve_chunk(solver: ICP, shared: SharedTarget, sources: list, x0s: list) -> list:
    out = []
    for source, x0 in zip(sources, x0s):
        problem = RegistrationProblem(source, shared.target,
                                      target_normals=shared.target_normals)
        shared.attach(solver, problem)
        out.append(solver.solve(problem, x0))
    return out


def icp_many(sources, target, *, target_normals=None, x0s=None, n_jobs: int | None = None,
             prefer: str = "threads", **options) -> list[Result]:
    """Register each of ``sources`` onto one ``target`` with :class:`ICP`.

    The target's KD-tree, its spacing/noise (and normal) estimates and its coarse voxel
    level are built once and shared by all solves, instead of once per :func:`icp` call;
    the solves run through :class:`joblib.Parallel` in ``n_jobs`` chunks (threads by
    default: the KD-tree searches release the GIL; ``prefer="processes"`` or a
    ``joblib.parallel_config(backend="dask")`` context send each chunk the shared target
    once, pickled). Each result is that of ``icp(source, target, **options)`` up to rounding
    (the index answers in the target's own coordinates): the same on small clouds, while at
    scan scale a rounding difference can end a stage one iteration apart (the user guide
    gives the size of the difference).

    Parameters
    ----------
    sources : iterable of array-like of shape (n_i, 3)
        The moving clouds.
    target : array-like of shape (m, 3)
        The fixed cloud.
    target_normals : array-like of shape (m, 3), optional
        As in :class:`RegistrationProblem`.
    x0s : iterable of (4, 4) arrays or None, optional
        One start per source (``init`` when None).
    n_jobs : int, optional
        joblib's number of jobs (None: 1 unless a ``joblib.parallel_config`` says otherwise).
    prefer : {"threads", "processes"}, default="threads"
        joblib's backend hint.
    **options
        The options of :class:`ICP`, shared by all solves.

    Returns
    -------
    list of Result
        In the order of ``sources``.

    Examples
    --------
    >>> from mmopt.registration import icp_many
    >>> from mmopt.registration.se3 import se3_exp
    >>> rng = np.random.default_rng(0)
    >>> target = rng.normal(size=(400, 3)) * [3.0, 2.0, 1.0]
    >>> moves = [se3_exp([0.0, 0.0, a, 0.1, 0.0, 0.0]) for a in (0.1, 0.2)]
    >>> sources = [(target - T[:3, 3]) @ T[:3, :3] for T in moves]
    >>> results = icp_many(sources, target, n_jobs=2)
    >>> [bool(np.allclose(r.transform, T, atol=1e-4)) for r, T in zip(results, moves)]
    [True, True]
    """
    from joblib import Parallel, delayed, effective_n_jobs

    if prefer not in ("threads", "processes"):
        raise ValueError(f"prefer must be 'threads' or 'processes', got {prefer!r}.")
    sources = [check_point_cloud(s, f"sources[{i}]") for i, s in enumerate(sources)]
    starts = [None] * len(sources) if x0s is None else list(x0s)
    if len(starts) != len(sources):
        raise ValueError(
            f"x0s must hold one start per source: got {len(starts)} for {len(sources)}."
        )
    solver = ICP(**options)
    solver._validate_params()
    if not sources:
        return []
    # The problem checks the normals (and the clouds) as a single icp call would.
    first = RegistrationProblem(sources[0], target, target_normals=target_normals)
    target, target_normals = first.target, first.target_normals
    largest = max(target.shape[0], max(s.shape[0] for s in sources))
    shared = SharedTarget(target, target_normals, solver, coarse=solver._multires(largest))
    # One task per job: a process receives the shared target once.
    n_chunks = min(len(sources), effective_n_jobs(n_jobs))
    chunks = np.array_split(np.arange(len(sources)), n_chunks)
    parts = Parallel(n_jobs=n_jobs, prefer=prefer)(
        delayed(_solve_chunk)(solver, shared, [sources[i] for i in chunk],
                              [starts[i] for i in chunk])
        for chunk in chunks if chunk.size
    )
    return [res for part in parts for res in part]
