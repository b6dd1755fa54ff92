"""metrics.knn_probe against scikit-learn's brute-force cosine KNeighborsClassifier and roc_auc_score."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from jetjax import metrics


def clustered_embeddings(rng, n, num_classes=4, dim=6, spread=1.5):
    """Overlapping class clusters (so that neighbours disagree and the scores are not all 0 or 1)."""
    centres = np.random.default_rng(0).normal(size=(num_classes, dim))
    labels = rng.integers(0, num_classes, n)
    return (centres[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels


@pytest.mark.parametrize("temperature", [None, 0.07])
def test_knn_probe_matches_scikit_learn(temperature):
    rng = np.random.default_rng(1)
    train, train_labels = clustered_embeddings(rng, 300)
    query, query_labels = clustered_embeddings(rng, 101)
    # Wu et al.'s weights exp(s / T) as a function of scikit-learn's cosine distance 1 - s
    weights = "uniform" if temperature is None else (lambda distance: np.exp((1 - distance) / temperature))
    reference = KNeighborsClassifier(n_neighbors=15, metric="cosine", algorithm="brute", weights=weights)
    # float64 inputs: knn_probe works in float64, and exp(s / T) magnifies float32 rounding 1 / T times
    expected = reference.fit(train.astype(np.float64), train_labels).predict_proba(query.astype(np.float64))
    # a query batch that does not divide the queries exercises the last, shorter block
    scores, result = metrics.knn_probe(train, train_labels, query, query_labels, k=15, temperature=temperature,
                                       query_batch=16)
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-9)
    assert 0.3 < result["accuracy"] < 0.95  # the task is neither trivial nor hopeless
    assert result["accuracy"] == pytest.approx(np.mean(expected.argmax(1) == query_labels))
    assert result["macro_auc"] == pytest.approx(roc_auc_score(query_labels, expected, multi_class="ovr"), rel=1e-9)


def test_knn_probe_vote_fractions_and_cosine_scale_invariance():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 1.0]], np.float32)
    train_labels = np.array([0, 0, 1, 1, 2])
    query = np.array([[5.0, 0.2], [0.1, 3.0]], np.float32)  # lengths do not matter, only directions
    with pytest.warns(UserWarning, match="no jets of this class"):  # classes 2 and 3 are absent from the queries
        scores, result = metrics.knn_probe(train, train_labels, query, np.array([0, 1]), k=3, num_classes=4)
    # query 0 at 2 degrees: neighbours at 0, 6 (class 0) and 79 degrees (class 2); query 1 at 88 degrees:
    # neighbours at 90, 84 (class 1) and 79 degrees (class 2)
    np.testing.assert_allclose(scores, [[2 / 3, 0, 1 / 3, 0], [0, 2 / 3, 1 / 3, 0]])
    assert result["accuracy"] == 1.0


def test_knn_probe_rejects_bad_inputs():
    train, labels = np.ones((5, 3), np.float32), np.zeros(5, int)
    with pytest.raises(ValueError, match="between 1 and the 5 training"):
        metrics.knn_probe(train, labels, train, labels, k=6)
    with pytest.raises(ValueError, match="3 dimensions, queries 2"):
        metrics.knn_probe(train, labels, np.ones((2, 2)), np.zeros(2, int), k=2)
    with pytest.raises(ValueError, match="class indices"):
        metrics.knn_probe(train, labels.astype(float), train, labels, k=2)
    with pytest.raises(ValueError, match="num_classes = 2"):
        metrics.knn_probe(train, np.array([0, 1, 2, 0, 1]), train, labels, k=2, num_classes=2)
    with pytest.raises(ValueError, match="temperature must be positive"):
        metrics.knn_probe(train, labels, train, labels, k=2, temperature=0.0)
