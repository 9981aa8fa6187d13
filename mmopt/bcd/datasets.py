"""Former home of the BCD problem generators, now in :mod:`mmopt.datasets`.

``from mmopt.bcd.datasets import make_sparse_least_squares`` (as the examples of earlier
releases did) still works and warns; import them from :mod:`mmopt.datasets`.
"""

from __future__ import annotations

import warnings

__all__: list[str] = []

_MOVED = ("make_sparse_least_squares", "make_lattice_graph")


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(
            f"mmopt.bcd.datasets.{name} moved to mmopt.datasets.{name}; import it from there.",
            DeprecationWarning,
            stacklevel=2,
        )
        import mmopt.datasets

        return getattr(mmopt.datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
