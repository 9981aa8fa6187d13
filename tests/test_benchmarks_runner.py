"""benchmarks/run.py keeps BENCHMARKS.md in marked sections, each naming where it was measured,
so ``--only <family>`` replaces one family's figures and leaves the others as they were."""

import re
from pathlib import Path

import pytest
from _helpers import load_repo_script

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"


def _runner():
    return load_repo_script("benchmarks/run.py", "_mmopt_bench_runner")


def test_splice_replaces_only_the_named_section_and_appends_a_new_one():
    runner = _runner()
    text = "# t\n\n" + runner._wrap("a", "## A\nold a") + "\n\n" + runner._wrap("b", "## B\nb")
    text = runner._splice(text, "a", runner._wrap("a", "## A\nnew a"))
    assert "new a" in text and "old a" not in text and "## B\nb" in text
    assert text.index("new a") < text.index("## B")
    text = runner._splice(text, "c", runner._wrap("c", "## C\nc"))
    assert text.rstrip().endswith("<!-- end: c -->")
    assert text.count("<!-- section: a -->") == 1


@pytest.mark.skipif(not BENCHMARKS.exists(), reason="no BENCHMARKS.md next to the tests")
def test_every_section_is_marked_and_says_where_it_was_measured():
    text = BENCHMARKS.read_text(encoding="utf-8")
    body = text[text.index("<!-- section:"):]
    starts = re.findall(r"<!-- section: (\w+) -->\n(.*)\n", text)
    ends = re.findall(r"<!-- end: (\w+) -->", text)
    assert [name for name, _ in starts] == ends and len(ends) == len(set(ends)) >= 5
    for name, measured in starts:
        assert measured.startswith("_Measured "), f"section {name!r} does not say where it ran"
    # nothing outside the marked sections but the header
    outside = re.sub(r"<!-- section: (\w+) -->.*?<!-- end: \1 -->", "", body, flags=re.S)
    assert not outside.strip(), f"unmarked text in BENCHMARKS.md: {outside.strip()[:80]!r}"
