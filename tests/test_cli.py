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
        "registration_energy.png", "registration_scan_pair.png",
    ]
    assert "Sinkhorn-Newton-Sparse" in out and "nonzeros per column" in out
    assert all((tmp_path / p).stat().st_size > 1000 for p in pngs)


def test_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "mmopt.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "mmopt" in out.stdout


def test_register_prints_transform_and_writes_output(tmp_path, capsys):
    import numpy as np

    from mmopt.registration.io import write_point_cloud
    from mmopt.registration.se3 import se3_exp

    rng = np.random.default_rng(0)
    source = rng.normal(size=(300, 3)) * [3.0, 2.0, 1.0]
    T = se3_exp([0.1, 0.0, 0.2, 0.3, -0.1, 0.0])
    write_point_cloud(tmp_path / "s.xyz", source)
    write_point_cloud(tmp_path / "t.npy", source @ T[:3, :3].T + T[:3, 3])
    out_file = tmp_path / "aligned.xyz"
    code = main(["register", str(tmp_path / "s.xyz"), str(tmp_path / "t.npy"),
                 "--loss", "l2", "-o", str(out_file)])
    out = capsys.readouterr().out
    assert code == 0
    printed = np.array([[float(v) for v in line.strip(" []").split()]
                        for line in out.splitlines()[:4]])
    np.testing.assert_allclose(printed, T, atol=1e-6)
    assert "inlier ratio" in out and "iterations per stage" in out
    aligned = np.loadtxt(out_file)
    np.testing.assert_allclose(aligned, source @ T[:3, :3].T + T[:3, 3], atol=1e-5)


def test_register_reports_bad_input(tmp_path, capsys):
    (tmp_path / "bad.xyz").write_text("1 2 3\n")
    code = main(["register", str(tmp_path / "bad.xyz"), str(tmp_path / "bad.xyz")])
    assert code == 2
    assert "at least 3 points" in capsys.readouterr().err
