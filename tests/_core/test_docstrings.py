"""mmopt._core._docstrings: shared numpydoc entries substituted into docstrings."""

import importlib
import inspect
import pkgutil
import re

import pytest

import mmopt
import mmopt.bilevel
import mmopt.ot
from mmopt._core._docstrings import DATA_PARAMS, SOLVER_PARAMS, fill_doc, references, substitute


def test_placeholder_lines_take_the_entry_indented_like_them():
    doc = "Parameters\n    ----------\n    %(k)s\n    other : int\n"
    out = substitute(doc, {"k": "k : float\n    The scale."})
    assert out == ("Parameters\n    ----------\n    k : float\n        The scale.\n"
                   "    other : int\n")


def test_other_percent_signs_and_inline_placeholders_are_left_alone():
    doc = "95% efficiency; see %(k)s inline.\n    %(k)s\n"
    assert substitute(doc, {"k": "k : int"}) == "95% efficiency; see %(k)s inline.\n    k : int\n"


def test_an_unknown_entry_fails_loudly():
    with pytest.raises(KeyError, match="no shared docstring entry 'nope'"):
        substitute("    %(nope)s\n", SOLVER_PARAMS)


def test_fill_doc_merges_tables_and_keeps_objects_without_docstring():
    @fill_doc(SOLVER_PARAMS, {"verbose": "verbose : bool\n    Talk."})
    def f():
        """Doc.

        %(callback)s
        %(verbose)s
        """

    assert "``callback(intermediate_result)``" in f.__doc__
    assert "verbose : bool\n            Talk." in f.__doc__

    def g():
        pass

    assert fill_doc(DATA_PARAMS)(g) is g and g.__doc__ is None


def _public_docstrings():
    for name, cls in sorted(mmopt.SOLVERS.items()):
        yield name, inspect.getdoc(cls)
    for module in (mmopt.ot, mmopt.bilevel):
        for name in module.__all__:
            obj = getattr(module, name)
            yield name, inspect.getdoc(obj)
            for attr in ("fit",):
                method = getattr(obj, attr, None)
                if method is not None:
                    yield f"{name}.{attr}", inspect.getdoc(method)


@pytest.mark.parametrize("name, doc", list(_public_docstrings()), ids=lambda v: str(v)[:40])
def test_no_placeholder_is_left_in_a_public_docstring(name, doc):
    assert doc is None or "%(" not in doc, name


@pytest.mark.parametrize("name", sorted(mmopt.SOLVERS))
def test_every_registered_solver_documents_its_source_and_an_example(name):
    # Every registered solver implements a published method: its docstring names the paper
    # (a numpydoc References section, not empty) and shows a run.
    doc = inspect.getdoc(mmopt.SOLVERS[name])
    assert re.search(r"\nReferences\n-{10}\n\S", doc), f"{name}: no References section"
    assert "\nExamples\n--------\n>>> " in doc, f"{name}: no Examples section"


def test_references_are_numbered_from_the_bibliography():
    section = references("zhang2024sp2ot", "chizat2018")["references"]
    lines = section.splitlines()
    assert lines[:2] == ["References", "----------"]
    assert lines[2].startswith(".. [1] C. Zhang") and "SP²OT" in lines[2]
    assert lines[4].startswith(".. [2] L. Chizat")
    # continuation lines are indented under the label, as numpydoc/RST citations need
    assert all(line.startswith("   ") for line in (lines[3], lines[5]))
    with pytest.raises(KeyError, match="no work 'nobody1900'"):
        references("nobody1900")


def _documented_objects():
    for info in pkgutil.walk_packages(mmopt.__path__, "mmopt."):
        if info.name.endswith("_demo"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == info.name:
                yield f"{info.name}.{name}", obj


def test_no_placeholder_is_left_in_any_docstring_of_the_package():
    left = [name for name, obj in _documented_objects()
            if re.search(r"^\s*%\(\w+\)s\s*$", obj.__doc__ or "", re.M)]
    assert not left
