"""The ``mmopt`` command line: ``mmopt demo``, ``mmopt register`` (and, as families land, more)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]

DEFAULT_OUTPUT = "mmopt-demo-output"


def _format_table(rows: list[dict]) -> str:
    """Render a list of dicts with the same keys as a plain-text table."""
    if not rows:
        return "(no results)"
    columns = list(rows[0])
    cells = [[_format_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _demo(args: argparse.Namespace) -> int:
    from mmopt.mm import _demo as mm_demo
    from mmopt.ot import _demo as ot_demo
    from mmopt.registration import _demo as registration_demo

    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        plots = not args.no_plots
    except ImportError:
        plots = False
        print(
            "matplotlib is not installed: no plots will be written "
            '(pip install "mmopt[examples]").',
            file=sys.stderr,
        )
    demos = [
        ("majorization-minimization", mm_demo.run),
        ("optimal transport", ot_demo.run),
        ("registration", registration_demo.run),
    ]
    all_rows, written = [], []
    start = time.perf_counter()
    for family, run in demos:
        print(f"[{family}] solving ...", file=sys.stderr, flush=True)
        rows, files = run(output_dir if plots else None, quick=args.quick, verbose=args.verbose)
        all_rows += [{"family": family, **row} for row in rows]
        written += files
    print(_format_table(all_rows))
    print(f"\nsolved {len(all_rows)} problems in {time.perf_counter() - start:.1f} s")
    if written:
        print(f"plots written to {output_dir}:")
        for path in written:
            print(f"  {path}")
    return 0


def _print_rows(rows: list[tuple[str, object]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")


def _read_init(path: str):
    """The 4x4 matrix of ``--init``, with errors that name the file."""
    import numpy as np

    if not Path(path).is_file():
        raise ValueError(
            f"--init {path}: no such file (use centroids, identity or a text file holding a "
            "4x4 matrix)."
        )
    try:
        matrix = np.loadtxt(path, ndmin=2)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(
            f"--init {path}: not a text file holding a 4x4 matrix ({error})."
        ) from None
    if matrix.shape != (4, 4):
        raise ValueError(f"--init {path}: expected a 4x4 matrix, got shape {matrix.shape}.")
    return matrix


def _register(args: argparse.Namespace) -> int:
    if args.nonrigid:
        return _register_nonrigid(args)
    if args.faces is not None:
        print("mmopt register: error: --faces needs --nonrigid.", file=sys.stderr)
        return 2
    import numpy as np

    from mmopt.registration import ICP, RegistrationProblem, ScaleSchedule
    from mmopt.registration.io import read_point_cloud, write_point_cloud

    try:
        source, source_normals = read_point_cloud(args.source)
        target, target_normals = read_point_cloud(args.target)
        init = args.init
        if init not in ("centroids", "identity"):
            init = _read_init(init)
        problem = RegistrationProblem(source, target, target_normals=target_normals)
        solver = ICP(
            metric=args.metric.replace("-", "_"),
            loss=args.loss,
            schedule=None if args.nu is None else ScaleSchedule(nu=args.nu),
            init=init,
            anderson=not args.no_anderson,
            max_iter=args.max_iter,
            verbose=args.verbose,
        )
        result = solver.solve(problem)
    except (ValueError, TypeError, ImportError, OSError) as error:
        print(f"mmopt register: error: {error}", file=sys.stderr)
        return 2
    with np.printoptions(precision=8, suppress=True):
        print(result.transform)
    rows = [
        ("status", f"{result.status} ({result.message})"),
        ("iterations", result.nit),
        ("iterations per stage", " ".join(str(i) for i in result.iterations_per_stage)),
        ("nearest-neighbour queries", result.n_queries),
        ("Anderson accepted / rejected", f"{result.n_accepted} / {result.n_rejected}"),
        ("energy", f"{result.fun:.8g}"),
        ("final nu", "-" if result.nu is None else f"{result.nu:.4g}"),
        ("inlier ratio", f"{result.inlier_ratio:.4f}"),
        ("inlier RMSE", "-" if result.inlier_rmse is None else f"{result.inlier_rmse:.4g}"),
        ("seconds", f"{result.time:.3f}"),
    ]
    _print_rows(rows)
    if args.output:
        T = result.transform
        moved = source @ T[:3, :3].T + T[:3, 3]
        normals = None if source_normals is None else source_normals @ T[:3, :3].T
        try:
            write_point_cloud(args.output, moved, normals)
        except (ValueError, ImportError, OSError) as error:
            print(f"mmopt register: error: {error}", file=sys.stderr)
            return 2
        print(f"aligned source written to {args.output}")
    return 0 if result.success else 1


def _register_nonrigid(args: argparse.Namespace) -> int:
    import numpy as np

    from mmopt.registration import SPARE, NonRigidRegistrationProblem
    from mmopt.registration.io import read_faces, read_point_cloud, write_point_cloud

    try:
        source, source_normals = read_point_cloud(args.source)
        target, target_normals = read_point_cloud(args.target)
        faces = None if args.faces is None else read_faces(args.faces)
        problem = NonRigidRegistrationProblem(source, target, source_normals=source_normals,
                                              target_normals=target_normals, faces=faces)
        solver = SPARE(arap_weight=args.arap_weight, point_weight=args.point_weight,
                       arap_floor=args.arap_floor, coarse=not args.no_coarse,
                       max_iter=args.max_iter, verbose=args.verbose)
        result = solver.solve(problem)
    except (ValueError, TypeError, ImportError, OSError) as error:
        print(f"mmopt register: error: {error}", file=sys.stderr)
        return 2
    coarse = result.get("coarse_history", {}).get("fun", ())
    moved = np.linalg.norm(result.points - source, axis=1)
    rows = [
        ("status", f"{result.status} ({result.message})"),
        ("iterations (coarse + fine)", f"{len(coarse)} + {result.nit}"),
        ("graph nodes", len(result.nodes) if "nodes" in result else "-"),
        ("inlier ratio", f"{result.inlier_ratio:.4f}"),
        ("displacement RMS / max", f"{np.sqrt(np.mean(moved**2)):.4g} / {moved.max():.4g}"),
        ("seconds", f"{result.time:.3f}"),
    ]
    _print_rows(rows)
    if args.output:
        try:
            write_point_cloud(args.output, result.points, result.normals, faces=faces)
        except (ValueError, ImportError, OSError) as error:
            print(f"mmopt register: error: {error}", file=sys.stderr)
            return 2
        print(f"deformed source written to {args.output}")
    return 0 if result.success else 1


def build_parser() -> argparse.ArgumentParser:
    from mmopt import __version__

    parser = argparse.ArgumentParser(
        prog="mmopt",
        description="mmopt: majorization-minimization and related solvers, one API.",
    )
    parser.add_argument("--version", action="version", version=f"mmopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="solve the example problems of every family and plot the convergence",
        description=(
            "Solve the example problems of every solver family on data shipped with the "
            "package or generated, print a results table and write plots to a folder."
        ),
    )
    demo.add_argument(
        "--output-dir",
        default=DEFAULT_OUTPUT,
        help=f"folder for the plots (default: ./{DEFAULT_OUTPUT})",
    )
    demo.add_argument("--quick", action="store_true", help="smaller problems, fewer iterations")
    demo.add_argument("--no-plots", action="store_true", help="print the table only")
    demo.add_argument("-v", "--verbose", action="count", default=0, help="show solver progress")
    demo.set_defaults(func=_demo)
    register = sub.add_parser(
        "register",
        help="register two point clouds (rigid ICP, or non-rigid SPARE with --nonrigid)",
        description=(
            "Find the rigid transform T with TARGET ~= T SOURCE by robust ICP with Anderson "
            "acceleration; print T (4x4) and the diagnostics. With --nonrigid, deform SOURCE "
            "point by point onto TARGET (SPARE; the ICP options are then unused) and write "
            "the deformed source (with its faces, when given, as a PLY mesh). Files: .ply "
            "(needs plyfile), .xyz/.txt/.pts or .npy, with or without normals."
        ),
    )
    register.add_argument("source", help="the moving cloud")
    register.add_argument("target", help="the fixed cloud")
    register.add_argument(
        "--metric", choices=["point-to-point", "point-to-plane", "hybrid", "symmetric"],
        default="point-to-point",
    )
    register.add_argument(
        "--loss", choices=["welsch", "l2", "huber", "cauchy", "tukey", "trimmed"],
        default="welsch",
    )
    register.add_argument("--nu", type=float, default=None, help="fixed loss scale (tracking)")
    register.add_argument(
        "--init", default="centroids",
        help="centroids (default), identity, or a text file holding a 4x4 matrix",
    )
    register.add_argument("--no-anderson", action="store_true", help="plain ICP iterations")
    register.add_argument("--max-iter", type=int, default=1000)
    register.add_argument("-o", "--output", help="write the aligned source to this file")
    register.add_argument("--nonrigid", action="store_true",
                          help="non-rigid registration (SPARE) instead of rigid ICP")
    register.add_argument(
        "--faces", help="--nonrigid: triangles of the source (.ply face element, .npy or "
        "text rows of 3 vertex indices); their edges form the deformation graph",
    )
    register.add_argument("--arap-weight", type=float, default=200.0,
                          help="--nonrigid: weight of the as-rigid-as-possible term")
    register.add_argument("--point-weight", type=float, default=0.0,
                          help="--nonrigid: weight of the point-to-point part of the data "
                          "term (0: plane residuals only)")
    register.add_argument("--arap-floor", type=float, default=1.0,
                          help="--nonrigid: halve the ARAP weight each time the iteration "
                          "settles, down to this fraction of it (1: no continuation)")
    register.add_argument("--no-coarse", action="store_true",
                          help="--nonrigid: skip the deformation-graph coarse stage")
    register.add_argument("-v", "--verbose", action="count", default=0)
    register.set_defaults(func=_register)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mmopt`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
