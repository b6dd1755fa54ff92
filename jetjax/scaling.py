"""The scaling study (config mode `scaling`): one pretraining objective at several encoder sizes on the same
data and the same budget, the validation loss against the number of encoder parameters with a fitted power
law, and the macro AUC of a classifier fine-tuned on each pretrained encoder (seed 003's question: does
pretraining keep paying as the backbone grows?).

For every size of `scaling.sizes` (names of the ladder of configs/sizes.py, smallest first) a run
`<size>_pretrain` trains `scaling.objective` for `scaling.pretrain_epochs` on every training jet without
its label, then `<size>_finetune` trains a classifier on that encoder (`finetune.method`: 'full', or
'adapter' for seed 003's frozen backbone + adapter) for `scaling.finetune_epochs` and is evaluated on the
natural test stream. Every run shares the config's data, seed, optimiser, batch size and `data.epoch_size`,
so every size sees the same jets in the same order for the same number of steps; only the model differs.

Report (`report/scaling.md`, .csv, .json, scaling.png): per size the encoder parameters N (the ParT encoder
alone: no objective head, projector or classifier), the best validation loss L of its pretraining, the
fine-tuned test macro AUC and accuracy, and the least-squares fit of log L = log a - alpha log N (a pure
power law: with 2 sizes it passes through both points exactly, its quality is only judged from 3 on).
Stages are skipped when done and resumed when interrupted (jetjax.study.run_stages).
"""
import json
from pathlib import Path

import numpy as np

from configs import sizes
from jetjax import metrics, regression, study
from jetjax.checkpoint import stored_record
from jetjax.data.features import FEATURE_SETS
from jetjax.models.sizes import encoder_parameters
from jetjax.report import HEADLINE_METRICS as METRICS, format_value, pipe_table, pyplot, write_csv



def _check_settings(config):
    names = list(config.scaling.sizes)
    unknown = [n for n in names if n not in sizes.SIZES]
    if unknown:
        raise ValueError(f"scaling.sizes names {unknown[0]!r}; choose from {', '.join(sizes.SIZES)}")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"scaling.sizes={tuple(names)}: give at least two different sizes to fit a power law")
    if config.scaling.objective.name == "supervised":
        raise ValueError("scaling.objective.name='supervised': the scaling study pretrains a label-free or "
                         "contrastive objective (e.g. mpm, jetclr)")


def stages(config, workdir):
    """[(stage name, size for a fine-tuning run or None for a pretraining run, run config)] in running order."""
    _check_settings(config)
    regression.refuse_in_study(config)
    scaling, result = config.scaling, []
    for size in scaling.sizes:
        pretrain = sizes.with_size(study.run_config(config, "pretrain", scaling.pretrain_epochs), size)
        pretrain.objective = scaling.objective.copy_and_resolve_references()
        result.append((f"{size}_pretrain", None, pretrain))
        if scaling.finetune_epochs:
            finetune = sizes.with_size(study.run_config(config, "finetune", scaling.finetune_epochs), size)
            finetune.train.init_from = str(Path(workdir) / f"{size}_pretrain")
            finetune.evaluate.title = f"{scaling.objective.name} {size}, fine-tuned"
            result.append((f"{size}_finetune", size, finetune))
    return result


def best_validation_loss(run):
    """The best (lowest) validation loss recorded by the pretraining run `run`."""
    record = stored_record(run, "best")
    if record is None or record["selection"] != "val_loss":
        raise FileNotFoundError(f"{run} has no best pretraining checkpoint selected on the validation loss")
    return float(record["best"])


def fit_power_law(parameters, losses):
    """(a, alpha) of L = a N^-alpha, least squares in log-log. Every loss must be positive."""
    parameters, losses = np.asarray(parameters, float), np.asarray(losses, float)
    if np.any(losses <= 0) or not np.all(np.isfinite(losses)):
        raise ValueError(f"validation losses {losses.tolist()}: a power law needs positive finite losses "
                         "(choose an objective whose loss is positive, e.g. mpm, jetclr)")
    slope, intercept = np.polyfit(np.log(parameters), np.log(losses), 1)
    return float(np.exp(intercept)), float(-slope)


def run(config, workdir):
    """Run (or continue) the study in `workdir`; returns the report dict, or None when a stage was stopped by a
    signal (the same command continues it)."""
    workdir = Path(workdir)
    plan = stages(config, workdir)
    if not study.run_stages(config, workdir, plan):
        return None
    rows = []
    for size in config.scaling.sizes:
        model = {**config.model, **sizes.SIZES[size]}
        row = {"size": size, "parameters": encoder_parameters(model, len(FEATURE_SETS[config.data.feature_set])),
               "val_loss": best_validation_loss(workdir / f"{size}_pretrain")}
        if config.scaling.finetune_epochs:
            values = metrics.read_json(workdir / f"{size}_finetune" / "evaluation" / "metrics.json")
            row.update({k: values[k] for k in METRICS})
        rows.append(row)
    return write_report(rows, config.scaling.objective.name, workdir / "report")


def write_report(rows, objective, out):
    """scaling.md / .csv / .json and scaling.png into `out` from one row per size (size, parameters, val_loss and,
    when fine-tuned, the METRICS); prints the Markdown. Returns the report dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: r["parameters"])
    a, alpha = fit_power_law([r["parameters"] for r in rows], [r["val_loss"] for r in rows])
    tuned = [k for k in METRICS if k in rows[0]]
    columns = ["Size", "Encoder parameters", f"Best val. loss ({objective})", "Power-law fit"] + [
        f"Fine-tuned {METRICS[k]}" for k in tuned]
    cells = [[r["size"], f"{r['parameters']:,}", format_value(r["val_loss"], 4),
              format_value(a * r["parameters"] ** -alpha, 4)] + [format_value(r[k], 3) for k in tuned] for r in rows]
    fit = f"L = {a:.4g} N^({-alpha:+.4f}) (least squares in log-log over {len(rows)} sizes)"
    caption = (f"Scaling: {objective} pretraining at {len(rows)} encoder sizes on the same data and budget; "
               f"fit {fit}.")
    markdown = pipe_table(caption, columns, cells)
    (out / "scaling.md").write_text(markdown)
    write_csv(out / "scaling.csv", columns, cells)
    result = {"caption": caption, "objective": objective, "power_law": {"a": a, "alpha": alpha}, "rows": rows}
    (out / "scaling.json").write_text(json.dumps(result, indent=2))
    plot(rows, a, alpha, tuned, objective, out / "scaling.png")
    print(markdown)
    print(f"scaling report: {out}")
    return result


def plot(rows, a, alpha, tuned, objective, path):
    """Left: validation loss against encoder parameters (log-log) with the fitted power law; right (when
    fine-tuned): the test metrics against the parameters (log x)."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 1 + bool(tuned), figsize=(5 * (1 + bool(tuned)), 4), squeeze=False)
    n = np.array([r["parameters"] for r in rows], float)
    line = np.geomspace(n.min() / 1.5, n.max() * 1.5, 50)
    axis = axes[0, 0]
    axis.plot(n, [r["val_loss"] for r in rows], "o", label="best validation loss")
    axis.plot(line, a * line ** -alpha, "--", label=rf"fit $L = {a:.3g}\,N^{{{-alpha:+.3f}}}$")
    for r in rows:
        axis.annotate(r["size"], (r["parameters"], r["val_loss"]), textcoords="offset points", xytext=(4, 4))
    axis.set(xscale="log", yscale="log", xlabel="encoder parameters N", ylabel=f"validation loss ({objective})")
    axis.legend()
    if tuned:
        for key in tuned:
            axes[0, 1].plot(n, [r[key] for r in rows], "o-", label=f"test {METRICS[key]}")
        axes[0, 1].set(xscale="log", xlabel="encoder parameters N", ylabel="fine-tuned classifier")
        axes[0, 1].legend()
    for axis in axes[0]:
        axis.grid(alpha=0.3, which="both")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
