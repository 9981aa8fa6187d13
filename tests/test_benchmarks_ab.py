"""benchmarks/ab_families.py: the before/after table and the option-spelling shim."""

import pytest
from _helpers import load_repo_script


def _harness():
    return load_repo_script("benchmarks/ab_families.py", "_mmopt_bench_ab")


def test_spelling_picks_the_name_the_tree_takes():
    ab = _harness()

    def new(*, drop_budget=1e-3):
        pass

    def old(*, nu=1e-3):
        pass

    assert ab._spelling(new, 0.5, "drop_budget", "nu") == {"drop_budget": 0.5}
    assert ab._spelling(old, 0.5, "drop_budget", "nu") == {"nu": 0.5}
    with pytest.raises(TypeError, match="none of"):
        ab._spelling(old, 0.5, "budget")


def test_timed_returns_the_first_output_and_the_fastest_call():
    ab = _harness()
    calls = []
    seconds, out = ab._timed(lambda: calls.append(1) or len(calls), budget=0.01, most=5)
    assert out == 1 and 1 <= len(calls) <= 5 and seconds >= 0.0


def _runs(seconds, objective, status=0, nit=3, atol=0.0):
    case = {"case": "solve", "seconds": seconds, "nit": nit, "objective": objective,
            "rtol": 1e-6 if not atol else 0.0, "atol": atol, "status": status}
    return {"cases": [case]}


def test_table_medians_ratio_and_agreement():
    ab = _harness()
    results = {
        "same": {"before": [_runs(s, 1.0) for s in (2.0, 9.0, 2.2)],
                 "after": [_runs(s, 1.0 + 1e-9) for s in (1.0, 1.1, 5.0)]},
        "moved": {"before": [_runs(1.0, 1.0, atol=0.05)],
                  "after": [_runs(1.0, 1.1, status=5, atol=0.05)]},
        "new": {"before": [{"absent": "no such solver"}], "after": [_runs(0.5, 2.0)]},
        "broken": {"before": [{"error": "ImportError: x"}], "after": [_runs(0.5, 2.0)]},
    }
    rows = ab._table(results, list(results)).splitlines()[2:]
    same, moved, new, broken = (row.split(" | ") for row in rows)
    assert same[2:5] == ["2.2", "1.1", "0.50"]  # medians and their ratio
    assert same[-1].startswith("yes (rel 1e-06)")
    assert moved[-1].startswith("**no** (abs 0.05)") and "status differs" in moved[-1]
    assert "absent before: no such solver" in new[4]
    assert "error: ImportError: x" in broken[1]
    assert all(row.count("|") == 11 for row in rows[:3])  # no stray pipe splits a cell
