"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import time
import warnings

import numpy as np


def best_of(func, repeat: int = 1, *, clock=time.perf_counter):
    """``(func()``'s last output, the smallest ``clock`` time of ``repeat`` calls), warnings
    silenced: on a shared, noisy machine the minimum is the least disturbed run
    (``clock=time.process_time`` for the CPU time of this process)."""
    best, out = np.inf, None
    for _ in range(repeat):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = clock()
            out = func()
            best = min(best, clock() - start)
    return out, best


def timed(func):
    """``(func(), wall seconds)`` of one call, warnings silenced."""
    return best_of(func)


def best_time(func, *, repeat: int = 3) -> float:
    """Smallest wall time of ``repeat`` calls (the least disturbed by other load)."""
    return best_of(func, repeat)[1]


def cpuinfo(field: str) -> str | None:
    """The first value of ``field`` (``"model name"``, ``"vendor_id"``) in /proc/cpuinfo;
    None where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def gaussian_clouds(n: int, seed: int = 0, *, shift: float = 0.0, mass_b: float = 1.0):
    """``(a, b, C)``: the squared distances between two standard 2-D Gaussian samples of
    ``n`` points, the second shifted by ``shift``, scaled to a largest cost of 1; uniform
    weights of total mass 1 (``a``) and ``mass_b`` (``b``)."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 2)), rng.standard_normal((n, 2)) + shift
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    return np.full(n, 1.0 / n), np.full(n, mass_b / n), C / C.max()


def first_index_below(values, target) -> int | None:
    """1-based index of the first entry <= target, or None."""
    hits = np.flatnonzero(np.asarray(values) <= target)
    return None if hits.size == 0 else int(hits[0]) + 1


def measured_table(measure, cases) -> str:
    """The Markdown table of ``measure(*case)`` (a row dict) over ``cases``, each row printed
    as soon as it is measured (a long run shows its progress and keeps what it measured)."""
    rows = []
    for case in cases:
        rows.append(measure(*case))
        print(rows[-1], flush=True)
    return markdown_table(rows)


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
