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


def test_register_nonrigid_writes_the_deformed_mesh(tmp_path, capsys):
    import numpy as np

    pytest.importorskip("plyfile")
    from mmopt.registration.io import read_faces, read_point_cloud, write_point_cloud

    # A 12 x 12 grid sheet (two triangles per cell) and a gently bent copy of it.
    u, w = np.meshgrid(np.linspace(0, 1, 12), np.linspace(0, 1, 12))
    source = np.c_[u.ravel(), w.ravel(), np.zeros(144)]
    cells = np.arange(144).reshape(12, 12)[:-1, :-1].ravel()
    faces = np.r_[np.c_[cells, cells + 1, cells + 13], np.c_[cells, cells + 13, cells + 12]]
    target = source + np.c_[np.zeros((144, 2)), 0.03 * np.sin(np.pi * source[:, 0])]
    write_point_cloud(tmp_path / "s.ply", source, faces=faces)
    write_point_cloud(tmp_path / "t.xyz", target)
    out_file = tmp_path / "deformed.ply"
    code = main(["register", "--nonrigid", str(tmp_path / "s.ply"), str(tmp_path / "t.xyz"),
                 "--faces", str(tmp_path / "s.ply"), "-o", str(out_file)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "iterations (coarse + fine)" in out and "deformed source written" in out
    points, normals = read_point_cloud(out_file)
    np.testing.assert_array_equal(read_faces(out_file), faces)
    assert normals is not None
    before = np.sqrt(np.mean(np.sum((source - target) ** 2, axis=1)))
    # Point-wise error: the sheet may slide a little in its plane, which the plane
    # residuals do not see.
    assert np.sqrt(np.mean(np.sum((points - target) ** 2, axis=1))) < 0.5 * before
    assert np.abs(points[:, 2] - target[:, 2]).mean() < 0.3 * np.abs(target[:, 2]).mean()


def test_register_nonrigid_reports_bad_faces(tmp_path, capsys):
    import numpy as np

    from mmopt.registration.io import write_point_cloud

    rng = np.random.default_rng(0)
    write_point_cloud(tmp_path / "s.npy", rng.random((30, 3)))
    np.save(tmp_path / "f.npy", np.array([[0, 1, 99]]))
    code = main(["register", "--nonrigid", str(tmp_path / "s.npy"), str(tmp_path / "s.npy"),
                 "--faces", str(tmp_path / "f.npy")])
    assert code == 2
    assert "faces" in capsys.readouterr().err
    assert main(["register", str(tmp_path / "s.npy"), str(tmp_path / "s.npy"), "--faces",
                 str(tmp_path / "f.npy")]) == 2


@pytest.mark.parametrize("flag, option, good, bad",
                         [("--point-weight", "point_weight", 100.0, -1.0),
                          ("--arap-floor", "arap_floor", 0.25, 2.0)])
def test_register_nonrigid_passes_the_solver_options(tmp_path, capsys, flag, option, good,
                                                     bad):
    import numpy as np

    from mmopt.registration import SPARE, NonRigidRegistrationProblem
    from mmopt.registration.io import read_point_cloud

    # A sheet stretched by 4% in its plane: the output equals SPARE(option=good)'s, and a
    # bad value is refused naming the option.
    u, w = np.meshgrid(np.linspace(0, 1, 12), np.linspace(0, 1, 12))
    source = np.c_[u.ravel(), w.ravel(), np.zeros(144)]
    target = source * [1.04, 1.0, 1.0] - [0.02, 0.0, 0.0]
    np.save(tmp_path / "s.npy", source)
    np.save(tmp_path / "t.npy", target)
    out_file = tmp_path / "deformed.npy"  # (PLY output needs the optional plyfile)
    code = main(["register", "--nonrigid", str(tmp_path / "s.npy"), str(tmp_path / "t.npy"),
                 flag, str(good), "-o", str(out_file)])
    assert code == 0, capsys.readouterr().out
    points, _ = read_point_cloud(out_file)
    direct = SPARE(**{option: good}).solve(NonRigidRegistrationProblem(source, target))
    np.testing.assert_allclose(points, direct.points, atol=1e-6)
    code = main(["register", "--nonrigid", str(tmp_path / "s.npy"), str(tmp_path / "t.npy"),
                 flag, str(bad), "-o", str(out_file)])
    assert code != 0 and option in capsys.readouterr().err
