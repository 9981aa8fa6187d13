"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import time
import warnings

import numpy as np


def timed(func):
    """``(func(), wall seconds)`` of one call, warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        out = func()
        return out, time.perf_counter() - start


def best_time(func, *, repeat: int = 3) -> float:
    """Smallest wall time of ``repeat`` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeat):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            func()
            times.append(time.perf_counter() - start)
    return min(times)


def first_index_below(values, target) -> int | None:
    """1-based index of the first entry <= target, or None."""
    hits = np.flatnonzero(np.asarray(values) <= target)
    return None if hits.size == 0 else int(hits[0]) + 1


def markdown_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(map(_escape, columns)) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "—" if value is None else _escape(str(value))


def _escape(text: str) -> str:
    # A bare "|" inside a cell (as in "max |a - b|") would end the cell.
    return text.replace("|", "\\|")
