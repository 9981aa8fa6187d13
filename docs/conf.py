"""Sphinx configuration of the mmopt documentation (builds offline with -W)."""

import os
import sys
from pathlib import Path

# One BLAS/OpenMP thread for the build, unless the caller says otherwise. The gallery examples
# are small, and on shared CI machines (two cores, other jobs running) the thread pools spin
# against each other: one example measured 40 s with the default pools and 1 s with one
# thread. Set before numpy is first imported, which is when the pools read these variables.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import matplotlib

matplotlib.use("Agg")

import mmopt

sys.path.insert(0, str(Path(__file__).resolve().parent))

project = "mmopt"
author = "The mmopt developers"
copyright = "2026, The mmopt developers"
release = mmopt.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
if os.environ.get("MMOPT_DOCS_INTERSPHINX") == "1":
    # Off by default: CI has no network.
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "scipy": ("https://docs.scipy.org/doc/scipy", None),
        "sklearn": ("https://scikit-learn.org/stable", None),
    }

templates_path = ["_templates"]
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py"]
autosummary_generate = True
autodoc_default_options = {"inherited-members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set = set()
nitpicky = False

try:
    import pydata_sphinx_theme  # noqa: F401

    html_theme = "pydata_sphinx_theme"
    html_theme_options = {"navigation_with_keys": False}
except ImportError:  # pragma: no cover
    html_theme = "alabaster"
html_title = f"mmopt {release}"

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "abort_on_example_error": True,
}


# scikit-learn's metadata-routing helpers are inherited by every estimator; their docstrings
# refer to scikit-learn's own glossary, which is not part of these docs.
_SKIPPED_MEMBERS = {"get_metadata_routing", "set_output"}


def _skip_member(app, what, name, obj, skip, options):
    if name in _SKIPPED_MEMBERS or (name.startswith("set_") and name.endswith("_request")):
        return True
    return None


# The Benchmarks page shows BENCHMARKS.md (written by benchmarks/run.py at the repository
# root) converted to reST when the page is read, so the page never goes stale.
_BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
_BENCHMARKS_MARKER = ".. benchmarks-md-goes-here"


def _insert_benchmarks(app, docname, source):
    if docname != "benchmarks":
        return
    from _benchmarks import markdown_to_rst

    app.env.note_dependency(str(_BENCHMARKS_MD))
    if _BENCHMARKS_MARKER not in source[0]:
        raise ValueError(f"docs/benchmarks.rst lost its marker line {_BENCHMARKS_MARKER!r}")
    source[0] = source[0].replace(
        _BENCHMARKS_MARKER, markdown_to_rst(_BENCHMARKS_MD.read_text(encoding="utf-8"))
    )


# The registration and OT guides' time-vs-points figures, drawn from BENCHMARKS.md's
# icp_scale, pointcloud and smooth_ot tables when the build starts (never by running the
# benchmarks).
_FIGURES = Path(__file__).resolve().parent / "_figures"


def _scale_figures(app):
    from _benchmarks import plot_pointcloud_scale, plot_scan_scale

    _FIGURES.mkdir(exist_ok=True)
    markdown = _BENCHMARKS_MD.read_text(encoding="utf-8")
    plot_scan_scale(markdown, _FIGURES / "icp_scale.png")
    plot_pointcloud_scale(markdown, _FIGURES / "pointcloud_scale.png")


def setup(app):
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("source-read", _insert_benchmarks)
    app.connect("builder-inited", _scale_figures)
