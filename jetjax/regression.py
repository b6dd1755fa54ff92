"""Regression tasks (config section `regression`): a per-jet target from a jet column of the files, or the
ratio of two, instead of the class label.

    regression.target = "jet_sdmass/jet_pt"   # '' : the classification task of data.scheme / data.task
    regression.loss = "mse" | "huber"           # on the standardised target; huber_delta in its units

The jets are still drawn by the task's class scheme (data.scheme / data.task: which jets, in what fractions),
and their class labels are kept, so that the results come per class too. The head of the classifier modes
(supervised; finetune with every method) gets one output; the target is standardised with the mean and
standard deviation of the run's first training batches (`TargetScale`, kept with the model's BatchNorm
statistics, so checkpoints predict in the target's units). The inputs are rescaled to jet pT = 500 GeV
(jetjax/data/features.py), so a target that carries the jet's energy scale (GeV) cannot be learned from them:
give ratios to jet_pt, e.g. the soft-drop mass as `jet_sdmass/jet_pt`.

Evaluation (`resolution_metrics`) follows the usual calibration figures: the relative error
r = (predicted - true) / true of every jet with a non-zero target, its median (the bias) and half its
interquartile range (the resolution, IQR/2), overall and per class; `response_figure` draws the response
predicted / true.
"""
import dataclasses

import numpy as np

from configs import defaults
from jetjax import metrics

LOSSES = ("mse", "huber")
SCALE_BATCHES = 16
"""Training batches whose targets give the standardisation (epoch 0's first, as the layouts' sample)."""


@dataclasses.dataclass(frozen=True)
class TargetScale:
    """A regression head's task: its `loss` ('mse' | 'huber', `delta`) on targets standardised by `mean`, `std`."""
    loss: str = "mse"
    delta: float = 1.0
    mean: float = 0.0
    std: float = 1.0


def target_columns(config):
    """The jet column(s) of `regression.target`: () for a classification run, (column,) or (numerator,
    denominator) for 'a/b'."""
    target = defaults.section(config, "regression").target
    columns = tuple(part.strip() for part in target.split("/")) if target else ()
    if len(columns) > 2 or not all(columns):
        raise ValueError(f"config.regression.target={target!r}: give one jet column (e.g. 'jet_sdmass') or the ratio "
                         "of two ('jet_sdmass/jet_pt')")
    return columns


def refuse_in_study(config):
    """A clear error where a study of classifiers (study, efficiency, scaling: compared by macro AUC) is asked
    to run a regression task."""
    if target_columns(config):
        raise ValueError(f"config.mode={config.mode!r} compares classifiers (macro AUC), but config.regression.target="
                         f"{defaults.section(config, 'regression').target!r} asks for a regression task: run its "
                         "stages as supervised / finetune runs (docs/regression.md), or unset regression.target")


def task(config):
    """The TargetScale (mean 0, std 1 until the data give them) of a regression run, None for classification."""
    if not target_columns(config):
        return None
    settings = defaults.section(config, "regression")
    if settings.loss not in LOSSES or not settings.huber_delta > 0:
        raise ValueError(f"config.regression.loss={settings.loss!r} must be one of {LOSSES} and "
                         f"config.regression.huber_delta={settings.huber_delta} positive")
    return TargetScale(settings.loss, float(settings.huber_delta))


def scale_of(scale, batches):
    """`scale` with the mean and standard deviation of the targets of `batches` (numpy batch dicts)."""
    targets = np.concatenate([np.asarray(b["target"], np.float64) for b in batches])
    std = float(np.std(targets))
    if not std > 0:
        raise ValueError(f"config.regression.target: the {len(targets)} targets of the first training batches are all "
                         f"{targets[0] if len(targets) else 'missing'}; nothing to regress")
    return dataclasses.replace(scale, mean=float(np.mean(targets)), std=std)


def relative_errors(predictions, targets):
    """(predicted - true) / true for the jets with a non-zero target, and the mask of those jets."""
    kept = np.asarray(targets) != 0
    return (np.asarray(predictions, np.float64)[kept] - targets[kept]) / targets[kept], kept


def summary(predictions, targets):
    """{'bias': median relative error, 'resolution': IQR/2 of it, 'rmse' (target units), 'jets', and
    'jets_zero_target' (left out of bias and resolution)}."""
    errors, kept = relative_errors(predictions, np.asarray(targets, np.float64))
    q25, q50, q75 = np.percentile(errors, [25, 50, 75]) if errors.size else (np.nan,) * 3
    rmse = float(np.sqrt(np.mean((np.asarray(predictions, np.float64) - targets) ** 2)))
    return {"bias": float(q50), "resolution": float((q75 - q25) / 2), "rmse": rmse, "jets": int(kept.size),
            "jets_zero_target": int(np.count_nonzero(~kept))}


def resolution_metrics(predictions, targets, labels, class_names):
    """`summary` over all jets and for each class ('per_class')."""
    labels = np.asarray(labels)
    per_class = {name: summary(predictions[labels == k], targets[labels == k])
                 for k, name in enumerate(class_names) if np.any(labels == k)}
    return {**summary(predictions, targets), "per_class": per_class}


def table(title, values):
    """Markdown table of `resolution_metrics`: a row per class and one for all jets."""
    rows = [f"| {name} | {v['jets']} | {v['bias']:.4f} | {v['resolution']:.4f} | {v['rmse']:.4g} |"
            for name, v in [*values["per_class"].items(), ("all", values)]]
    return "\n".join([f"### {title}", "", "| Class | Jets | Bias (median r) | Resolution (IQR/2 of r) | RMSE |",
                      "|---|---:|---:|---:|---:|", *rows, "",
                      f"r = (predicted - true) / true; {values['jets_zero_target']} jets with a zero target are left "
                      "out of bias and resolution."])


def response_figure(predictions, targets, labels, class_names, path, title):
    """The response predicted / true per class (histograms) and its median with the interquartile band in
    bins of the true value, saved to `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    errors, kept = relative_errors(predictions, np.asarray(targets, np.float64))
    response, truth, labels = 1 + errors, np.asarray(targets)[kept], np.asarray(labels)[kept]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    bins = np.linspace(*np.percentile(response, [0.5, 99.5]), 60) if response.size else 10
    for k, name in enumerate(class_names):
        if np.any(labels == k):
            left.hist(response[labels == k], bins=bins, histtype="step", density=True, label=name)
    left.set(xlabel="response predicted / true", ylabel="density", title=title)
    left.legend(fontsize=7)
    edges = np.unique(np.percentile(truth, np.linspace(0, 100, 11))) if truth.size else np.array([0, 1])
    index = np.clip(np.digitize(truth, edges[1:-1]), 0, len(edges) - 2)
    filled = [i for i in range(len(edges) - 1) if np.any(index == i)]
    q = np.array([np.percentile(response[index == i], [25, 50, 75]) for i in filled]).reshape(-1, 3)
    centres = 0.5 * (edges[:-1] + edges[1:])[filled]
    right.fill_between(centres, q[:, 0], q[:, 2], alpha=0.3, label="interquartile range")
    right.plot(centres, q[:, 1], "o-", label="median")
    right.axhline(1.0, color="gray", lw=0.8)
    right.set(xlabel="true value", ylabel="response", title="response in deciles of the true value")
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_evaluation(out, title, result, values, class_names):
    """predictions.npz, metrics.json (`values`, the `resolution_metrics`), regression.md and response.png of a
    regression run's test predictions (`feeding.run_eval`'s result) in the folder `out`."""
    predictions, targets, labels = result["predictions"], result["targets"], result["labels"]
    np.savez_compressed(out / "predictions.npz", predictions=predictions.astype(np.float32),
                        targets=targets.astype(np.float32), labels=labels,
                        embeddings=result.get("embeddings", np.zeros((0,))))
    metrics.write_json(out / "metrics.json", values)
    text = table(title, values)
    (out / "regression.md").write_text(text + "\n")
    response_figure(predictions, targets, labels, class_names, out / "response.png", title)
    print(text)
