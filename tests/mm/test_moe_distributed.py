"""Distributed mixtures of experts: local fits through joblib or Dask, one reduction."""


import joblib
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from mmopt.datasets import make_moe_regression
from mmopt.mm import DistributedMixtureOfExperts, MixtureOfExperts
from mmopt.mm.distributed import _spread_over_workers

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def data():
    return make_moe_regression(4000, 2, 3, noise=0.3, random_state=2)


@pytest.fixture(scope="module")
def serial_fit(data):
    X, y, _ = data
    return DistributedMixtureOfExperts(3, n_shards=2, n_init=1, n_support=200,
                                       random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client


def test_close_to_the_global_fit(data, serial_fit):
    X, y, truth = data
    global_fit = MixtureOfExperts(3, n_init=1, random_state=0).fit(X, y)
    assert serial_fit.score(X, y) > global_fit.score(X, y) - 0.01
    truth_params = np.column_stack([truth.intercept, truth.coef])
    errors = []
    for fit in (serial_fit, global_fit):
        params = np.column_stack([fit.intercept_, fit.coef_])
        cost = ((params[:, None] - truth_params[None]) ** 2).sum(axis=2)
        errors.append(cost[linear_sum_assignment(cost)].sum() ** 0.5)
    assert errors[0] <= 1.5 * errors[1] + 0.05
    assert serial_fit.reduction_.status == 0
    assert list(serial_fit.shard_sizes_) == [2000, 2000]


def _matched_error(fit, truth):
    """Distance to the truth's (intercept, coef, sigma) after matching the experts."""
    fitted = np.column_stack([fit.intercept_, fit.coef_, np.sqrt(fit.variances_)])
    true = np.column_stack([truth.intercept, truth.coef, truth.sigma])
    cost = ((fitted[:, None] - true[None]) ** 2).sum(axis=2)
    return float(np.sqrt(cost[linear_sum_assignment(cost)].sum()))


@pytest.mark.parametrize("K, d, noise, gate_scale, n_shards", [
    (2, 1, 0.3, 4.0, 2), (4, 3, 0.3, 4.0, 3), (3, 2, 0.6, 1.5, 2)])
def test_as_accurate_as_the_global_fit_on_other_data(K, d, noise, gate_scale, n_shards):
    # The accuracy targets (parameter error within 1.5x of the global fit's, ARI
    # within 0.05) away from the benchmark's data: other K, dimensions, noise, gates, shards.
    X, y, truth = make_moe_regression(6000, d, K, noise=noise, gate_scale=gate_scale,
                                      random_state=3)
    global_fit = MixtureOfExperts(K, n_init=2, random_state=0).fit(X, y)
    dist_fit = DistributedMixtureOfExperts(K, n_shards=n_shards, n_init=2, n_support=300,
                                           random_state=0).fit(X, y)
    assert _matched_error(dist_fit, truth) <= 1.5 * _matched_error(global_fit, truth)
    ari = [adjusted_rand_score(truth.labels, fit.predict_expert(X, y))
           for fit in (global_fit, dist_fit)]
    assert ari[1] >= ari[0] - 0.05


def test_one_shard_is_the_local_fit(data):
    X, y, _ = data
    fit = DistributedMixtureOfExperts(3, n_shards=1, n_init=1, n_support=300,
                                      random_state=0).fit(X, y)
    local = fit.local_models_[0]
    assert fit.reduction_.fun == 0.0
    order, ref = np.argsort(fit.intercept_), np.argsort(local.intercept_)
    assert np.allclose(fit.coef_[order], local.coef_[ref], atol=1e-12)
    assert np.allclose(fit.predict_proba(X)[:, order], local.predict_proba(X)[:, ref],
                       atol=1e-4)


def test_joblib_dask_backend_runs_the_shards_on_the_cluster(data, serial_fit, client):
    X, y, _ = data
    with distributed.get_task_stream(client) as stream:
        with joblib.parallel_config(backend="dask"):
            fit = DistributedMixtureOfExperts(3, n_shards=2, n_init=1, n_support=200,
                                              random_state=0).fit(X, y)
    workers = {task["worker"] for task in stream.data}
    assert len(stream.data) >= 2 and workers <= set(client.scheduler_info()["workers"])
    assert np.array_equal(fit.coef_, serial_fit.coef_)
    assert np.array_equal(fit.gate_coef_, serial_fit.gate_coef_)


def test_dask_array_chunks_are_the_shards_and_never_gathered(data, serial_fit, client,
                                                              monkeypatch):
    X, y, _ = data
    dX, dy = da.from_array(X, chunks=(2000, 2)), da.from_array(y, chunks=2000)

    def refuse(*args, **kwargs):
        raise AssertionError("the dask array was gathered on the driver")

    monkeypatch.setattr(da.Array, "__array__", refuse)
    monkeypatch.setattr(da.Array, "compute", refuse)
    with distributed.get_task_stream(client) as stream:
        fit = DistributedMixtureOfExperts(3, n_shards=5, n_init=1, n_support=200,
                                          random_state=0).fit(dX, dy)
    assert any("_fit_shard" in task["key"][0] if isinstance(task["key"], tuple)
               else "_fit_shard" in task["key"] for task in stream.data)
    assert len(fit.local_models_) == 2 and fit.n_features_in_ == 2
    # Same shards, same seeds: the same model as the array input.
    assert np.allclose(fit.coef_, serial_fit.coef_, rtol=1e-12)


def test_spread_over_workers_fills_every_thread_before_doubling_up():
    threads = {"a": 1, "b": 1, "c": 2}
    # Every shard held by "a": one task per thread, holders first among equals.
    assert _spread_over_workers([{"a"}] * 4, threads) == ["a", "b", "c", "c"]
    assert _spread_over_workers([{"b"}, {"b"}, {"c"}], threads) == ["b", "a", "c"]
    # More tasks than threads: the next round starts again from the least loaded.
    placed = _spread_over_workers([()] * 8, threads)
    assert [placed.count(w) for w in "abc"] == [2, 2, 4]


def test_shards_held_by_one_worker_are_fitted_on_two(data, serial_fit, client):
    X, y, _ = data
    first = sorted(client.scheduler_info()["workers"])[0]
    dX, dy = client.persist([da.from_array(X, chunks=(2000, 2)), da.from_array(y, chunks=2000)],
                            workers=[first])
    distributed.wait([dX, dy])
    assert {w for held in client.who_has(dX).values() for w in held} == {first}
    with distributed.get_task_stream(client) as stream:
        fit = DistributedMixtureOfExperts(3, n_shards=2, n_init=1, n_support=200,
                                          random_state=0).fit(dX, dy)
    fits = [task for task in stream.data if "_fit_shard" in str(task["key"])]
    assert len(fits) == 2 and len({task["worker"] for task in fits}) == 2
    # At the same time, not one after the other.
    (start_a, stop_a), (start_b, stop_b) = sorted(
        (task["startstops"][-1]["start"], task["startstops"][-1]["stop"]) for task in fits)
    assert start_b < stop_a
    assert np.allclose(fit.coef_, serial_fit.coef_, rtol=1e-12)
    # The persisted data are still there.
    assert float(dy.sum().compute()) == pytest.approx(float(y.sum()))


def test_bad_inputs(fuzz, data):
    X, y, _ = data
    dX = da.from_array(X, chunks=(2000, 2))
    fuzz.raises_naming(DistributedMixtureOfExperts(2).fit, "y", dX, y)
    fuzz.raises_naming(DistributedMixtureOfExperts(2).fit, "y", dX,
                       da.from_array(y, chunks=1000))
    fuzz.raises_naming(DistributedMixtureOfExperts(2, n_shards=5).fit, "n_shards", X[:3], y[:3])
    for option, value in [("n_shards", 0), ("n_support", 0), ("n_jobs", 1.5)]:
        fuzz.raises_naming(DistributedMixtureOfExperts(**{option: value}).fit, option, X, y)
    fuzz.raises_naming(DistributedMixtureOfExperts(2).fit, "X", fuzz.BAD_ARRAYS["nan"], y[:2])
