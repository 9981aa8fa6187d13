"""Run every benchmark side by side with the peer libraries and write BENCHMARKS.md.

Usage::

    python benchmarks/run.py            # full sizes
    python benchmarks/run.py --quick    # small sizes, a smoke run
    python benchmarks/run.py --only mm  # one family: only its section of BENCHMARKS.md changes

Each ``bench_<family>.py`` module beside this script exposes ``run(quick: bool) -> str``,
returning a Markdown section. Figures are ratios measured in the same run on the same machine
(absolute times on shared machines are noise); each section says how it measured.

Every section sits between ``<!-- section: <family> -->`` and ``<!-- end: <family> -->``
markers under a line naming the date, CPU and threads it was measured with, so ``--only``
replaces just those sections of an existing file (appending the ones it lacks) and every figure
keeps the CPU it came from.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The thread variables as the run was started: read once, before any benchmark runs (starting a
# Dask LocalCluster sets OMP_NUM_THREADS=1 and OPENBLAS_NUM_THREADS=1 in this process's own
# environment, which would otherwise be reported for every section measured before it).
_THREADS = ", ".join(
    f"{name}={os.environ.get(name, 'unset')}"
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
)
FAMILIES = [
    "mm", "sso", "moe", "ot", "ot_batched", "sparse_ot", "pointcloud", "smooth_ot",
    "pointcloud_peers", "unbalanced", "clustering", "icp", "icp_scale", "symmetric", "nonrigid",
    "bilevel", "bcd",
]


def _cpu_model() -> str:
    """The CPU's model name, and which exp the Sinkhorn kernels use on it."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from mmopt_ext._sinkhorn import exp_path

        return f"{model} (Sinkhorn exp: {exp_path()})"
    except (ImportError, AttributeError):
        return model


def _environment() -> str:
    import numpy
    import scipy
    import sklearn

    import mmopt

    return (
        f"- date: {datetime.date.today().isoformat()}\n"
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}\n"
        f"- cpu: {_cpu_model()}\n"
        f"- threads: "
        + _THREADS
        + "\n"
        f"- mmopt {mmopt.__version__} (OpenMP: {mmopt.openmp_enabled()}), numpy "
        f"{numpy.__version__}, scipy {scipy.__version__}, scikit-learn {sklearn.__version__}\n"
    )


# Optional packages that change what mmopt itself runs (its KD-tree, SPARE's sparse
# solver): a section's figures depend on whether they were installed.
_OPTIONAL_BACKENDS = ("pykdtree", "cholespy")


def _backends() -> str:
    import importlib.util

    return ", ".join(f"{name} {'installed' if importlib.util.find_spec(name) else 'absent'}"
                     for name in _OPTIONAL_BACKENDS)


def _measured_on(quick: bool) -> str:
    """One line naming when, on which CPU, with which threads and optional back ends a
    section was measured."""
    return (
        f"_Measured {datetime.date.today().isoformat()} on {_cpu_model()}, "
        f"{os.cpu_count()} CPUs, {_THREADS}; {_backends()}"
        f"{' (--quick: smoke-test sizes)' if quick else ''}._"
    )


def _wrap(family: str, section: str, quick: bool = False) -> str:
    return (
        f"<!-- section: {family} -->\n{_measured_on(quick)}\n\n{section.strip()}\n"
        f"<!-- end: {family} -->"
    )


def _splice(text: str, family: str, block: str) -> str:
    """``text`` with the marked section of ``family`` replaced by ``block`` (or appended)."""
    pattern = re.compile(
        rf"<!-- section: {re.escape(family)} -->.*?<!-- end: {re.escape(family)} -->", re.S
    )
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--only", choices=FAMILIES, action="append", help="families to run")
    parser.add_argument("--output", default=str(HERE.parent / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    blocks = {}
    for family in args.only or FAMILIES:
        module = importlib.import_module(f"bench_{family}")
        start = time.perf_counter()
        print(f"running bench_{family} ...", file=sys.stderr, flush=True)
        blocks[family] = _wrap(family, module.run(quick=args.quick), args.quick)
        print(f"  done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    output = Path(args.output)
    if args.only and output.exists():
        text = output.read_text()
        for family, block in blocks.items():
            text = _splice(text, family, block)
    else:
        command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
        text = (
            "# mmopt benchmarks\n\n"
            f"Written by `{command}`. Ratios are measured in one run, side by side; "
            "absolute times on these shared machines are only indicative. Each section "
            "names the date, CPU and threads it was measured with.\n\n"
            + _environment()
            + "\n"
            + "\n\n".join(blocks.values())
            + "\n"
        )
    output.write_text(text)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
