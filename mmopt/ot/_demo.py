"""The OT family's part of ``mmopt demo``: one transport problem, solved four ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmopt._core._demo import line_plot, save_figure, timed


def _clouds(n):
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, n)
    source = rng.normal(scale=0.3, size=(n, 2)) + np.c_[np.cos(angle), np.sin(angle)] * 0.2
    target = np.c_[np.cos(angle), np.sin(angle)] * 1.5 + rng.normal(scale=0.1, size=(n, 2))
    return source, target


def _plot_plans(source, target, plans, path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(plans), figsize=(4 * len(plans), 4), sharey=True)
    for ax, (title, plan) in zip(axes, plans):
        plan = plan.toarray() if hasattr(plan, "toarray") else np.asarray(plan)
        rows, cols = np.nonzero(plan > 1e-3 * plan.max())
        strength = plan[rows, cols] / plan.max()
        for i, j, s in zip(rows, cols, strength):
            ax.plot(*zip(source[i], target[j]), color="tab:grey", alpha=float(s) * 0.6, lw=0.6)
        ax.scatter(*source.T, s=6, label="source")
        ax.scatter(*target.T, s=6, label="target")
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
    axes[0].legend(loc="upper right", fontsize=8)
    return save_figure(fig, path, dpi=110)


def _plot_convergence(curves, title, path):
    curves = [(label, seconds, np.maximum(error, 1e-16)) for label, seconds, error in curves]
    return line_plot(curves, path, title=title, xlabel="seconds", ylabel="L1 marginal error")


def run(output_dir: Path | None, *, quick: bool = False, verbose: int = 0):
    """Solve the OT example; return (table rows, paths of the plots written)."""
    from mmopt.ot import exact_ot, sinkhorn, sinkhorn_newton_sparse, sparsity_constrained_ot

    n = 150 if quick else 400
    source, target = _clouds(n)
    C = ((source[:, None] - target[None]) ** 2).sum(-1)
    C /= C.max()
    label = f"OT, {n} points to a ring, cost / max"
    rows, files = [], []

    exact, t_exact = timed(exact_ot, [], [], C)
    rows.append(
        {
            "problem": label,
            "method": "exact (HiGHS / assignment)",
            "iterations": 1,
            "objective": exact.fun,
            "seconds": t_exact,
            "status": exact.status,
        }
    )
    reg = 2e-3
    runs = {}
    for name, func in (
        ("Sinkhorn (log domain)", sinkhorn),
        ("Sinkhorn-Newton-Sparse", sinkhorn_newton_sparse),
    ):
        result, seconds = timed(func, [], [], C, reg, tol=1e-9, max_iter=20_000, verbose=verbose)
        runs[name] = result
        rows.append(
            {
                "problem": label,
                "method": f"{name}, reg {reg:g}",
                "iterations": result.nit,
                "objective": result.transport_cost,
                "seconds": seconds,
                "status": result.status,
            }
        )
    sparse, t_sparse = timed(
        sparsity_constrained_ot, [], [], C, 2, 0.1, polish=True, verbose=verbose
    )
    rows.append(
        {
            "problem": label,
            "method": "<= 2 nonzeros per column, reg 0.1",
            "iterations": sparse.nit,
            "objective": sparse.transport_cost,
            "seconds": t_sparse,
            "status": sparse.status,
        }
    )
    if output_dir is not None:
        files.append(
            _plot_plans(
                source,
                target,
                [
                    ("exact", exact.plan),
                    (f"entropic, reg {reg:g}", runs["Sinkhorn (log domain)"].plan),
                    ("at most 2 per column", sparse.plan),
                ],
                Path(output_dir) / "ot_plans.png",
            )
        )
        curves = [(name, r.history["time"], r.history["residual"]) for name, r in runs.items()]
        files.append(
            _plot_convergence(
                curves, f"{label}, reg {reg:g}", Path(output_dir) / "ot_convergence.png"
            )
        )
    return rows, files
