"""Shared numpydoc text: one wording for a parameter that means the same in several places.

A docstring names an entry of a table by a placeholder on a line of its own,
``%(callback)s``; :func:`fill_doc` replaces it with the entry's lines, each indented like
the placeholder. Only placeholders that name an entry are touched, so a docstring may hold
other ``%`` signs ("95% efficiency") without escaping them, and an unknown name is an error
at import time rather than a placeholder left in the rendered documentation.

Share an entry only where the parameter means exactly the same thing; a parameter whose
meaning differs (``tol`` is a different stopping quantity in every solver) keeps its own
text.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Mapping
from typing import TypeVar

__all__ = ["BIBLIOGRAPHY", "DATA_PARAMS", "SOLVER_PARAMS", "fill_doc", "references", "substitute"]

T = TypeVar("T")

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)%\((?P<name>\w+)\)s[ \t]*$", re.MULTILINE)


def substitute(docstring: str, table: Mapping[str, str]) -> str:
    """Replace each line ``%(name)s`` of ``docstring`` by ``table[name]``, indented alike.

    Parameters
    ----------
    docstring : str
        The text with placeholders, each alone on its line.
    table : mapping of str to str
        Entry text, dedented (the first line at column 0).

    Returns
    -------
    str

    Examples
    --------
    >>> from mmopt._core._docstrings import substitute
    >>> print(substitute("Parameters\\n    %(k)s\\n", {"k": "k : int\\n    Size."}))
    Parameters
        k : int
            Size.
    <BLANKLINE>
    """

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in table:
            raise KeyError(f"no shared docstring entry {name!r}; known: {sorted(table)}")
        return textwrap.indent(textwrap.dedent(table[name]).strip("\n"), match["indent"])

    return _PLACEHOLDER.sub(replace, docstring)


def fill_doc(*tables: Mapping[str, str]) -> Callable[[T], T]:
    """Class or function decorator: :func:`substitute` the entries of ``tables`` in
    ``__doc__`` (a later table's entry replaces an earlier one's)."""
    merged: dict[str, str] = {}
    for table in tables:
        merged.update(table)

    def decorate(obj: T) -> T:
        if obj.__doc__:
            obj.__doc__ = substitute(obj.__doc__, merged)
        return obj

    return decorate


# The options every :class:`mmopt.Solver` has and that mean the same in all of them.
SOLVER_PARAMS = {
    "callback": """\
callback : callable, optional
    ``callback(intermediate_result)`` after each iteration, with a :class:`mmopt.Result`
    snapshot; raising ``StopIteration`` stops the solve (status 2).""",
    "verbose": """\
verbose : int, default=0
    0 silent, 1 a progress bar, 2 a line per iteration.""",
}

# The data arguments of estimators' ``fit`` and of the problems built from a data set.
DATA_PARAMS = {
    "X": """\
X : array-like of shape (n_samples, n_features)
    Training data.""",
    "y_targets": """\
y : array-like of shape (n_samples,)
    Targets.""",
    "y_labels": """\
y : array-like of shape (n_samples,)
    Class labels.""",
}
# The Parameters section of a supervised ``fit(X, y)``, whole.
for _kind in ("targets", "labels"):
    DATA_PARAMS[f"fit_{_kind}"] = "\n".join(
        ["Parameters", "----------", DATA_PARAMS["X"], DATA_PARAMS[f"y_{_kind}"]])


# The papers the docstrings built with :func:`references` cite, each written once.
BIBLIOGRAPHY = {
    "blondel2018": """\
M. Blondel, V. Seguy and A. Rolet, "Smooth and sparse optimal transport",
International Conference on Artificial Intelligence and Statistics (AISTATS), 2018.""",
    "bohning1992": """\
D. Böhning, "Multinomial logistic regression algorithm", *Ann. Inst. Statist.
Math.* 44(1), 197-200, 1992.""",
    "byrd1995": """\
R. H. Byrd, P. Lu, J. Nocedal and C. Zhu, "A limited memory algorithm for bound
constrained optimization", SIAM Journal on Scientific Computing 16(5):1190-1208,
1995 (L-BFGS-B).""",
    "chizat2018": """\
L. Chizat, G. Peyré, B. Schmitzer, F.-X. Vialard, "Scaling algorithms for
unbalanced optimal transport problems", Mathematics of Computation 87 (2018).""",
    "lavington2023": """\
J. W. Lavington, S. Vaswani, R. Babanezhad, M. Schmidt and N. Le Roux,
"Target-based surrogates for stochastic optimization", *ICML*, 2023.""",
    "liu2023": """\
T. Liu, J. Puigcerver and M. Blondel, "Sparsity-constrained optimal transport",
International Conference on Learning Representations (ICLR), 2023.""",
    "pedregosa2016": """\
F. Pedregosa, "Hyperparameter optimization with approximate gradient", ICML 2016
(HOAG: the a-priori accuracy schedules).""",
    "salehi2023": """\
M. S. Salehi, S. Mukherjee, L. Roberts, M. J. Ehrhardt, "An adaptively inexact
first-order method for bilevel optimization with application to hyperparameter
learning", arXiv:2308.10098, 2023.""",
    "sejourne2022": """\
T. Séjourné, F.-X. Vialard, G. Peyré, "Faster unbalanced optimal transport:
translation invariant Sinkhorn and 1-D Frank-Wolfe", AISTATS 2022.""",
    "zhang2024p2ot": """\
C. Zhang, H. Ren, X. He, "P²OT: Progressive Partial Optimal Transport for Deep
Imbalanced Clustering", ICLR 2024.""",
    "zhang2024sp2ot": """\
C. Zhang, H. Ren, X. He, "SP²OT: Semantic-Regularized Progressive Partial
Optimal Transport for Imbalanced Clustering", arXiv:2404.03446 (2024).""",
}


def references(*works: str) -> dict[str, str]:
    """The table ``{"references": ...}`` whose entry is a numpydoc References section
    citing ``works`` (keys of :data:`BIBLIOGRAPHY`) in order, numbered from 1.

    Examples
    --------
    >>> from mmopt._core._docstrings import references
    >>> print(references("chizat2018")["references"])
    References
    ----------
    .. [1] L. Chizat, G. Peyré, B. Schmitzer, F.-X. Vialard, "Scaling algorithms for
       unbalanced optimal transport problems", Mathematics of Computation 87 (2018).
    """
    lines = ["References", "----------"]
    for number, work in enumerate(works, start=1):
        if work not in BIBLIOGRAPHY:
            raise KeyError(f"no work {work!r} in the bibliography; known: {sorted(BIBLIOGRAPHY)}")
        lines.append(f".. [{number}] " + textwrap.indent(BIBLIOGRAPHY[work], "   ").lstrip())
    return {"references": "\n".join(lines)}
