"""Distributed learning of a mixture of experts: local EM fits on shards, one reduction.

The data are split into shards; each shard fits its own :class:`MixtureOfExperts` (in
parallel, through joblib or Dask) and sends back its parameters and a subsample of its inputs
(the support points). The driver reduces the union of the local mixtures, weighted by shard
size, to one mixture by :func:`aggregate_mixtures`. Only models and support points travel:
the driver's memory does not grow with the number of samples.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state

from mmopt._core.params import Interval, Param
from mmopt._core.threads import single_threaded
from mmopt._core.validation import validate_fit_data
from mmopt.mm.moe import MixtureOfExperts
from mmopt.mm.moe_reduction import aggregate_mixtures

__all__ = ["DistributedMixtureOfExperts"]


def _fit_shard(X, y, params: dict, seed: int, n_support: int):
    """Fit one shard; return the model, its support points and its size."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).ravel()
    with single_threaded():
        model = MixtureOfExperts(**params, random_state=seed).fit(X, y)
    rng = np.random.default_rng(seed)
    keep = rng.choice(X.shape[0], size=min(n_support, X.shape[0]), replace=False)
    return model, X[np.sort(keep)].copy(), X.shape[0]


def _is_dask_array(value) -> bool:
    return type(value).__module__.split(".")[0] == "dask" and hasattr(value, "to_delayed")


class DistributedMixtureOfExperts(MixtureOfExperts):
    """Mixture of experts fitted on shards in parallel and reduced to one model.

    Each of ``n_shards`` contiguous blocks of the rows fits a :class:`MixtureOfExperts` with
    ``n_experts`` experts (``n_init`` starts, EM to ``tol``); the local fits run through
    :class:`joblib.Parallel`, so inside ``joblib.parallel_config(backend="dask")`` they run on
    a Dask cluster. A :class:`dask.array.Array` input is sharded by its row chunks instead:
    one task per chunk, computed by the active Dask scheduler, so the data are never gathered
    on the driver; on a ``distributed.Client``, each fit goes to the least busy worker (tasks
    per thread), the one holding its chunk among equals. Each shard returns its model and
    ``n_support`` of its inputs; :func:`aggregate_mixtures` reduces the union, with model
    weights and support-point weights proportional to the shard sizes.

    Parameters
    ----------
    n_experts : int, default=3
        Number of experts, locally and in the reduced model.
    n_shards : int, default=2
        Number of shards of an array input (a Dask array's row chunks are its shards).
    n_support : int, default=500
        Support points sent by each shard.
    max_iter : int, default=300
        Maximum EM iterations per start of each local fit.
    tol : float, default=1e-6
        Tolerance of the local EM fits and of the reduction.
    n_init : int, default=3
        Starts of each local fit.
    n_jobs : int, optional
        joblib jobs for the local fits (None: as ``joblib.parallel_config`` says).
    random_state : int, RandomState instance or None, default=None
        Seed of the local fits, the support subsamples and the reduction's k-means.

    Attributes
    ----------
    coef_, intercept_, variances_, gate_coef_, gate_intercept_
        The reduced model, as in :class:`MixtureOfExperts`.
    local_models_ : list of MixtureOfExperts
        The shards' fits.
    shard_sizes_ : ndarray of shape (n_shards,)
        Rows per shard.
    reduction_ : mmopt.Result
        The reduction's result (``fun`` is the transportation divergence).
    result_ : mmopt.Result
        Same as ``reduction_``.
    n_iter_ : int
        Iterations of the reduction.

    Examples
    --------
    >>> from mmopt.datasets import make_moe_regression
    >>> from mmopt.mm import DistributedMixtureOfExperts
    >>> X, y, _ = make_moe_regression(4000, 1, 2, noise=0.2, random_state=0)
    >>> moe = DistributedMixtureOfExperts(2, n_shards=2, n_init=1, random_state=0).fit(X, y)
    >>> len(moe.local_models_), moe.coef_.shape
    (2, (2, 1))
    """

    # Added to MixtureOfExperts's options.
    _options = {
        "n_shards": Param(2, Interval(int, 1, None)),
        "n_support": Param(500, Interval(int, 1, None)),
        "n_jobs": Param(None, Interval(int, None, None), None),
    }

    def fit(self, X, y) -> DistributedMixtureOfExperts:
        """Fit the shards in parallel and reduce their models.

        Parameters
        ----------
        X : array-like or dask array of shape (n_samples, n_features)
        y : array-like or dask array of shape (n_samples,)
            A dask ``X`` needs a dask ``y`` with the same row chunks.

        Returns
        -------
        self : DistributedMixtureOfExperts
        """
        self._check_params()
        rng = check_random_state(self.random_state)
        local = {"n_experts": self.n_experts, "max_iter": self.max_iter, "tol": self.tol,
                 "n_init": self.n_init}
        if _is_dask_array(X):
            shards = self._fit_dask(X, y, local, rng)
        else:
            X, y = validate_fit_data(self, X, y)
            if X.shape[0] < self.n_shards:
                raise ValueError(
                    f"n_shards={self.n_shards} exceeds the number of samples: "
                    f"n_samples = {X.shape[0]}."
                )
            from joblib import Parallel, delayed

            bounds = np.linspace(0, X.shape[0], self.n_shards + 1).astype(int)
            seeds = rng.randint(2**31 - 1, size=self.n_shards)
            shards = Parallel(n_jobs=self.n_jobs)(
                delayed(_fit_shard)(X[a:b], y[a:b], local, int(seed), self.n_support)
                for a, b, seed in zip(bounds[:-1], bounds[1:], seeds)
            )
        models, supports, sizes = zip(*shards)
        sizes = np.asarray(sizes, dtype=float)
        # Each shard's support points carry its share of the data.
        support_weight = np.concatenate(
            [np.full(len(s), size / len(s)) for s, size in zip(supports, sizes)])
        reduction = aggregate_mixtures(
            list(models), list(supports), weights=sizes, n_experts=self.n_experts,
            support_weight=support_weight, tol=self.tol, random_state=rng)
        W, B, v = reduction.model._parameters()
        self._set_parameters(W, B, v)
        self.local_models_ = list(models)
        self.shard_sizes_ = sizes.astype(int)
        self.reduction_ = self.result_ = reduction
        self.n_iter_ = int(reduction.nit)
        return self

    def _fit_dask(self, X, y, local, rng):
        import dask

        if not _is_dask_array(y):
            raise TypeError("y must be a dask array when X is one (with the same row chunks).")
        if X.ndim != 2:
            raise ValueError(f"X must be 2-dimensional, got {X.ndim} dimensions.")
        if y.ndim != 1 or y.shape[0] != X.shape[0] or tuple(y.chunks[0]) != tuple(X.chunks[0]):
            raise ValueError("y must be 1-dimensional with the same row chunks as X.")
        X = X.rechunk({1: -1})  # whole rows per block; the row chunks stay the shards
        x_blocks = X.to_delayed().ravel()
        y_blocks = y.to_delayed().ravel()
        seeds = rng.randint(2**31 - 1, size=len(x_blocks))
        self.n_features_in_ = int(X.shape[1])
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        client = _active_client()
        if client is not None:
            return _fit_on_client(client, x_blocks, y_blocks, local, seeds, self.n_support)
        tasks = [dask.delayed(_fit_shard)(xb, yb, local, int(seed), self.n_support)
                 for xb, yb, seed in zip(x_blocks, y_blocks, seeds)]
        return list(dask.compute(*tasks))


def _active_client():
    """The ``distributed.Client`` that ``dask.compute`` would use now, or None."""
    import dask.base

    scheduler = getattr(dask.base.get_scheduler(), "__self__", None)
    if type(scheduler).__name__ == "Client" and \
            type(scheduler).__module__.split(".")[0] == "distributed":
        return scheduler
    return None


def _spread_over_workers(holders, nthreads: dict) -> list:
    """A worker for each task: the least loaded (tasks per thread), its data's holder first.

    ``holders[i]`` is the collection of workers that hold task ``i``'s data; ``nthreads``
    maps each worker to its thread count. Tasks are placed in order, each on the worker with
    the fewest tasks per thread so far, a holder of its data among equals (then the first in
    sorted order), so that no worker gets a second task while another has a free thread.
    """
    workers = sorted(nthreads)
    load = dict.fromkeys(workers, 0)
    placed = []
    for held in holders:
        held = set(held)
        best = min(workers, key=lambda w: (load[w] / max(nthreads[w], 1), w not in held))
        load[best] += 1
        placed.append(best)
    return placed


def _fit_on_client(client, x_blocks, y_blocks, local, seeds, n_support) -> list:
    """The shards' fits on a Dask cluster, spread over the worker threads.

    Left to itself, the scheduler runs a task where its data are: two shards held by one
    worker were fitted one after the other there while another worker idled (work stealing
    did not move the second fit before the first ended). The chunks are computed (or found,
    when persisted) first, then each fit is pinned to a worker by
    :func:`_spread_over_workers` (loosely: the scheduler may still move it if that worker
    leaves). Moving a shard costs far less than fitting it.
    """
    from distributed import wait

    n_shards = len(x_blocks)
    blocks = client.compute([*x_blocks, *y_blocks], optimize_graph=False)
    wait(blocks)
    x_futures, y_futures = blocks[:n_shards], blocks[n_shards:]
    who_has = client.who_has(x_futures)
    targets = _spread_over_workers([who_has.get(f.key, ()) for f in x_futures],
                                  client.nthreads())
    fits = [client.submit(_fit_shard, xf, yf, local, int(seed), n_support, workers=[target],
                          allow_other_workers=True, pure=False)
            for xf, yf, seed, target in zip(x_futures, y_futures, seeds, targets)]
    return client.gather(fits)
