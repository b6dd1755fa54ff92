"""Classification metrics of the study's tables: numpy in, numbers out (no JAX needed).

Inputs: `scores (N, K)` per-class probabilities (softmax outputs) and `labels (N,)` class indices.
One-vs-rest: class k is the signal, every other jet is background, and the discriminant is the class-k
probability (as in the study).

Exactness and cost. Every ROC quantity comes from one sort of one score column (O(N log N), one class
at a time, no N x N work): jets with equal scores form a single ROC point, exactly as scikit-learn's
`roc_curve`, so AUCs on tied scores equal scikit-learn's. Counts are int64 and the AUC is an integer sum
of trapezoids divided once, so nothing is lost at 20M jets. Scores are sorted in their own dtype (float32
from the model: two jets tie when their float32 probabilities are equal, as they would in scikit-learn
on the same array); rates and AUCs are float64. `evaluate` needs about 90 bytes per jet on top of its
input (measured peak; ~1.8 GB at 20M jets x 7 classes).

Working points (the study's Tables 3 and 4) are read at real cuts on the score, never interpolated
between two cuts:
- eps_B at eps_S: the tightest cut (highest threshold) that keeps at least eps_S of the signal, i.e. the
  first ROC point with tpr >= eps_S; eps_B is its fpr. Rejection = 1 / eps_B, `inf` when no background
  jet passes that cut.
- eps_S at eps_B: the loosest cut whose fpr <= eps_B, i.e. the largest tpr among the ROC points with
  fpr <= eps_B.

A class with no jets in the test set (or a test set made of one class only) has undefined one-vs-rest
metrics: they are NaN, with a warning naming the class, and macro averages run over the other classes.

`knn_probe` classifies frozen embeddings by their nearest training embeddings (cosine similarity) and
scores the result with the same metrics.
"""
import json
import math
import warnings
from dataclasses import dataclass

import numpy as np

ROC_GRID = np.linspace(0.01, 1.0, 100)
"""Signal efficiencies at which `evaluate` stores each class's ROC curve (for the report's figures)."""

PROBABILITY_TOLERANCE = 1e-2
"""How far a row of scores may sum from 1 (float32 / bf16 softmax) before `evaluate` refuses it."""


@dataclass(frozen=True)
class RocCounts:
    """A one-vs-rest ROC curve as integer counts, one point per distinct score, highest threshold first.

    The first point is the cut above every score (nothing passes; threshold +inf), as scikit-learn's
    `roc_curve`; the last point lets every jet pass."""
    thresholds: np.ndarray
    tp: np.ndarray
    """Signal jets with score >= threshold (int64)."""
    fp: np.ndarray
    """Background jets with score >= threshold (int64)."""

    @property
    def n_signal(self):
        return int(self.tp[-1])

    @property
    def n_background(self):
        return int(self.fp[-1])

    @property
    def defined(self):
        """Whether both signal and background are present (otherwise every metric is NaN)."""
        return self.n_signal > 0 and self.n_background > 0

    @property
    def tpr(self):
        return _rate(self.tp, self.n_signal)

    @property
    def fpr(self):
        return _rate(self.fp, self.n_background)


def _rate(count, total):
    return count / total if total else np.full(count.shape, np.nan)


def binary_roc(score, is_signal):
    """ROC counts of a binary problem from one sort of the scores (ties = one point)."""
    order = np.argsort(score)[::-1]
    sorted_score = score[order]
    tp = np.cumsum(is_signal[order], dtype=np.int64)
    del order
    last_of_tie = np.append(np.flatnonzero(sorted_score[1:] != sorted_score[:-1]), len(score) - 1)
    tp = tp[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return RocCounts(thresholds=np.append(np.inf, sorted_score[last_of_tie]),
                     tp=np.append(np.int64(0), tp), fp=np.append(np.int64(0), fp))


def one_vs_rest_roc(scores, labels, k, class_name=None):
    """ROC counts of class k against all other jets, the score being the class-k probability.

    Warns (naming the class) when the class has no jets, or no other class has any."""
    counts = binary_roc(scores[:, k], labels == k)
    if not counts.defined:
        missing = "no jets of this class" if counts.n_signal == 0 else "no jets of any other class"
        warnings.warn(f"class {class_name if class_name is not None else k!r}: the test set holds {missing}; "
                      "its one-vs-rest metrics are NaN", stacklevel=2)
    return counts


def roc_curve(score, is_signal):
    """(fpr, tpr, thresholds) at every distinct score, as `sklearn.metrics.roc_curve(...,
    drop_intermediate=False)`."""
    counts = binary_roc(score, is_signal)
    return counts.fpr, counts.tpr, counts.thresholds


def roc_auc(counts):
    """Area under the ROC curve (trapezoids, so a tie counts one half), NaN when undefined."""
    if not counts.defined:
        return math.nan
    twice_area = np.dot(np.diff(counts.fp), counts.tp[1:] + counts.tp[:-1])
    return int(twice_area) / (2 * counts.n_signal * counts.n_background)


def background_efficiency_at(counts, signal_efficiency):
    """eps_B of the tightest cut keeping at least `signal_efficiency` of the signal (scalar or array)."""
    if not counts.defined:
        return np.full(np.shape(signal_efficiency), np.nan)[()]
    point = np.searchsorted(counts.tpr, signal_efficiency, side="left")
    return counts.fpr[np.minimum(point, len(counts.fp) - 1)]


def rejection_at(counts, signal_efficiency=0.5):
    """Background rejection 1 / eps_B at `signal_efficiency`; inf when no background passes."""
    eps_b = float(background_efficiency_at(counts, signal_efficiency))
    return math.inf if eps_b == 0 else 1 / eps_b


def signal_efficiency_at(counts, background_efficiency=1e-2):
    """eps_S of the loosest cut with eps_B <= `background_efficiency`."""
    if not counts.defined:
        return math.nan
    point = np.searchsorted(counts.fpr, background_efficiency, side="right") - 1
    return float(counts.tpr[point])


def per_class_auc(scores, labels, class_names):
    """Class name -> one-vs-rest ROC-AUC (NaN with a warning for an absent class)."""
    return {name: roc_auc(one_vs_rest_roc(scores, labels, k, name)) for k, name in enumerate(class_names)}


def macro_roc_auc(scores, labels, class_names):
    """Unweighted mean of the one-vs-rest AUCs over the classes present in the test set."""
    return _mean_of_defined(per_class_auc(scores, labels, class_names).values())


def _mean_of_defined(values):
    values = np.array(list(values), dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def true_class_scores(scores, labels):
    """Each jet's probability of its own class, sorted ascending: the positives of the micro AUC."""
    return np.sort(np.take_along_axis(scores, labels[:, None], axis=1)[:, 0])


def micro_pairs(positives, counts):
    """Twice the number of (positive, negative) pairs ranked correctly (a tie counts one half), the
    negatives being the background jets of one class's ROC counts, positives `true_class_scores`."""
    negatives_at_threshold = np.diff(counts.fp)[::-1]
    thresholds = counts.thresholds[:0:-1]  # ascending: searchsorted is faster on sorted needles
    below = np.searchsorted(positives, thresholds, side="left")
    at_or_below = np.searchsorted(positives, thresholds, side="right")
    return int(np.dot(negatives_at_threshold, 2 * len(positives) - below - at_or_below))


def micro_auc_from_pairs(twice_correct_pairs, n_jets, n_classes):
    """Micro AUC: each jet is one positive (its own class) and n_classes - 1 negatives."""
    return twice_correct_pairs / (2 * n_jets * n_jets * (n_classes - 1))


def accuracy(scores, labels):
    """Fraction of jets whose highest score is their own class."""
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def confusion_matrix(labels, predictions, n_classes):
    """(n_classes, n_classes) int64 counts: row = true class, column = predicted class."""
    flat = np.bincount(labels.astype(np.int64) * n_classes + predictions, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def per_class_f1(confusion):
    """F1 = 2TP / (2TP + FP + FN) per class; NaN for a class with no jets."""
    tp = np.diag(confusion).astype(np.float64)
    true_count, predicted_count = confusion.sum(axis=1), confusion.sum(axis=0)
    with np.errstate(invalid="ignore"):
        f1 = 2 * tp / (true_count + predicted_count)
    return np.where(true_count > 0, f1, np.nan)


def macro_f1(scores, labels, n_classes=None):
    """Unweighted mean of the per-class F1 of the argmax predictions, over the classes present."""
    n_classes = scores.shape[1] if n_classes is None else n_classes
    return _mean_of_defined(per_class_f1(confusion_matrix(labels, np.argmax(scores, axis=1), n_classes)))


def check_inputs(scores, labels, class_names, probabilities=True):
    """Raise a ValueError saying what to fix when scores/labels/class names do not fit together."""
    if scores.ndim != 2 or labels.ndim != 1 or len(scores) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected scores (N, K) and labels (N,) with N > 0; got {scores.shape} and {labels.shape}")
    if scores.shape[1] != len(class_names):
        raise ValueError(f"scores have {scores.shape[1]} columns but {len(class_names)} class names were given")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    outside = (labels < 0) | (labels >= len(class_names))
    if outside.any():
        raise ValueError(f"{int(outside.sum())} labels are outside 0..{len(class_names) - 1} "
                         f"(e.g. {np.unique(labels[outside])[:5].tolist()}); drop or remap those jets first")
    non_finite = int(np.count_nonzero(~np.isfinite(scores)))
    if non_finite:
        raise ValueError(f"{non_finite} scores are NaN or infinite; check the model outputs")
    row_sums = scores.sum(axis=1, dtype=np.float64)
    if probabilities and (np.abs(row_sums - 1).max() > PROBABILITY_TOLERANCE or scores.min() < 0):
        raise ValueError(f"scores must be per-class probabilities (softmax of the logits): row sums span "
                         f"[{row_sums.min():.4g}, {row_sums.max():.4g}], minimum score {scores.min():.4g}")


def evaluate(scores, labels, class_names, background="QCD", signal_efficiency=0.5, background_efficiency=1e-2):
    """Every number of the study's Tables 1-4 plus ROC curves, as a dict of plain Python values.

    `class_names` names the score columns (label k = class_names[k]); `background` (or None) is the class
    left out of the working-point tables (rejection at `signal_efficiency`, eps_S at
    `background_efficiency`) and of the ROC curves. Non-finite values are floats; use `write_json` to
    store the dict as strict JSON. One class at a time, one sort per class.
    """
    scores, labels, class_names = np.asarray(scores), np.asarray(labels), list(class_names)
    check_inputs(scores, labels, class_names)
    if background is not None and background not in class_names:
        raise ValueError(f"background class {background!r} is not one of the class names {class_names}")
    n_jets, n_classes = scores.shape
    predictions = np.argmax(scores, axis=1)
    confusion = confusion_matrix(labels, predictions, n_classes)
    f1 = per_class_f1(confusion)
    positives = true_class_scores(scores, labels)
    twice_correct_pairs = 0
    per_class, roc = {}, {}
    for k, name in enumerate(class_names):
        counts = one_vs_rest_roc(scores, labels, k, name)
        twice_correct_pairs += micro_pairs(positives, counts)
        per_class[name] = {"auc": roc_auc(counts), "f1": float(f1[k])}
        if name != background:
            per_class[name]["rejection"] = rejection_at(counts, signal_efficiency)
            per_class[name]["signal_efficiency"] = signal_efficiency_at(counts, background_efficiency)
            roc[name] = {"signal_efficiency": ROC_GRID.tolist(),
                         "background_efficiency": background_efficiency_at(counts, ROC_GRID).tolist()}
    jets_per_class = confusion.sum(axis=1)
    return {
        "n_jets": int(n_jets),
        "class_names": class_names,
        "background": background,
        "signal_classes": [name for name in class_names if name != background],
        "jets_per_class": {name: int(n) for name, n in zip(class_names, jets_per_class)},
        "absent_classes": [name for name, n in zip(class_names, jets_per_class) if n == 0],
        "working_points": {"rejection_at_signal_efficiency": signal_efficiency,
                           "signal_efficiency_at_background_efficiency": background_efficiency},
        "accuracy": float(np.mean(predictions == labels)),
        "macro_auc": _mean_of_defined(c["auc"] for c in per_class.values()),
        "micro_auc": micro_auc_from_pairs(twice_correct_pairs, n_jets, n_classes),
        "macro_f1": _mean_of_defined(f1),
        "per_class": per_class,
        "roc": roc,
    }


def _unit_rows(x):
    """Rows of x divided by their L2 norm, in float64; a zero row stays zero (cosine similarity 0)."""
    x = np.asarray(x, np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _check_embeddings(name, embeddings, labels):
    if embeddings.ndim != 2 or labels.ndim != 1 or len(embeddings) != len(labels) or len(labels) == 0:
        raise ValueError(f"knn_probe: {name} embeddings (N, d) and labels (N,) with N > 0 expected, got "
                         f"{embeddings.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(f"knn_probe: {name} labels must be class indices >= 0, got dtype {labels.dtype}, "
                         f"minimum {labels.min()}")


def knn_probe(train_embeddings, train_labels, query_embeddings, query_labels, k=20, num_classes=None,
              temperature=None, query_batch=512):
    """kNN classifier on cosine similarity, the standard probe of a frozen representation.

    Each query's k most similar training embeddings vote for their classes: with `temperature` None each
    vote counts 1 (scores = vote fractions, scikit-learn's KNeighborsClassifier(metric='cosine')
    `predict_proba`); with a temperature T neighbour i weighs exp(s_i / T), s_i its cosine similarity
    (Wu et al. 2018, T = 0.07 there), and the weights are normalised to sum to 1 per query. Queries are
    processed `query_batch` at a time, so memory is O(query_batch x N_train).
    Returns (scores (N_query, num_classes) float64, {"accuracy", "macro_auc"} of those scores on the
    query labels; `num_classes` defaults to 1 + the largest label; macro AUC over the classes present).
    """
    train_labels, query_labels = np.asarray(train_labels), np.asarray(query_labels)
    train, query = _unit_rows(train_embeddings), _unit_rows(query_embeddings)
    _check_embeddings("train", train, train_labels)
    _check_embeddings("query", query, query_labels)
    if train.shape[1] != query.shape[1]:
        raise ValueError(f"knn_probe: train embeddings have {train.shape[1]} dimensions, queries {query.shape[1]}")
    if not 1 <= k <= len(train):
        raise ValueError(f"knn_probe: k = {k} neighbours must be between 1 and the {len(train)} training embeddings")
    if temperature is not None and temperature <= 0:
        raise ValueError(f"knn_probe: temperature must be positive (or None for plain votes), got {temperature}")
    largest = max(train_labels.max(), query_labels.max())
    num_classes = int(largest) + 1 if num_classes is None else num_classes
    if largest >= num_classes:
        raise ValueError(f"knn_probe: label {largest} does not fit num_classes = {num_classes}")
    scores = np.zeros((len(query), num_classes))
    rows = np.arange(min(query_batch, len(query)))[:, None]
    for start in range(0, len(query), query_batch):
        similarity = query[start:start + query_batch] @ train.T
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        neighbour_similarity = np.take_along_axis(similarity, nearest, axis=1)
        if temperature is None:
            weights = np.ones_like(neighbour_similarity)
        else:  # shifted by the row maximum so that exp cannot overflow; the normalisation removes the shift
            weights = np.exp((neighbour_similarity - neighbour_similarity.max(1, keepdims=True)) / temperature)
        block = scores[start:start + query_batch]
        np.add.at(block, (rows[:len(block)], train_labels[nearest]), weights)
    scores /= scores.sum(axis=1, keepdims=True)
    class_names = [str(c) for c in range(num_classes)]
    return scores, {"accuracy": accuracy(scores, query_labels),
                    "macro_auc": macro_roc_auc(scores, query_labels, class_names)}


NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
"""How `to_json` spells non-finite floats (strict JSON has no NaN/Infinity)."""


def to_json(value):
    """A copy of `value` (dicts, lists, numbers, numpy scalars/arrays) that strict JSON accepts: non-finite
    floats become the strings 'inf', '-inf', 'nan'."""
    if isinstance(value, dict):
        return {key: to_json(v) for key, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def from_json(value):
    """Inverse of `to_json`: the strings 'inf', '-inf', 'nan' become floats again."""
    if isinstance(value, dict):
        return {key: from_json(v) for key, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return NON_FINITE.get(value, value) if isinstance(value, str) else value


def write_json(path, value):
    """Write `value` as strict JSON (non-finite floats as strings, see `to_json`)."""
    with open(path, "w") as f:
        json.dump(to_json(value), f, indent=1, allow_nan=False)


def read_json(path):
    """Read a file written by `write_json`, restoring inf/nan floats."""
    with open(path) as f:
        return from_json(json.load(f))
