"""The study's Tables 1-4 (Markdown, CSV, JSON), ROC curves and the t-SNE figure, from evaluated runs; a run's
training curves from its metrics.jsonl.

`results` maps a run name (a table row, e.g. "Ours (SupCon)") to the dict `metrics.evaluate` returned
(or `metrics.read_json` read back). Markdown and CSV hold the values formatted as the study prints them
(3 decimals; rejections as integers; 'inf' / 'nan' spelled out); JSON holds the full-precision values.
Column headers use the class names of the results, or `titles` (class name -> printed title) if given.
"""
import csv
import re
from pathlib import Path

import numpy as np

from jetjax.metrics import write_json

GLOBAL_COLUMNS = {"Accuracy": "accuracy", "Macro AUC": "macro_auc", "Micro AUC": "micro_auc",
                  "Macro-F1": "macro_f1"}
"""Table 1's columns: printed name -> key of the evaluate dict."""
HEADLINE_METRICS = {"macro_auc": "Macro AUC", "accuracy": "Accuracy"}
"""The two test metrics the efficiency and scaling studies report per run: key of the evaluate dict -> title."""


def _check_same_classes(results):
    if not results:
        raise ValueError("no evaluated runs to report")
    first_run, first = next(iter(results.items()))
    for run, result in results.items():
        for key in ("class_names", "background"):
            if result[key] != first[key]:
                raise ValueError(f"run {run!r} has {key} {result[key]!r} but run {first_run!r} has "
                                 f"{first[key]!r}; compare runs evaluated on the same classes")
    return first["class_names"], first["signal_classes"]


def study_tables(results, titles=None):
    """The study's four tables: a list of dicts with name, caption, columns (first 'Method'), rows
    (run name then raw values) and decimals (how many the study prints)."""
    class_names, signal_classes = _check_same_classes(results)
    titles = titles or {}

    def per_class(key, prefix, classes, caption, name, decimals):
        columns = ["Method"] + [f"{prefix}_{titles.get(c, c)}" for c in classes]
        rows = [[run] + [r["per_class"][c][key] for c in classes] for run, r in results.items()]
        return {"name": name, "caption": caption, "columns": columns, "rows": rows, "decimals": decimals}

    return [
        {"name": "table1_global", "caption": "Table 1: Global metrics on the test set.",
         "columns": ["Method"] + list(GLOBAL_COLUMNS), "decimals": 3,
         "rows": [[run] + [r[key] for key in GLOBAL_COLUMNS.values()] for run, r in results.items()]},
        per_class("auc", "AUC", class_names, "Table 2: Per-class one-vs-rest ROC-AUC on the test set.",
                  "table2_auc", 3),
        per_class("rejection", "Rej", signal_classes, "Table 3: Per-class one-vs-rest background rejection "
                  f"(Rej = 1/eps_B) at eps_S = {_working_point(results, 'rejection_at_signal_efficiency')}"
                  " on the test set.", "table3_rejection", 0),
        per_class("signal_efficiency", "eps_S", signal_classes, "Table 4: Per-class one-vs-rest signal "
                  "efficiency (eps_S) at background efficiency eps_B = "
                  f"{_working_point(results, 'signal_efficiency_at_background_efficiency')} on the test set.",
                  "table4_signal_efficiency", 3),
    ]


def _working_point(results, key):
    values = {r["working_points"][key] for r in results.values()}
    if len(values) != 1:
        raise ValueError(f"runs were evaluated at different working points {key}={sorted(values)}")
    return f"{values.pop():g}"


def format_value(value, decimals):
    """A table cell as the study prints it: fixed decimals, 'inf' / 'nan' for non-finite values."""
    return f"{value:.{decimals}f}" if np.isfinite(value) else str(float(value))


def _formatted_rows(table):
    return [[row[0]] + [format_value(v, table["decimals"]) for v in row[1:]] for row in table["rows"]]


def pipe_table(caption, columns, cells):
    """Markdown: the caption, then a pipe table of formatted `cells` (first column left-aligned, others right)."""
    lines = [caption, "", "| " + " | ".join(columns) + " |", "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def write_csv(path, columns, cells):
    """A table as CSV: the header row `columns`, then the formatted `cells`."""
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([columns] + cells)


def to_markdown(table):
    """The table as Markdown: its caption, then a pipe table."""
    return pipe_table(table["caption"], table["columns"], _formatted_rows(table))


def write_tables(results, folder, titles=None):
    """Write each table as <name>.md, <name>.csv and <name>.json into `folder`, plus all four in
    tables.md; return the Markdown of Table 1."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tables = study_tables(results, titles)
    for table in tables:
        (folder / f"{table['name']}.md").write_text(to_markdown(table))
        write_csv(folder / f"{table['name']}.csv", table["columns"], _formatted_rows(table))
        write_json(folder / f"{table['name']}.json",
                   {"caption": table["caption"], "columns": table["columns"], "rows": table["rows"]})
    (folder / "tables.md").write_text("\n".join(to_markdown(t) for t in tables))
    return to_markdown(tables[0])


def _file_name(text):
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_roc_curves(results, folder, titles=None):
    """One PNG per signal class, roc_<class>.png: background rejection (log) against signal efficiency,
    one line per run. Points where no background passes (infinite rejection) are left out."""
    plt = pyplot()
    _, signal_classes = _check_same_classes(results)
    titles = titles or {}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in signal_classes:
        fig, ax = plt.subplots(figsize=(5, 4))
        for run, result in results.items():
            eps_s = np.array(result["roc"][name]["signal_efficiency"], dtype=float)
            eps_b = np.array(result["roc"][name]["background_efficiency"], dtype=float)
            passed = eps_b > 0
            ax.plot(eps_s[passed], 1 / eps_b[passed], label=run)
        ax.set(yscale="log", xlabel="signal efficiency $\\epsilon_S$", ylabel="background rejection $1/\\epsilon_B$",
               title=f"{titles.get(name, name)} vs rest")
        ax.legend(fontsize="small")
        path = folder / f"roc_{_file_name(name)}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def plot_tsne(embeddings, class_names, path, max_points=2000, seed=0):
    """t-SNE of embeddings coloured by class, one panel per run (the study's Figure 1).

    `embeddings` maps run name -> (features (M, D), labels (M,)); each run is subsampled to at most
    `max_points` jets without replacement with a generator seeded by `seed`, as is the t-SNE itself."""
    from sklearn.manifold import TSNE  # here: importing it costs every run ~1 s, and only the study draws it

    plt = pyplot()
    fig, axes = plt.subplots(1, len(embeddings), figsize=(5 * len(embeddings), 5), squeeze=False)
    for ax, (run, (features, labels)) in zip(axes[0], embeddings.items()):
        features, labels = np.asarray(features), np.asarray(labels)
        if len(features) != len(labels) or len(features) < 3:
            raise ValueError(f"run {run!r}: need at least 3 embeddings with one label each, got "
                             f"{len(features)} embeddings and {len(labels)} labels")
        keep = np.random.default_rng(seed).choice(len(features), min(len(features), max_points), replace=False)
        points = TSNE(perplexity=min(30.0, len(keep) - 1.0), init="pca", random_state=seed).fit_transform(
            features[keep].reshape(len(keep), -1).astype(np.float32))
        for k, name in enumerate(class_names):
            chosen = labels[keep] == k
            ax.scatter(points[chosen, 0], points[chosen, 1], s=3, label=name)
        ax.set(title=run, xticks=[], yticks=[])
    axes[0, -1].legend(markerscale=4, fontsize="small", loc="center left", bbox_to_anchor=(1, 0.5))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def read_metrics_log(path):
    """A run's metrics.jsonl (jetjax.train.MetricsLog) by split: {split: {key: values in record order}};
    a key a record lacks is NaN there."""
    import json

    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path} holds no records: has the run trained a step yet?")
    splits = {}
    for record in records:
        splits.setdefault(record["split"], []).append(record)
    return {split: {key: np.array([r.get(key, np.nan) for r in rows], dtype=float)
                    for key in dict.fromkeys(k for r in rows for k in r if k != "split")}
            for split, rows in splits.items()}


def plot_training_curves(metrics_log, path):
    """PNG of a run's curves against the training step: training and validation loss (left), the validation
    quantity that selects the best checkpoint (`val_*`, right). `metrics_log`: the run's metrics.jsonl."""
    plt = pyplot()
    log = read_metrics_log(metrics_log)
    train, val = log.get("train", {}), log.get("val", {})
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, split in (("training", train), ("validation", val)):
        if "loss" in split:
            loss_ax.plot(split["step"], split["loss"], marker="o" if name == "validation" else None, label=name)
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    loss_ax.legend()
    for key in (k for k in val if k.startswith("val_")):
        val_ax.plot(val["step"], val[key], marker="o", label=key)
    val_ax.set(xlabel="step", title="validation selection")
    val_ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
