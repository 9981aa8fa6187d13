import numpy as np
import pytest

import mmopt
from mmopt.mm import MMProblem


def _problems(centres):
    return [
        MMProblem(
            objective=lambda x, c=c: float(np.sum((x - c) ** 2)),
            surrogate_minimizer=lambda x, c=c: 0.5 * (x + c),
            x0=np.zeros(3),
        )
        for c in centres
    ]


@pytest.mark.parametrize("n_jobs", [None, 1, 2])
def test_solve_many_matches_solve_in_order(n_jobs):
    centres = [1.0, -2.0, 5.0, 0.5]
    results = mmopt.solve_many(_problems(centres), tol=1e-12, n_jobs=n_jobs)
    assert [r.solver for r in results] == ["mm"] * 4
    for c, res in zip(centres, results):
        np.testing.assert_allclose(res.x, c, atol=1e-9)


def test_solve_many_starts_and_errors():
    problems = _problems([1.0, 2.0])
    results = mmopt.solve_many(problems, x0s=[np.ones(3), 2 * np.ones(3)], tol=1e-12)
    assert results[0].nit == 1 and results[1].nit == 1
    with pytest.raises(ValueError, match="x0s must hold one start per problem"):
        mmopt.solve_many(problems, x0s=[np.ones(3)])
    with pytest.raises(TypeError, match="bogus"):
        mmopt.solve_many(problems, bogus=1)
    with pytest.raises(TypeError, match=r"problems\[1\]"):
        mmopt.solve_many([problems[0], "x"])


@pytest.mark.slow
def test_solve_many_on_a_dask_cluster():
    distributed = pytest.importorskip("dask.distributed")
    import joblib

    centres = [float(c) for c in range(6)]
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        with distributed.get_task_stream(client) as stream:
            with joblib.parallel_config(backend="dask"):
                results = mmopt.solve_many(_problems(centres), tol=1e-12)
        workers = {task["worker"] for task in stream.data}
    assert len(stream.data) >= 1, "no task ran on the cluster"
    assert workers, "tasks carry no worker address"
    for c, res in zip(centres, results):
        np.testing.assert_allclose(res.x, c, atol=1e-9)
