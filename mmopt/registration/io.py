"""Read and write point clouds: PLY (through the optional plyfile package), XYZ and NPY."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmopt._core.validation import check_array

__all__ = ["read_faces", "read_point_cloud", "write_point_cloud"]

FORMATS = {".ply": "ply", ".xyz": "xyz", ".txt": "xyz", ".pts": "xyz", ".npy": "npy"}


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(FORMATS))
        raise ValueError(
            f"{path}: unknown point-cloud format {path.suffix!r}; use one of {known}."
        )
    return fmt


def _plyfile():
    try:
        import plyfile
    except ImportError:
        raise ImportError(
            "reading and writing PLY files needs the plyfile package: "
            'pip install "mmopt[io]" (or pip install plyfile).'
        ) from None
    return plyfile


def _split(array: np.ndarray, path: Path):
    if array.dtype.kind not in "biuf":
        kind = "complex" if array.dtype.kind == "c" else f"dtype {array.dtype}"
        raise ValueError(f"{path}: expected real coordinates, got {kind} values.")
    if array.ndim != 2 or array.shape[1] not in (3, 6):
        raise ValueError(
            f"{path}: expected rows of 3 (x y z) or 6 (x y z nx ny nz) numbers, got an array of "
            f"shape {array.shape}."
        )
    if array.shape[0] == 0:
        raise ValueError(f"{path}: the file holds no points.")
    array = array.astype(float, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: the file contains NaN or infinite coordinates.")
    points = np.ascontiguousarray(array[:, :3], dtype=float)
    normals = np.ascontiguousarray(array[:, 3:], dtype=float) if array.shape[1] == 6 else None
    return points, normals


def _ply_columns(names, path: Path) -> list[str]:
    """The vertex properties to read: x, y, z and, when declared, all of nx, ny, nz."""
    missing = [c for c in ("x", "y", "z") if c not in names]
    if missing:
        raise ValueError(
            f"{path}: the vertex element lacks the properties {', '.join(missing)} "
            "(a point cloud needs x, y and z)."
        )
    normals = [c for c in ("nx", "ny", "nz") if c in names]
    if normals and len(normals) < 3:
        missing = [c for c in ("nx", "ny", "nz") if c not in names]
        raise ValueError(
            f"{path}: the vertex element declares {', '.join(normals)} but not "
            f"{', '.join(missing)}: normals need all of nx, ny and nz."
        )
    return ["x", "y", "z"] + normals


def read_point_cloud(path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a cloud (and its normals when the file has them) from PLY, XYZ or NPY.

    PLY files (ASCII or binary) need the optional ``plyfile`` package; their ``vertex``
    element must have ``x``, ``y``, ``z`` (and optionally all of ``nx``, ``ny``, ``nz``: a
    partial set is an error). XYZ files
    are whitespace-separated rows of 3 or 6 numbers; NPY files hold an (n, 3) or (n, 6) array.

    Parameters
    ----------
    path : str or Path
        The file; its suffix picks the format (``.ply``, ``.xyz``/``.txt``/``.pts``, ``.npy``).

    Returns
    -------
    points : ndarray of shape (n, 3)
    normals : ndarray of shape (n, 3) or None

    Raises
    ------
    ValueError
        For an unknown suffix or a file that cannot be parsed, holds no points, or holds
        complex, non-numeric or non-finite values (naming the file).
    FileNotFoundError
        When the file does not exist.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from mmopt.registration.io import read_point_cloud, write_point_cloud
    >>> path = os.path.join(tempfile.mkdtemp(), "cloud.xyz")
    >>> write_point_cloud(path, np.eye(3))
    >>> points, normals = read_point_cloud(path)
    >>> points.shape, normals is None
    ((3, 3), True)
    """
    path = Path(path)
    fmt = _format(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    if fmt == "npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            reason = str(error) or type(error).__name__
            raise ValueError(f"{path}: not a readable .npy array ({reason}).") from None
        return _split(np.asarray(array), path)
    if fmt == "xyz":
        try:
            array = np.loadtxt(path, dtype=float, ndmin=2)
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not a table of numbers ({error}).") from None
        if array.size == 0:
            raise ValueError(f"{path}: the file holds no points.")
        return _split(array, path)
    plyfile = _plyfile()
    try:
        data = plyfile.PlyData.read(str(path))
        vertex = data["vertex"]
        names = vertex.data.dtype.names
    except Exception as error:  # plyfile raises several types for a corrupt file
        raise ValueError(f"{path}: not a readable PLY point cloud ({error}).") from None
    columns = _ply_columns(names, path)
    try:
        array = np.column_stack([np.asarray(vertex[c]) for c in columns])
    except Exception as error:
        raise ValueError(f"{path}: not a readable PLY point cloud ({error}).") from None
    return _split(array, path)


def read_faces(path) -> np.ndarray:
    """Read triangles (vertex-index triples) from a PLY ``face`` element, an NPY array or a
    text file of rows of 3 integers.

    Returns an int array of shape (f, 3); raises ``ValueError`` naming the file when it holds
    no triangles (or faces that are not triangles).
    """
    path = Path(path)
    fmt = _format(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    try:
        if fmt == "ply":
            data = _plyfile().PlyData.read(str(path))
            if "face" not in data:
                raise ValueError("the file has no face element")
            rows = data["face"].data[data["face"].data.dtype.names[0]]
            if any(len(row) != 3 for row in rows):
                raise ValueError("only triangles are supported")
            faces = np.array([np.asarray(row) for row in rows]).reshape(-1, 3)
        elif fmt == "npy":
            faces = np.load(path, allow_pickle=False)
        else:
            faces = np.loadtxt(path, ndmin=2)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path}: not readable triangles ({error}).") from None
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        raise ValueError(f"{path}: expected rows of 3 vertex indices, got shape {faces.shape}.")
    if faces.dtype.kind == "f" and not np.all(faces == np.round(faces)):
        raise ValueError(f"{path}: face vertex indices must be integers.")
    return faces.astype(np.intp)


def write_point_cloud(path, points, normals=None, *, faces=None, binary: bool = False) -> None:
    """Write a cloud (and normals) as PLY, XYZ or NPY, picked by the suffix of ``path``.

    Parameters
    ----------
    path : str or Path
        Destination file.
    points : array-like of shape (n, 3)
    normals : array-like of shape (n, 3), optional
    faces : array-like of shape (f, 3), optional
        Triangles (vertex indices), written as the PLY ``face`` element (PLY only).
    binary : bool, default=False
        Binary little-endian PLY instead of ASCII (PLY only).
    """
    path = Path(path)
    fmt = _format(path)
    if faces is not None and fmt != "ply":
        raise ValueError(f"{path}: faces can only be written to a .ply file.")
    points = check_array(points, "points", ndim=2, shape=(None, 3))
    array = points
    if normals is not None:
        normals = check_array(normals, "normals", shape=(points.shape[0], 3))
        array = np.hstack([points, normals])
    if fmt == "npy":
        np.save(path, np.asarray(array))
        return
    if fmt == "xyz":
        np.savetxt(path, array, fmt="%.10g")
        return
    plyfile = _plyfile()
    names = ["x", "y", "z"] + (["nx", "ny", "nz"] if normals is not None else [])
    records = np.empty(points.shape[0], dtype=[(n, "f8") for n in names])
    for i, name in enumerate(names):
        records[name] = array[:, i]
    elements = [plyfile.PlyElement.describe(records, "vertex")]
    if faces is not None:
        faces = np.asarray(faces, dtype=np.int32)
        face_records = np.empty(faces.shape[0], dtype=[("vertex_indices", "i4", (3,))])
        face_records["vertex_indices"] = faces
        elements.append(plyfile.PlyElement.describe(face_records, "face"))
    plyfile.PlyData(elements, text=not binary).write(str(path))
