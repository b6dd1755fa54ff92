"""Metrics against scikit-learn, hand-computed working points, brute-force cut scans and limiting cases."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from jetjax import metrics

NAMES = ["bb", "tau_h tau_e", "tau_h tau_mu", "tau_h tau_h", "qqb/bcs", "qq", "QCD"]


def random_probabilities(seed=0, n=3000, k=7, signal=1.0):
    """Softmax scores with the true class pushed up by `signal`, and the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += signal
    p = np.exp(logits)
    return (p / p.sum(1, keepdims=True)).astype(np.float32), labels


def tied_probabilities(seed=0, n=3000, k=7):
    """Probabilities in steps of 0.1 that sum to 1 (multinomial counts / 10): heavily tied scores."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    weights = np.ones((n, k))
    weights[np.arange(n), labels] = 3.0
    counts = np.array([rng.multinomial(10, w / w.sum()) for w in weights])
    return counts / 10.0, labels


def rounded_probabilities(seed=0, n=3000):
    """Random probabilities rounded to one decimal (rows no longer sum to 1): for the metric functions."""
    scores, labels = random_probabilities(seed, n)
    return np.round(scores, 1), labels


INPUTS = [random_probabilities, tied_probabilities, rounded_probabilities]


@pytest.mark.parametrize("make", [random_probabilities, tied_probabilities])
def test_micro_auc_equals_sklearn(make):
    """The micro AUC of `evaluate` (one sort per class, no N*K flattened arrays), ties included."""
    scores, labels = make()
    onehot = np.eye(scores.shape[1])[labels]
    assert metrics.evaluate(scores, labels, NAMES)["micro_auc"] == pytest.approx(
        skm.roc_auc_score(onehot, scores, average="micro"), abs=1e-12)


@pytest.mark.parametrize("make", INPUTS)
def test_metrics_equal_sklearn(make):
    scores, labels = make()
    onehot = np.eye(scores.shape[1])[labels]
    assert metrics.macro_roc_auc(scores, labels, NAMES) == pytest.approx(
        skm.roc_auc_score(onehot, scores, average="macro"), abs=1e-12)
    per_class = metrics.per_class_auc(scores, labels, NAMES)
    assert list(per_class.values()) == pytest.approx(skm.roc_auc_score(onehot, scores, average=None), abs=1e-12)
    assert metrics.macro_f1(scores, labels) == pytest.approx(
        skm.f1_score(labels, scores.argmax(1), average="macro"), abs=1e-12)
    assert metrics.accuracy(scores, labels) == skm.accuracy_score(labels, scores.argmax(1))
    for k in range(scores.shape[1]):
        ours = metrics.roc_curve(scores[:, k], labels == k)
        theirs = skm.roc_curve(labels == k, scores[:, k], drop_intermediate=False)
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", [random_probabilities, tied_probabilities])
def test_evaluate_equals_sklearn(make):
    scores, labels = make(seed=1)
    onehot = np.eye(scores.shape[1])[labels]
    result = metrics.evaluate(scores, labels, NAMES, background="QCD")
    assert result["accuracy"] == skm.accuracy_score(labels, scores.argmax(1))
    assert result["macro_auc"] == pytest.approx(skm.roc_auc_score(labels, scores, multi_class="ovr"), abs=1e-12)
    assert result["micro_auc"] == pytest.approx(skm.roc_auc_score(onehot, scores, average="micro"), abs=1e-12)
    assert result["macro_f1"] == pytest.approx(skm.f1_score(labels, scores.argmax(1), average="macro"), abs=1e-12)
    assert [result["per_class"][n]["auc"] for n in NAMES] == pytest.approx(
        skm.roc_auc_score(onehot, scores, average=None), abs=1e-12)
    assert [result["per_class"][n]["f1"] for n in NAMES] == pytest.approx(
        skm.f1_score(labels, scores.argmax(1), average=None), abs=1e-12)
    assert result["signal_classes"] == NAMES[:-1]
    assert "rejection" not in result["per_class"]["QCD"] and set(result["roc"]) == set(NAMES[:-1])


# Hand-computed example: 4 signal and 10 background jets, one signal/background tie at 0.6.
# Cuts from the top: 0.9 (tp 1, fp 0), 0.85 (1, 1), 0.8 (2, 1), 0.7 (2, 2), 0.6 (3, 3), 0.5 (3, 4), 0.4 (4, 4).
# AUC: the signal jets beat 10, 9, 7 + 1/2 (tie) and 6 background jets: 32.5 / 40.
HAND_SIGNAL = [0.9, 0.8, 0.6, 0.4]
HAND_BACKGROUND = [0.85, 0.7, 0.6, 0.5, 0.3, 0.2, 0.2, 0.1, 0.05, 0.0]


def hand_counts():
    score = np.array(HAND_SIGNAL + HAND_BACKGROUND)
    return metrics.binary_roc(score, np.arange(len(score)) < len(HAND_SIGNAL))


def test_working_points_by_hand():
    counts = hand_counts()
    assert metrics.roc_auc(counts) == 32.5 / 40
    assert metrics.rejection_at(counts, 0.5) == 10.0          # cut 0.8 keeps 2/4 signal, 1/10 background
    assert metrics.rejection_at(counts, 0.6) == pytest.approx(10 / 3)  # the tie at 0.6 passes together
    assert metrics.rejection_at(counts, 0.25) == math.inf     # cut 0.9: no background passes
    assert metrics.signal_efficiency_at(counts, 0.1) == 0.5   # loosest cut with fp <= 1: 0.8
    assert metrics.signal_efficiency_at(counts, 0.25) == 0.5  # fp <= 2.5: cut 0.7
    assert metrics.signal_efficiency_at(counts, 0.3) == 0.75  # fp <= 3: cut 0.6 (tie included)
    assert metrics.signal_efficiency_at(counts, 0.05) == 0.25  # only the cut 0.9 has fp = 0
    np.testing.assert_array_equal(metrics.background_efficiency_at(counts, [0.25, 0.5, 0.75, 1.0]),
                                  [0.0, 0.1, 0.3, 0.4])


def brute_force_working_points(score, is_signal, eps_s, eps_b):
    """Scan every cut `score >= t` (t over the distinct scores) directly: eps_B of the highest cut with
    eps_S >= eps_s, eps_S of the lowest cut with eps_B <= eps_b."""
    cuts = np.unique(score)
    passing_s = np.array([(score[is_signal] >= t).mean() for t in cuts])
    passing_b = np.array([(score[~is_signal] >= t).mean() for t in cuts])
    enough_signal = passing_s >= eps_s
    little_background = passing_b <= eps_b
    background = passing_b[enough_signal][-1]
    signal = passing_s[little_background][0] if little_background.any() else 0.0
    return background, signal


@pytest.mark.parametrize("make", INPUTS)
def test_working_points_equal_brute_force_scan(make):
    scores, labels = make(seed=2, n=1500)
    for k in (0, 4):
        counts = metrics.binary_roc(scores[:, k], labels == k)
        for eps_s, eps_b in [(0.5, 1e-2), (0.3, 0.1), (0.9, 0.3)]:
            background, signal = brute_force_working_points(scores[:, k], labels == k, eps_s, eps_b)
            assert metrics.background_efficiency_at(counts, eps_s) == background
            assert metrics.signal_efficiency_at(counts, eps_b) == signal


def test_perfect_classifier():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, 700)
    scores = np.full((700, 7), 0.05)
    scores[np.arange(700), labels] = 0.7
    result = metrics.evaluate(scores, labels, NAMES)
    assert result["accuracy"] == result["macro_auc"] == result["micro_auc"] == result["macro_f1"] == 1.0
    for name in NAMES[:-1]:
        assert result["per_class"][name]["rejection"] == math.inf
        assert result["per_class"][name]["signal_efficiency"] == 1.0


def test_random_classifier():
    scores, labels = random_probabilities(seed=4, n=200_000, signal=0.0)
    result = metrics.evaluate(scores, labels, NAMES)
    assert result["macro_auc"] == pytest.approx(0.5, abs=0.01)
    assert result["micro_auc"] == pytest.approx(0.5, abs=0.01)
    assert result["accuracy"] == pytest.approx(1 / 7, abs=0.01)
    for name in NAMES[:-1]:
        assert result["per_class"][name]["rejection"] == pytest.approx(2.0, rel=0.03)
        assert result["per_class"][name]["signal_efficiency"] == pytest.approx(1e-2, abs=0.004)


def test_absent_class_is_nan_with_warning():
    scores, labels = random_probabilities(seed=5)
    present = labels != 3
    scores, labels = scores[present], labels[present]
    with pytest.warns(UserWarning, match="tau_h tau_h"):
        result = metrics.evaluate(scores, labels, NAMES)
    absent = result["per_class"]["tau_h tau_h"]
    assert all(math.isnan(absent[key]) for key in ("auc", "f1", "rejection", "signal_efficiency"))
    assert result["absent_classes"] == ["tau_h tau_h"] and result["jets_per_class"]["tau_h tau_h"] == 0
    onehot = np.eye(7)[labels]
    kept = [0, 1, 2, 4, 5, 6]
    assert result["macro_auc"] == pytest.approx(skm.roc_auc_score(onehot[:, kept], scores[:, kept]), abs=1e-12)
    assert result["micro_auc"] == pytest.approx(skm.roc_auc_score(onehot, scores, average="micro"), abs=1e-12)
    assert result["macro_f1"] == pytest.approx(
        skm.f1_score(labels, scores.argmax(1), labels=kept, average="macro"), abs=1e-12)


def test_strict_json_round_trip(tmp_path):
    scores, labels = random_probabilities(seed=6, n=500, signal=8.0)
    result = metrics.evaluate(scores, labels, NAMES)
    assert any(result["per_class"][n]["rejection"] == math.inf for n in NAMES[:-1])
    path = tmp_path / "metrics.json"
    metrics.write_json(path, result)

    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")
    json.loads(path.read_text(), parse_constant=refuse)
    assert metrics.read_json(path) == result


def test_bad_inputs_are_refused_clearly():
    scores, labels = random_probabilities(seed=7, n=100)
    with pytest.raises(ValueError, match="softmax"):
        metrics.evaluate(np.log(scores), labels, NAMES)
    with pytest.raises(ValueError, match="outside 0..6"):
        metrics.evaluate(scores, np.where(labels == 0, 9, labels), NAMES)
    with pytest.raises(ValueError, match="7 columns but 6 class names"):
        metrics.evaluate(scores, labels, NAMES[:-1])
    with pytest.raises(ValueError, match="background class 'qcd'"):
        metrics.evaluate(scores, labels, NAMES, background="qcd")
    scores[3, 2] = np.nan
    with pytest.raises(ValueError, match="1 scores are NaN"):
        metrics.evaluate(scores, labels, NAMES)


def test_imports_without_jax():
    code = ("import sys; sys.modules['jax'] = None; import jetjax.metrics as m, numpy as np; "
            "print(m.accuracy(np.eye(3), np.arange(3)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1.0"
