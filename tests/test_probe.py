"""The linear probe's fit (jetjax.probe) against scikit-learn on the same features; the whole probe run against
scikit-learn on a frozen encoder's embeddings is in test_train.py."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from jetjax import probe
from jetjax.feeding import softmax


@pytest.mark.parametrize("c", [0.05, 1.0, 100.0])
def test_fit_logistic_is_scikit_learns_logistic_regression(c):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    features = rng.normal(size=(400, 6)) + 0.8 * np.eye(3, 6)[labels]
    w, b, _ = probe.fit_logistic(features, labels, 3, c)
    reference = LogisticRegression(C=c, tol=1e-10, max_iter=100_000).fit(features, labels)
    np.testing.assert_allclose(softmax(features @ w + b), reference.predict_proba(features), atol=2e-5)


def test_folded_head_is_the_fit_on_standardised_features():
    rng = np.random.default_rng(1)
    z = 3.0 + 0.1 * rng.normal(size=(50, 4))  # a large common offset, a small spread (a frozen z)
    mean, std = probe.standardisation(z)
    w, b = rng.normal(size=(4, 3)), rng.normal(size=3)
    head = probe.folded_head(w, b, mean, std)
    np.testing.assert_allclose(z @ head["kernel"] + head["bias"], (z - mean) / std @ w + b, rtol=1e-4, atol=1e-4)


def test_a_constant_dimension_is_left_unscaled():
    _, std = probe.standardisation(np.ones((10, 2)) * [1.0, 2.0] + np.array([[0.0], [1.0]] * 5) * [1, 0])
    assert std[1] == 1.0 and std[0] > 0


def test_settings_name_the_key():
    from configs import quickstart

    c = quickstart.get_config()
    c.probe = dict(c_grid=(1.0, -1.0))
    with pytest.raises(ValueError, match="config.probe.c_grid"):
        probe.probe_settings(c)
    c.probe = dict(c_grid=(1.0,))
    c.model.head = "mlp"
    with pytest.raises(ValueError, match="config.model.head='linear'"):
        probe.probe_settings(c)
