"""benchmarks/bench_nonrigid.py: the cases and the pycpd switch of the opt-in ``cpd10kend``."""

import pytest
from _helpers import load_repo_script


def _bench():
    return load_repo_script("benchmarks/bench_nonrigid.py", "_mmopt_bench_nonrigid")


def test_end_cases_take_each_kind_and_seed_clean_then_robust():
    bench = _bench()
    assert bench._end_cases("twist:0, bumps:0,bend:1") == [
        ("twist", 0.0, 1.0, 0), ("bumps", 0.0, 1.0, 0), ("bend", 0.0, 1.0, 1),
        ("twist", 0.2, 0.7, 0), ("bumps", 0.2, 0.7, 0), ("bend", 0.2, 0.7, 1)]
    for bad in ("fold:0", "bend", "bend:x", "bend:0,"):
        with pytest.raises(ValueError, match=bench.CPD10K_CASES):
            bench._end_cases(bad)


def test_a_pycpd_budget_of_zero_leaves_pycpd_out(monkeypatch):
    bench = _bench()

    def never(*args):
        raise AssertionError("pycpd ran with a budget of 0")

    def absent(*args):
        raise ImportError("probreg")

    monkeypatch.setattr(bench, "_pycpd_for", never)
    # probreg stands in as not installed: the table then runs SPARE alone (small, fast).
    monkeypatch.setattr(bench, "_probreg_to_the_end", absent)
    lines = bench._cpd_to_the_end_table(300, 0.0, [("bend", 0.0, 1.0, 0)])
    assert "pycpd not run" in lines[0]
    assert lines[2].count("|") == lines[3].count("|") == lines[4].count("|") == 5
    assert lines[4].startswith("| bend, seed 0 |") and "not installed" in lines[4]
