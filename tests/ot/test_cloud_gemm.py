"""The blocked (matrix-product) online kernel for clouds of dimension > 3, against a dense
NumPy log-sum-exp and, through PointCloudSinkhorn, against the dense Sinkhorn solver."""

import numpy as np
import pytest
from scipy.special import logsumexp

from mmopt.ot import PointCloudOTProblem, PointCloudSinkhorn, sinkhorn
from mmopt.ot._cloud_gemm import online_softmin_gemm


def _dense(x, y, kind, p):
    dist = np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(axis=-1))
    return {0: dist**2, 1: dist, 2: dist**p}[kind]


@pytest.mark.parametrize("d", [4, 11, 40])
@pytest.mark.parametrize("kind, p", [(0, 2.0), (1, 1.0), (2, 1.5)])
def test_online_softmin_gemm_matches_numpy(d, kind, p):
    rng = np.random.default_rng(d + kind)
    # Offsets far from the origin (the kernel centres the clouds) and more rows and columns
    # than one tile (32 x 256).
    x = rng.random((70, d)) + 40.0
    y = rng.random((600, d)) + 40.2
    g, f_old = rng.normal(size=600), rng.normal(size=70)
    log_a = np.log(rng.uniform(0.1, 1.0, 70))
    reg = 0.05
    C = _dense(x, y, kind, p)
    lse = logsumexp((g[None, :] - C) / reg, axis=1)
    f, mass = online_softmin_gemm(x, y, g, f_old, log_a, reg, kind, p, 2)
    np.testing.assert_allclose(f, reg * (log_a - lse), rtol=0, atol=1e-10)
    np.testing.assert_allclose(mass, np.exp((f_old[:, None] + g[None, :] - C) / reg).sum(1),
                               rtol=1e-10)
    # A column of -inf potential (a point of zero mass on the other side) is skipped; an
    # all -inf row has no finite potential.
    g_inf = g.copy()
    g_inf[:5] = -np.inf
    f_inf, _ = online_softmin_gemm(x, y, g_inf, f_old, log_a, reg, kind, p, 1)
    lse_inf = logsumexp((g_inf[None, :] - C) / reg, axis=1)
    np.testing.assert_allclose(f_inf, reg * (log_a - lse_inf), rtol=0, atol=1e-10)
    f_none, mass_none = online_softmin_gemm(x, y, np.full(600, -np.inf), f_old, log_a, reg,
                                            kind, p, 1)
    assert np.isinf(f_none).all() and (mass_none == 0).all()


def test_pointcloud_sinkhorn_high_dimension_matches_dense():
    rng = np.random.default_rng(3)
    x, y = rng.random((150, 6)), rng.random((120, 6)) + 0.1
    a = rng.uniform(0.5, 1.5, 150)
    a /= a.sum()
    b = np.full(120, 1 / 120)
    reg = 0.05
    res = PointCloudSinkhorn(tol=1e-10).solve(PointCloudOTProblem(x, y, a, b, reg=reg))
    assert res.success and res.regime == "smooth"
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    ref = sinkhorn(a, b, C, reg, tol=1e-12, max_iter=100000)
    shift = np.mean(res.f - ref.f)
    assert np.abs(res.f - ref.f - shift).max() <= 1e-6 * reg
    assert np.abs(res.g - ref.g + shift).max() <= 1e-6 * reg
