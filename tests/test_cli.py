import shutil
import subprocess
import sys

import pytest

from mmopt.cli import _format_table, main


def test_help_lists_demo(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage" in capsys.readouterr().out


def test_console_script_is_installed():
    exe = shutil.which("mmopt")
    if exe is None:
        pytest.skip("console script not on PATH (not an installed environment)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("mmopt ")


def test_format_table_aligns_columns():
    text = _format_table([{"a": 1.23456789, "bb": "x"}, {"a": 2, "bb": "long value"}])
    lines = text.splitlines()
    assert lines[0].startswith("a") and "bb" in lines[0]
    assert "1.235" in lines[2]
    assert len({line.index("bb") if "bb" in line else None for line in lines[:1]}) == 1


@pytest.mark.slow
def test_demo_quick_writes_plots_and_table(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["demo", "--quick", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "MM + Anderson" in out and "NMF" in out and "robust regression" in out
    assert str(tmp_path) in out
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == [
        "mm_nmf_digits.png", "mm_robust_huber.png", "mm_robust_welsch.png",
        "ot_convergence.png", "ot_plans.png",
    ]
    assert "Sinkhorn-Newton-Sparse" in out and "nonzeros per column" in out
    assert all((tmp_path / p).stat().st_size > 1000 for p in pngs)


def test_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "mmopt.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "mmopt" in out.stdout
