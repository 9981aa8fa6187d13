"""The MM family's part of ``mmopt demo``: both built-in problems, plain MM against MM+AA."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmopt._core._demo import line_plot, timed


def _rows_and_curves(label, fits):
    """Table rows and convergence curves for fits of one problem with and without AA."""
    best = min(result.fun for _, result, _ in fits)
    rows, curves = [], []
    for method, result, seconds in fits:
        rows.append(
            {
                "problem": label,
                "method": method,
                "iterations": result.nit,
                "evaluations": result.n_evaluations,
                "objective": result.fun,
                "seconds": seconds,
                "status": result.status,
            }
        )
        # Relative to the best value found, floored so the best run does not plunge to zero.
        gap = np.maximum((result.history["fun"] - best) / abs(best), 1e-10)
        curves.append((method, result.history["n_evaluations"], gap))
    return rows, curves


def _plot(curves, title, path):
    return line_plot(curves, path, title=title,
                     xlabel="MM-map evaluations (objective + surrogate minimizer)",
                     ylabel="(F(x_k) - F_best) / |F_best|")


def run(output_dir: Path | None, *, quick: bool = False, verbose: int = 0):
    """Solve the MM examples; return (table rows, paths of the plots written)."""
    from sklearn.datasets import load_digits

    from mmopt.datasets import load_diabetes_with_outliers
    from mmopt.mm import MMNMF, MMRobustRegressor

    rows, files = [], []

    X, y, _ = load_diabetes_with_outliers(outlier_fraction=0.1, random_state=0)
    for loss in ("huber", "welsch"):
        fits = []
        for anderson, method in ((False, "MM"), (True, "MM + Anderson")):
            model, seconds = timed(
                MMRobustRegressor(
                    loss=loss, anderson=anderson, tol=1e-10, max_iter=5000, verbose=verbose
                ).fit,
                X,
                y,
            )
            fits.append((method, model.result_, seconds))
        label = f"robust regression ({loss}), diabetes + 10% outliers"
        new_rows, curves = _rows_and_curves(label, fits)
        rows += new_rows
        if output_dir is not None:
            files.append(_plot(curves, label, Path(output_dir) / f"mm_robust_{loss}.png"))

    digits = load_digits().data
    if quick:
        digits = digits[:400]
    fits = []
    for anderson, method in ((False, "MM"), (True, "MM + Anderson")):
        model, seconds = timed(
            MMNMF(
                n_components=10,
                init="nndsvda",
                anderson=anderson,
                tol=1e-4,
                max_iter=300 if quick else 5000,
                random_state=0,
                verbose=verbose,
            ).fit,
            digits,
        )
        fits.append((method, model.result_, seconds))
    label = f"NMF (Frobenius, k=10), digits {digits.shape[0]}x{digits.shape[1]}"
    new_rows, curves = _rows_and_curves(label, fits)
    rows += new_rows
    if output_dir is not None:
        files.append(_plot(curves, label, Path(output_dir) / "mm_nmf_digits.png"))
    return rows, files
