"""Point-cloud files: round trips, and clear errors for corrupt or unknown files."""

import builtins

import numpy as np
import pytest

from mmopt.registration.io import read_point_cloud, write_point_cloud

rng = np.random.default_rng(0)
POINTS = rng.normal(size=(25, 3))
NORMALS = rng.normal(size=(25, 3))


@pytest.mark.parametrize("suffix", [".xyz", ".npy", ".ply", ".txt"])
@pytest.mark.parametrize("with_normals", [False, True])
def test_round_trip(tmp_path, suffix, with_normals):
    if suffix == ".ply":
        pytest.importorskip("plyfile")
    path = tmp_path / f"cloud{suffix}"
    write_point_cloud(path, POINTS, NORMALS if with_normals else None)
    points, normals = read_point_cloud(path)
    np.testing.assert_allclose(points, POINTS, rtol=1e-9)
    if with_normals:
        np.testing.assert_allclose(normals, NORMALS, rtol=1e-9)
    else:
        assert normals is None


def test_binary_ply_and_shipped_file(tmp_path):
    pytest.importorskip("plyfile")
    write_point_cloud(tmp_path / "b.ply", POINTS, binary=True)
    np.testing.assert_array_equal(read_point_cloud(tmp_path / "b.ply")[0], POINTS)
    from importlib import resources

    from mmopt.datasets import load_scan_pair

    shipped = resources.files("mmopt.datasets").joinpath("data/scan_pair/source.ply")
    points, normals = read_point_cloud(str(shipped))
    data = load_scan_pair()
    np.testing.assert_allclose(points, data.source, rtol=1e-6)
    np.testing.assert_allclose(normals, data.source_normals, rtol=1e-6)


def test_corrupt_files(tmp_path):
    pytest.importorskip("plyfile")
    bad = tmp_path / "bad.ply"
    bad.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\n1\n")
    with pytest.raises(ValueError, match="bad.ply: not a readable PLY"):
        read_point_cloud(bad)
    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"\x00\x01 not a ply at all")
    with pytest.raises(ValueError, match="garbage.ply"):
        read_point_cloud(garbage)
    xyz = tmp_path / "bad.xyz"
    xyz.write_text("1 2 3\n4 5 x\n")
    with pytest.raises(ValueError, match="bad.xyz: not a table"):
        read_point_cloud(xyz)
    xyz.write_text("1 2\n3 4\n")
    with pytest.raises(ValueError, match="rows of 3"):
        read_point_cloud(xyz)
    xyz.write_text("1 2 3\nnan 0 0\n")
    with pytest.raises(ValueError, match="NaN"):
        read_point_cloud(xyz)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown point-cloud format '.obj'"):
        read_point_cloud(tmp_path / "a.obj")
    with pytest.raises(FileNotFoundError):
        read_point_cloud(tmp_path / "missing.xyz")


def test_missing_plyfile_gives_a_clear_error(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "plyfile":
            raise ImportError("no plyfile")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"mmopt\[io\]"):
        write_point_cloud(tmp_path / "a.ply", POINTS)
