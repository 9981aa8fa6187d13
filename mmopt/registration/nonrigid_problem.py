"""The non-rigid registration problem: a source cloud to deform onto a target cloud."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmopt._core._docstrings import fill_doc
from mmopt._core.validation import check_indices, check_scalar, readonly
from mmopt.registration.arap import knn_edges, mesh_edges
from mmopt.registration.normals import estimate_normals
from mmopt.registration.problem import _check_normals, _CloudPair, check_point_cloud

__all__ = ["NonRigidRegistrationProblem"]

# The two clouds, as every non-rigid entry point takes them.
CLOUD_PARAMS = {
    "clouds": """\
source : array-like of shape (n, 3)
    The cloud to deform.
target : array-like of shape (m, 3)
    The fixed cloud.""",
}


def _check_faces(value, n: int) -> np.ndarray | None:
    if value is None:
        return None
    faces = np.asarray(value)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        raise ValueError(
            f"faces must have shape (f, 3) (triangle vertex indices), got {faces.shape}."
        )
    faces = check_indices(
        faces, "faces", n, hint="The faces do not belong to this source (its point count)."
    )
    return readonly(faces)


@fill_doc(CLOUD_PARAMS)
@dataclass(frozen=True, eq=False)
class NonRigidRegistrationProblem(_CloudPair):
    """Non-rigid registration: deform ``source`` point by point onto ``target``.

    The unknowns are the deformed positions ``v_i`` of every source point and a rotation
    ``R_i`` per point; the source's neighbourhood graph (the mesh edges when ``faces`` is
    given, each point's ``k`` nearest neighbours otherwise) ties them by an
    as-rigid-as-possible term.

    Parameters
    ----------
    %(clouds)s
    source_normals, target_normals : array-like of shape (n, 3) / (m, 3), optional
        Unit normals (normalized here). When both are given they are taken as consistently
        oriented (pairs with opposite normals are rejected); when either is estimated (PCA over
        ``normals_k`` neighbours, sign arbitrary) each pair's target normal is flipped to agree
        with the source normal instead.
    faces : array-like of shape (f, 3), optional
        Triangles of the source (vertex indices); their edges form the graph.
    k : int, default=8
        Neighbours per point of the k-NN graph (without ``faces``).
    normals_k : int, default=10
        Neighbourhood size of the normal estimation; a cloud without normals needs at least
        this many points.

    Examples
    --------
    >>> from mmopt.registration import NonRigidRegistrationProblem
    >>> rng = np.random.default_rng(0)
    >>> problem = NonRigidRegistrationProblem(rng.random((50, 3)), rng.random((60, 3)))
    >>> problem.n_edges
    400
    """

    source: np.ndarray
    target: np.ndarray
    source_normals: np.ndarray | None = None
    target_normals: np.ndarray | None = None
    faces: np.ndarray | None = None
    k: int = 8
    normals_k: int = 10

    default_solver = "spare"

    def __post_init__(self):
        source = check_point_cloud(self.source, "source")
        target = check_point_cloud(self.target, "target")
        set_ = object.__setattr__
        set_(self, "source", source)
        set_(self, "target", target)
        set_(self, "k", check_scalar(self.k, "k", kind=int, min_value=1))
        set_(self, "normals_k", check_scalar(self.normals_k, "normals_k", kind=int, min_value=3))
        for name, points in (("source", source), ("target", target)):
            normals = _check_normals(getattr(self, f"{name}_normals"), f"{name}_normals",
                                     points.shape[0], name)
            if normals is None and points.shape[0] < self.normals_k:
                raise ValueError(
                    f"{name} has {points.shape[0]} points: too few to estimate "
                    f"{name}_normals (normals_k={self.normals_k} neighbours are needed); pass "
                    f"{name}_normals."
                )
            set_(self, f"{name}_normals", normals)
        set_(self, "faces", _check_faces(self.faces, source.shape[0]))

    def __reduce__(self):
        return (type(self), (self.source, self.target, self.source_normals,
                             self.target_normals, self.faces, self.k, self.normals_k))

    @property
    def n_edges(self) -> int:
        """Number of directed edges of the ARAP graph."""
        return int(self.edges()[0].shape[0])

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Directed edges ``(heads, tails)`` of the ARAP graph."""
        def build():
            if self.faces is not None:
                return mesh_edges(self.faces, self.source.shape[0])
            return knn_edges(self.source, self.k)
        return self.cached("edges", build)

    def normals(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """``(source_normals, target_normals, oriented)``, estimated where not given."""
        def build():
            src, tgt = self.source_normals, self.target_normals
            oriented = src is not None and tgt is not None
            if src is None:
                src = estimate_normals(self.source, k=self.normals_k)
            if tgt is None:
                tgt = estimate_normals(self.target, k=self.normals_k)
            return readonly(np.array(src)), readonly(np.array(tgt)), oriented
        return self.cached("normals", build)

    def __repr__(self) -> str:
        graph = f"{self.faces.shape[0]} faces" if self.faces is not None else f"k={self.k}"
        return (f"NonRigidRegistrationProblem(source: {self.source.shape[0]} points, "
                f"target: {self.target.shape[0]} points, {graph})")
