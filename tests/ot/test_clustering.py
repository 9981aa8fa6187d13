import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.utils.estimator_checks import parametrize_with_checks

from mmopt.ot import ImbalancedOTClustering, semantic_graph


@pytest.mark.filterwarnings("ignore::mmopt.ConvergenceWarning")
@parametrize_with_checks([
    ImbalancedOTClustering(n_clusters=3, n_rounds=5, random_state=0),
    ImbalancedOTClustering(n_clusters=3, n_rounds=3, lam=0.05, n_neighbors=5, random_state=0),
])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _accuracy(truth, labels):
    k = max(truth.max(), labels.max()) + 1
    table = np.zeros((k, k))
    np.add.at(table, (truth, labels), 1)
    rows, cols = linear_sum_assignment(-table)
    return table[rows, cols].sum() / truth.size


def test_long_tailed_blobs_beat_kmeans():
    # Three clusters of 200, 40 and 10 points, close enough that k-means splits the big one.
    rng = np.random.default_rng(0)
    sizes = [200, 40, 10]
    centers = np.array([[0.0, 0.0], [3.5, 0.0], [0.0, 3.5]])
    X = np.vstack([rng.normal(c, 1.0, (s, 2)) for c, s in zip(centers, sizes)])
    truth = np.repeat(np.arange(3), sizes)
    ours = ImbalancedOTClustering(n_clusters=3, random_state=0).fit(X)
    kmeans = KMeans(3, n_init=10, random_state=0).fit(X)
    assert _accuracy(truth, ours.labels_) > _accuracy(truth, kmeans.labels_) + 0.03
    # labels_ come from the plan (with the semantic graph), predict from the head alone.
    assert np.mean(ours.labels_ == ours.predict(X)) > 0.9
    # The P2OT head alone (no semantic graph): its labels are the head's.
    p2ot = ImbalancedOTClustering(n_clusters=3, lam=0.0, random_state=0).fit(X)
    assert _accuracy(truth, p2ot.labels_) > _accuracy(truth, kmeans.labels_) + 0.03
    assert ours.cluster_centers_.shape == (3, 2)


def test_common_scale_keeps_the_geometry():
    # The default scaling is one common factor, standardize=True one per feature: on
    # standardized data (common factor 1) the two give the same clustering.
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal((0, 0), 0.6, (80, 2)), rng.normal((3, 0), 0.6, (20, 2))])
    X_std = (X - X.mean(0)) / X.std(0)
    a = ImbalancedOTClustering(2, n_rounds=5, random_state=0).fit_predict(X_std)
    b = ImbalancedOTClustering(2, n_rounds=5, standardize=True, random_state=0).fit_predict(X)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="standardize"):
        ImbalancedOTClustering(2, standardize="yes").fit(X)


def test_semantic_reward_is_the_neighbour_average():
    # The reward operator is D^-1 (S + S^T) of the semantic graph: checked densely.
    rng = np.random.default_rng(2)
    Z = rng.normal(size=(30, 3))
    A = ImbalancedOTClustering(2, n_neighbors=4)._neighbour_average(Z).toarray()
    S = semantic_graph(Z, 4).toarray()
    W = S + S.T
    np.testing.assert_allclose(A, W / W.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(A.sum(axis=1), 1.0)


def test_emptied_prototype_restarts_at_the_farthest_sample():
    Z = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [9.0, 0.0]])
    plan = np.zeros((4, 3))
    plan[:2, 0] = 0.25
    plan[2:, 1] = [0.25, 0.05]  # cluster 2 gets nothing: it restarts at [9, 0]
    centers = ImbalancedOTClustering._refit(plan, Z)
    np.testing.assert_allclose(centers[:2], [[0.05, 0.0], [17.0 / 3.0, 0.0]])
    np.testing.assert_allclose(centers[2], [9.0, 0.0])


def test_reward_hands_out_each_clusters_transported_mass():
    # Dense reference: A = D^-1 (S + S^T); each cluster's neighbour shares A (n Q) divided
    # by the mean column sum of A over its transported samples, so that (before the clip
    # at 1) cluster j's rewards sum to n times its transported mass.
    rng = np.random.default_rng(3)
    Z = np.vstack([rng.normal(0, 0.2, (20, 2)), rng.normal(0, 2.0, (20, 2)) + [3, 0]])
    walk = ImbalancedOTClustering(2, n_neighbors=5)._neighbour_average(Z)
    S = semantic_graph(Z, 5).toarray()
    A = (S + S.T) / (S + S.T).sum(axis=1, keepdims=True)
    plan = np.zeros((40, 2))
    plan[:5, 0] = plan[20:25, 1] = 1 / 40  # five confident samples per cluster
    audience = A.sum(axis=0)
    reward = ImbalancedOTClustering._reward(walk, audience, plan)
    heard = np.array([audience[:5].mean(), audience[20:25].mean()])
    raw = A @ (40 * plan)
    np.testing.assert_allclose(reward, np.minimum(raw / heard, 1.0), rtol=1e-12)
    unclipped = raw / heard
    np.testing.assert_allclose(unclipped.sum(axis=0), [5.0, 5.0], rtol=1e-12)


def test_two_unequal_clusters_do_not_collapse():
    # breast_cancer with the spread-out malignant class the larger (212 vs 35 compact
    # benign samples): the unnormalized reward handed all the mass to one cluster.
    from sklearn.datasets import load_breast_cancer
    from sklearn.metrics import normalized_mutual_info_score
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(0)
    keep = np.concatenate([np.flatnonzero(y == 0),
                           rng.permutation(np.flatnonzero(y == 1))[:35]])
    X, y = StandardScaler().fit_transform(X[keep]), y[keep]
    labels = ImbalancedOTClustering(2, random_state=0).fit(X).labels_
    assert np.bincount(labels, minlength=2).min() >= 20
    assert normalized_mutual_info_score(y, labels) > 0.1
