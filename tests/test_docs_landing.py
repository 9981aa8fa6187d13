"""The landing page of the docs (docs/index.rst) keeps step with the solver registry.

Every family and every registered solver (``mmopt.SOLVERS``) must appear on it, with the
family's user-guide page, and its examples must run as shown.
"""

import doctest
import re
import types
import warnings
from pathlib import Path

import pytest

import mmopt

DOCS = Path(__file__).resolve().parents[1] / "docs"
INDEX = DOCS / "index.rst"

pytestmark = pytest.mark.skipif(
    not INDEX.exists(), reason="no docs/ next to the tests (installed package)"
)


def _families() -> list[str]:
    # The public subpackages of mmopt that hold solvers, and those that define registered
    # solvers (a new family cannot register a solver and stay off the page).
    public = {
        name
        for name in mmopt.__all__
        if isinstance(getattr(mmopt, name), types.ModuleType) and name != "datasets"
    }
    registered = {cls.__module__.split(".")[1] for cls in mmopt.SOLVERS.values()}
    return sorted(public | registered)


def _text() -> str:
    return INDEX.read_text(encoding="utf-8")


def test_nothing_is_announced_as_planned():
    text = _text().lower()
    for word in ("planned", "coming soon", "not yet available"):
        assert word not in text, f"docs/index.rst still says {word!r}"


@pytest.mark.parametrize("family", _families())
def test_every_family_is_on_the_landing_page_with_its_guide(family):
    text = _text()
    assert f":mod:`mmopt.{family}`" in text, f"family mmopt.{family} missing from index.rst"
    guide = DOCS / "user_guide" / f"{family}.rst"
    assert guide.exists(), f"no user-guide page docs/user_guide/{family}.rst"
    assert f":doc:`user_guide/{family}`" in text, f"index.rst does not link {guide.name}"
    toctree = (DOCS / "user_guide" / "index.rst").read_text(encoding="utf-8")
    assert re.search(rf"^\s+{family}\s*$", toctree, re.M), f"{family} not in the guide's toctree"


@pytest.mark.parametrize("name", sorted(mmopt.SOLVERS))
def test_every_registered_solver_is_on_the_landing_page(name):
    text = _text()
    cls = mmopt.SOLVERS[name]
    family = cls.__module__.split(".")[1]
    assert f'``"{name}"``' in text, f'solver name "{name}" missing from index.rst'
    # Named by its public path, so the link resolves to the API page.
    assert getattr(getattr(mmopt, family), cls.__name__, None) is cls
    assert f"mmopt.{family}.{cls.__name__}`" in text, f"{cls.__name__} missing from index.rst"


def test_pages_linked_from_the_landing_page_exist():
    text = _text()
    targets = re.findall(r":doc:`(?:[^`<]*<)?([^`>]+)>?`", text)
    toctree = re.search(r"\.\. toctree::\n((?:\s+:[^\n]*\n)*)\n((?:\s+\S[^\n]*\n)+)", text)
    assert toctree is not None, "index.rst has no toctree"
    targets += [line.strip() for line in toctree.group(2).splitlines()]
    assert {"which_solver", "benchmarks", "user_guide/writing_a_solver"} <= set(targets)
    for target in targets:
        if target.startswith("auto_examples/"):  # written by sphinx-gallery at build time
            continue
        assert (DOCS / f"{target}.rst").exists(), f"index.rst links {target}, which is missing"


def test_landing_page_examples_run_as_shown():
    with warnings.catch_warnings():
        # An example that stops short of convergence is not one to show first.
        warnings.simplefilter("error", mmopt.ConvergenceWarning)
        outcome = doctest.testfile(
            str(INDEX),
            module_relative=False,
            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
            report=True,
            verbose=False,
        )
    assert outcome.attempted > 20
    assert outcome.failed == 0, "an example of docs/index.rst failed (see the output above)"
