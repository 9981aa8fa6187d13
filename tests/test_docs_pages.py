"""Pages of the docs whose content is code or data: the "Writing a solver" walk-through runs
as a doctest, and BENCHMARKS.md converts to clean reStructuredText for the Benchmarks page."""

import io
import re
from pathlib import Path

import pytest
from _helpers import load_repo_script

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
WRITING = DOCS / "user_guide" / "writing_a_solver.rst"
BENCHMARKS = ROOT / "BENCHMARKS.md"


def _docs_benchmarks(name: str = "_mmopt_docs_benchmarks"):
    """docs/_benchmarks.py (the Benchmarks page's converter and figures), loaded as ``name``."""
    return load_repo_script("docs/_benchmarks.py", name)


def _converter():
    return _docs_benchmarks().markdown_to_rst


@pytest.mark.skipif(not WRITING.exists(), reason="no docs/ next to the tests")
def test_writing_a_solver_page_runs(fuzz):
    # In a fresh interpreter: the page registers example solvers, which must not join the
    # registry the common tests iterate over.
    out = fuzz.run_isolated(
        f"""
        import doctest, sys, warnings
        import mmopt
        warnings.simplefilter("error", mmopt.ConvergenceWarning)
        result = doctest.testfile(
            {str(WRITING)!r},
            module_relative=False,
            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        )
        print("attempted", result.attempted)
        sys.exit(1 if result.failed else 0)
        """,
        timeout=120,
    )
    attempted = int(re.search(r"attempted (\d+)", out.stdout).group(1))
    assert attempted > 30


def _rst_problems(rst: str) -> str:
    docutils_core = pytest.importorskip("docutils.core")
    messages = io.StringIO()
    docutils_core.publish_doctree(
        "Benchmarks\n==========\n\n" + rst,
        settings_overrides={"warning_stream": messages, "report_level": 1, "halt_level": 5},
    )
    return messages.getvalue()


@pytest.mark.skipif(not BENCHMARKS.exists(), reason="no BENCHMARKS.md next to the tests")
def test_benchmarks_md_converts_to_clean_rst():
    markdown = BENCHMARKS.read_text(encoding="utf-8")
    rst = _converter()(markdown)
    assert _rst_problems(rst) == ""
    # Every table and every section heading (but the file's title) made it across.
    n_tables = len(re.findall(r"^\|[-:| ]+\|\s*$", markdown, re.M))
    assert rst.count(".. list-table::") == n_tables > 10
    headings = re.findall(r"^#{1,4} (.*)$", markdown, re.M)
    unescaped = rst.replace("\\", "")
    for title in headings[1:]:
        assert title.replace("`", "") in unescaped.replace("``", "")


@pytest.mark.skipif(not BENCHMARKS.exists(), reason="no BENCHMARKS.md next to the tests")
def test_benchmarks_md_says_where_it_ran():
    header = BENCHMARKS.read_text(encoding="utf-8").split("\n# ", 2)[0]
    for line in ("- date:", "- machine:", "- cpu:", "- threads:"):
        assert line in header, f"BENCHMARKS.md does not record {line!r}"


def test_converter_escapes_markup_and_keeps_cells():
    convert = _converter()
    rst = convert(
        "# Title\n\n## Section\n\nSee `run.py`s *output*_ for f*.\n\n"
        "| name | max \\|a - b\\| |\n|---|---|\n| - 1 | `x` |\n| 1. | -1 |\n\n- item `a|b`\n"
    )
    assert "Title" not in rst
    assert "Section\n~~~~~~~" in rst
    assert r"See ``run.py``\ s \*output\*\_ for f\*." in rst
    assert r"     - max \|a - b\|" in rst
    assert r"   * - \- 1" in rst and r"   * - \1." in rst and "     - -1" in rst
    assert "- item ``a|b``" in rst
    assert _rst_problems(rst) == ""


def test_converter_refuses_a_malformed_table():
    convert = _converter()
    with pytest.raises(ValueError, match="3 cells, its header 2"):
        convert("| a | b |\n|---|---|\n| 1 | 2 | 3 |\n")
    with pytest.raises(ValueError, match=r"\|---\|"):
        convert("| a | b |\n| 1 | 2 |\n")


def test_scan_scale_figure_reads_the_benchmarks_table(tmp_path):
    # The registration guide's figure: the icp_scale table of BENCHMARKS.md, plotted.
    pytest.importorskip("matplotlib")
    module = _docs_benchmarks("_mmopt_docs_benchmarks_fig")
    markdown = BENCHMARKS.read_text(encoding="utf-8")
    rows = module.scan_scale_rows(markdown)
    assert rows and all(float(row["seconds"]) > 0 for row in rows)
    assert {"mmopt icp (defaults)"} <= {row["method"] for row in rows}
    assert module.scan_scale_rows("no section") == []
    module.plot_scan_scale(markdown, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 1000


def test_pointcloud_scale_figure_reads_the_benchmarks_tables(tmp_path):
    # The OT guide's figure: finished pointcloud / smooth_ot solves at n >= 10^4, plotted.
    pytest.importorskip("matplotlib")
    module = _docs_benchmarks("_mmopt_docs_benchmarks_pc")
    markdown = BENCHMARKS.read_text(encoding="utf-8")
    rows = module.pointcloud_scale_rows(markdown)
    assert {"sharp", "smooth"} <= {row["regime"] for row in rows}
    assert all(row["n"] >= 10_000 and row["seconds"] > 0 and row["cpu"] for row in rows)
    table = (
        "<!-- section: pointcloud -->\n_Measured 2026-01-01 on Some CPU, 2 CPUs._\n\n"
        "| n = m | d | solver | time (s) | status |\n|---|---|---|---|---|\n"
        "| 10000 | 3 | pointcloud_sinkhorn | 2.5 | 0 |\n"
        "| 10000 | 3 | POT lazy | 90 | 1 |\n"
        "| 100000 | 3 | pointcloud_sinkhorn | nan | timeout |\n"
        "| 1000 | 3 | pointcloud_sinkhorn | 0.1 | 0 |\n\n"
        "### Growth at a fixed number of kept pairs per point (3-D)\n\n"
        "| n = m | d | solver | time (s) | status |\n|---|---|---|---|---|\n"
        "| 30000 | 3 | pointcloud_sinkhorn | 4.0 | 0 |\n<!-- end: pointcloud -->"
    )
    assert module.pointcloud_scale_rows(table) == [
        {"regime": "sharp", "d": 3, "n": 10000, "seconds": 2.5, "cpu": "Some CPU"},
        {"regime": "sharp, reg ~ spacing^2", "d": 3, "n": 30000, "seconds": 4.0,
         "cpu": "Some CPU"}]
    assert module.pointcloud_scale_rows("no section") == []
    module.plot_pointcloud_scale(markdown, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 1000
