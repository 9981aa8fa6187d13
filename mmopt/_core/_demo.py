"""What the families' parts of ``mmopt demo`` share: timing a solve and finishing a plot."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from mmopt._core.exceptions import ConvergenceWarning


def timed(func, *args, **kwargs):
    """``(func(*args, **kwargs), seconds)``, without non-convergence warnings (the demo's
    table shows each solve's status, so a warning would only repeat it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        result = func(*args, **kwargs)
        return result, time.perf_counter() - start


def line_plot(curves, path: Path, *, title: str, xlabel: str, ylabel: str, logy: bool = True,
              title_size: int = 10) -> Path:
    """Plot ``(label, x, y)`` curves on one axis (log scale in ``y`` unless ``logy`` is
    False) with a legend, save to ``path`` and return it."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, x, y in curves:
        (ax.semilogy if logy else ax.plot)(x, y, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=title_size)
    ax.legend()
    return save_figure(fig, path, dpi=120)


def save_figure(fig, path: Path, *, dpi: int) -> Path:
    """Lay out, save and close ``fig``; return ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
