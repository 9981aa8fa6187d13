"""Fixed block partitions of the coordinates, and their validation."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mmopt._core.validation import check_array, check_choice, check_indices, check_scalar

__all__ = ["make_partition", "check_blocks", "red_black_partition"]


def check_blocks(blocks, n_coords: int, *, name: str = "blocks") -> list[np.ndarray]:
    """Check that ``blocks`` (a sequence of index arrays) partitions ``range(n_coords)``.

    ``name`` is the argument's name in error messages (a solver passes ``"partition"``).

    Examples
    --------
    >>> check_blocks([[0, 2], [1]], 3)
    [array([0, 2]), array([1])]
    >>> check_blocks([[0], [0, 1]], 2)
    Traceback (most recent call last):
    ...
    ValueError: blocks must partition the coordinates: coordinate 0 is in more than one block.
    """
    n_coords = check_scalar(n_coords, "n_coords", kind=int, min_value=1)
    if isinstance(blocks, (str, bytes)) or not hasattr(blocks, "__iter__"):
        raise TypeError(f"{name} must be a sequence of index arrays, got {type(blocks).__name__}.")
    out = []
    seen = np.zeros(n_coords, dtype=int)
    for i, block in enumerate(blocks):
        try:
            arr = np.asarray(block)
        except (TypeError, ValueError):
            raise ValueError(f"{name}[{i}] must be a 1-D sequence of indices.") from None
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"{name}[{i}] must be a non-empty 1-D sequence of indices.")
        arr = check_indices(
            arr, f"{name}[{i}]", n_coords, hint=f"{name} must partition the coordinates."
        )
        np.add.at(seen, arr, 1)
        out.append(arr)
    if np.any(seen > 1):
        raise ValueError(
            f"{name} must partition the coordinates: coordinate "
            f"{int(np.flatnonzero(seen > 1)[0])} is in more than one block."
        )
    if np.any(seen == 0):
        raise ValueError(
            f"{name} must partition the coordinates: coordinate "
            f"{int(np.flatnonzero(seen == 0)[0])} is in no block."
        )
    return out


def make_partition(kind: str, lipschitz: np.ndarray, block_size: int) -> list[np.ndarray]:
    """Fixed blocks of (at most) ``block_size`` coordinates.

    ``"order"``: consecutive coordinates; ``"sorted"``: coordinates sorted by decreasing
    Lipschitz constant, then cut into consecutive blocks (similar constants together, the best
    fixed partition for Lipschitz-aware rules); ``"avg"``: the sorted coordinates dealt out
    round-robin, so that every block has about the same average constant.

    Examples
    --------
    >>> [b.tolist() for b in make_partition("sorted", np.array([1.0, 4.0, 2.0, 3.0]), 2)]
    [[1, 3], [2, 0]]
    >>> [b.tolist() for b in make_partition("avg", np.array([1.0, 4.0, 2.0, 3.0]), 2)]
    [[1, 2], [3, 0]]
    """
    check_choice(kind, "kind", ("order", "sorted", "avg"))
    lipschitz = check_array(lipschitz, "lipschitz", ndim=1)
    block_size = check_scalar(block_size, "block_size", kind=int, min_value=1)
    p = lipschitz.shape[0]
    n_blocks = -(-p // block_size)
    if kind == "order":
        return [np.arange(i * block_size, min(p, (i + 1) * block_size)) for i in range(n_blocks)]
    order = np.argsort(-lipschitz, kind="stable")
    if kind == "sorted":
        return [order[i * block_size : (i + 1) * block_size] for i in range(n_blocks)]
    if kind == "avg":
        return [order[i::n_blocks] for i in range(n_blocks)]
    raise ValueError(f"unknown partition {kind!r}.")


def red_black_partition(graph) -> list[np.ndarray]:
    """Colour classes of a greedy graph colouring (two colours on a lattice).

    No two nodes of a class are neighbours, so each class induces a graph without edges (a
    forest): the block's Hessian of a graph quadratic is diagonal and the exact block update
    is one division per node.

    Examples
    --------
    >>> path = np.diag(np.ones(3), 1) + np.diag(np.ones(3), -1)
    >>> [b.tolist() for b in red_black_partition(path)]
    [[0, 2], [1, 3]]
    """
    if sp.issparse(graph):
        A = sp.csr_matrix(graph)
    else:
        A = sp.csr_matrix(check_array(graph, "graph", ndim=2))
    n = A.shape[0]
    if A.shape != (n, n):
        raise ValueError(f"graph must be a square adjacency matrix, got shape {A.shape}.")
    colour = -np.ones(n, dtype=int)
    # Breadth-first order, so that a bipartite graph (a lattice) gets exactly two colours.
    for start in range(n):
        if colour[start] >= 0:
            continue
        colour[start] = 0
        queue = [start]
        while queue:
            node = queue.pop(0)
            neighbours = A.indices[A.indptr[node] : A.indptr[node + 1]]
            for nb in neighbours:
                if nb != node and colour[nb] < 0:
                    used = {
                        colour[m] for m in A.indices[A.indptr[nb] : A.indptr[nb + 1]] if m != nb
                    }
                    c = 0
                    while c in used:
                        c += 1
                    colour[nb] = c
                    queue.append(nb)
    return [np.flatnonzero(colour == c) for c in range(colour.max() + 1)]
