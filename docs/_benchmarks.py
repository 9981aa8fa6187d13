"""BENCHMARKS.md as reStructuredText, for the Benchmarks page of the docs.

``benchmarks/run.py`` writes a small part of Markdown: ATX headings, paragraphs, ``-``
lists, pipe tables (``\\|`` inside a cell) and inline code. Converting that part here keeps
the docs build free of a Markdown parser; :func:`markdown_to_rst` raises ``ValueError`` on
anything else (a table row with the wrong number of cells, say), so a change in the file's
format fails the build instead of rendering wrongly.
"""

from __future__ import annotations

import re

__all__ = [
    "markdown_to_rst", "plot_pointcloud_scale", "plot_scan_scale", "pointcloud_scale_rows",
    "scan_scale_rows",
]

# Section underlines below the page's own title ("="), by Markdown heading level.
_UNDERLINES = {1: "-", 2: "~", 3: "^", 4: '"'}
_HEADING = re.compile(r"^(#{1,4})\s+(.*?)\s*#*\s*$")
_CODE = re.compile(r"`([^`]+)`")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_RST_SPECIAL = re.compile(r"([\\*_`|])")
# What reStructuredText would read as a list or enumeration at the start of a cell.
_LEADING_MARKUP = re.compile(r"^([-+*•]|\d+[.)]|#\.)(\s|$)")


def _escape(text: str) -> str:
    return _RST_SPECIAL.sub(r"\\\1", text)


def _inline(text: str) -> str:
    """Escape reST markup in plain text; turn `code` into ``code``."""
    out, last = [], 0
    for match in _CODE.finditer(text):
        out.append(_escape(text[last : match.start()]))
        before = text[match.start() - 1] if match.start() > 0 else " "
        after = text[match.end()] if match.end() < len(text) else " "
        # An inline literal must stand apart from word characters; "\ " joins it invisibly.
        out.append(("\\ " if before.isalnum() else "") + f"``{match.group(1)}``")
        if after.isalnum():
            out.append("\\ ")
        last = match.end()
    out.append(_escape(text[last:]))
    return "".join(out)


def _cells(line: str) -> list[str]:
    line = line.strip()
    if not (line.startswith("|") and line.endswith("|")):
        raise ValueError(f"a table row must start and end with '|': {line!r}")
    return [cell.strip().replace("\\|", "|") for cell in _CELL_SPLIT.split(line[1:-1])]


def _table(lines: list[str]) -> list[str]:
    header = _cells(lines[0])
    if len(lines) < 2 or not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[1].strip()):
        raise ValueError(f"a table needs a |---| line under its header: {lines[0]!r}")
    out = [".. list-table::", "   :header-rows: 1", ""]
    for line in [lines[0], *lines[2:]]:
        cells = _cells(line)
        if len(cells) != len(header):
            raise ValueError(
                f"table row has {len(cells)} cells, its header {len(header)}: {line!r}"
            )
        for i, cell in enumerate(cells):
            text = _inline(cell)
            if _LEADING_MARKUP.match(text):
                text = "\\" + text
            out.append(("   * - " if i == 0 else "     - ") + text)
    return out


def markdown_to_rst(markdown: str, *, skip_title: bool = True) -> str:
    """Convert the Markdown of BENCHMARKS.md to reStructuredText.

    Parameters
    ----------
    markdown : str
        The file's text.
    skip_title : bool, default=True
        Drop the first level-1 heading (the page has its own title).

    Returns
    -------
    str
        reStructuredText whose sections sit below a page title underlined with ``=``.
    """
    lines = markdown.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("<!--"):
            # blank lines and run.py's section markers (HTML comments) render as nothing
            i += 1
            continue
        heading = _HEADING.match(line)
        if heading:
            level, title = len(heading.group(1)), heading.group(2)
            if skip_title and level == 1:
                skip_title = False
            else:
                text = _inline(title)
                out += [text, _UNDERLINES[level] * len(text), ""]
            i += 1
            continue
        if line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            out += _table(block) + [""]
            continue
        if line.startswith("- "):
            while i < len(lines) and lines[i].startswith("- "):
                item = [lines[i][2:].strip()]
                i += 1
                while i < len(lines) and lines[i].startswith("  ") and lines[i].strip():
                    item.append(lines[i].strip())
                    i += 1
                out.append("- " + _inline(" ".join(item)))
            out.append("")
            continue
        paragraph = []
        while i < len(lines) and lines[i].strip() and not (
            lines[i].lstrip().startswith("<!--")
            or _HEADING.match(lines[i])
            or lines[i].lstrip().startswith("|")
            or lines[i].startswith("- ")
        ):
            paragraph.append(lines[i].strip())
            i += 1
        text = _inline(" ".join(paragraph))
        if _LEADING_MARKUP.match(text):
            text = "\\" + text
        out += [text, ""]
    return "\n".join(out).rstrip() + "\n"


def scan_scale_rows(markdown: str) -> list[dict]:
    """The rows of the time table of BENCHMARKS.md's ``icp_scale`` section.

    Each row is a dict of the table's header cells (``points (source)``, ``method``,
    ``seconds``, ...); empty when the section or its table is missing.
    """
    match = re.search(r"<!-- section: icp_scale -->(.*?)<!-- end: icp_scale -->", markdown,
                      re.DOTALL)
    if match is None:
        return []
    lines = [line for line in match.group(1).splitlines() if line.strip().startswith("|")]
    rows, header = [], None
    for line in lines:
        cells = _cells(line)
        if re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()):
            continue
        if "points (source)" in cells and "seconds" in cells:
            header = cells
        elif header is not None and len(cells) == len(header):
            rows.append(dict(zip(header, cells)))
        else:
            header = None  # another table (icp_many's)
    return rows


def plot_scan_scale(markdown: str, path) -> None:
    """Wall time against the source's point count, per method, from the ``icp_scale``
    table of BENCHMARKS.md (log-log, with a slope-1 guide: linear growth), saved to
    ``path``. Reads the table only: the docs build never runs the benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = scan_scale_rows(markdown)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    methods: dict[str, list] = {}
    for row in rows:
        try:
            point = (float(row["points (source)"]), float(row["seconds"]),
                     row["case"].startswith("synthetic"))
        except (KeyError, ValueError):
            continue
        methods.setdefault(row["method"], []).append(point)
    for method, points in methods.items():
        color = None
        for synthetic, style in ((False, "o-"), (True, "s--")):
            kind = sorted(p[:2] for p in points if p[2] == synthetic)
            if kind:
                n, t = zip(*kind)
                label = f"{method} ({'synthetic' if synthetic else 'scan pair'})"
                color = ax.plot(n, t, style, color=color, label=label)[0].get_color()
    mmopt = sorted(next((p for m, p in methods.items() if m.startswith("mmopt")), []))
    if mmopt:
        n0, t0 = mmopt[0][:2]
        guide = [n0, mmopt[-1][0]]
        ax.plot(guide, [t0, t0 * guide[1] / n0], "k:", label="linear growth")
    _finish_log_log(fig, ax, path, empty=not methods, what="icp_scale",
                    xlabel="source points",
                    title="Rigid registration at scan scale (BENCHMARKS.md, icp_scale)")


def _finish_log_log(fig, ax, path, *, empty, what, xlabel, title, legend_size=8) -> None:
    """Log-log axes, labels and legend of a time-vs-size figure; save it to ``path``."""
    import matplotlib.pyplot as plt

    if empty:
        ax.text(0.5, 0.5, f"no {what} measurements in BENCHMARKS.md", ha="center",
                transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("wall time (s)")
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# The point-cloud OT sections and the solver each table row must name to be plotted.
_POINTCLOUD_SECTIONS = {
    "pointcloud": ("sharp", "pointcloud_sinkhorn"),
    "smooth_ot": ("smooth", "mmopt"),
}
_MEASURED_ON = re.compile(r"^_Measured \S+ on ([^(,]+)")


def pointcloud_scale_rows(markdown: str) -> list[dict]:
    """Finished point-cloud OT solves from BENCHMARKS.md's ``pointcloud`` (sharp regime) and
    ``smooth_ot`` (smooth regime) sections, at ``n >= 10^4`` (the range the scaling claim
    covers).

    Each row is a dict with ``regime``, ``d``, ``n``, ``seconds`` and ``cpu`` (the CPU model
    of the nearest ``_Measured ... on ...`` line above its table); rows of peers, of
    unfinished solves and of other tables are left out.
    """
    import numpy as np

    rows = []
    for section, (regime, solver) in _POINTCLOUD_SECTIONS.items():
        match = re.search(rf"<!-- section: {section} -->(.*?)<!-- end: {section} -->",
                          markdown, re.DOTALL)
        if match is None:
            continue
        header, cpu, label = None, "", regime
        for line in match.group(1).splitlines():
            measured = _MEASURED_ON.match(line.strip())
            if measured:
                cpu = measured.group(1).strip()
            if line.startswith("#"):
                # The sharp section's growth table runs at a reg fixed in squared point
                # spacings (a fixed number of kept pairs per point): a line of its own.
                label = f"{regime}, reg ~ spacing^2" if "fixed number" in line else regime
            if not line.strip().startswith("|"):
                header = None
                continue
            if re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()):
                continue
            cells = _cells(line)
            if header is None:
                header = cells
                continue
            if len(cells) != len(header):
                continue
            row = dict(zip(header, cells))
            if row.get("solver") != solver or row.get("status", "0") not in ("0", ""):
                continue
            try:
                point = {"regime": label, "d": int(row["d"]), "n": int(row["n = m"]),
                         "seconds": float(row["time (s)"]), "cpu": cpu}
            except (KeyError, ValueError):
                continue
            if point["n"] >= 10_000 and np.isfinite(point["seconds"]):
                rows.append(point)
    return rows


def plot_pointcloud_scale(markdown: str, path) -> None:
    """Wall time against n = m for point-cloud OT, one line per regime, dimension and CPU,
    from BENCHMARKS.md (log-log, with an n log n guide), saved to ``path``. Reads the tables
    only: the docs build never runs the benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = pointcloud_scale_rows(markdown)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines: dict[tuple, dict[int, float]] = {}
    for row in rows:
        # One point per size: the fastest measurement of that size on that CPU.
        line = lines.setdefault((row["regime"], row["d"], row["cpu"]), {})
        line[row["n"]] = min(line.get(row["n"], np.inf), row["seconds"])
    for (regime, d, cpu), points in sorted(lines.items()):
        n, t = zip(*sorted(points.items()))
        style = {"sharp": "o-", "smooth": "s--"}.get(regime, "^-.")
        ax.plot(n, t, style, label=f"{regime}, {d}-D ({cpu})")
    if rows:
        n_all = sorted({row["n"] for row in rows})
        first = min(lines.items(), key=lambda item: min(item[1]))[1]
        n0 = min(first)
        guide = np.array([n0, n_all[-1]], dtype=float)
        ax.plot(guide, first[n0] * guide * np.log(guide) / (n0 * np.log(n0)), "k:",
                label="n log n growth")
    _finish_log_log(fig, ax, path, empty=not rows, what="point-cloud OT",
                    xlabel="points per cloud (n = m)", legend_size=7,
                    title="Point-cloud OT (BENCHMARKS.md, pointcloud and smooth_ot)")
