"""The ``mmopt`` command line: ``mmopt demo`` (and, as families land, more subcommands)."""

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
    demos = [("majorization-minimization", mm_demo.run), ("optimal transport", ot_demo.run)]
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
