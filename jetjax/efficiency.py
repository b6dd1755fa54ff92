"""The data-efficiency study (config mode `efficiency`): how the test macro AUC and accuracy of a classifier
grow with the number of labelled training jets, for a classifier trained from scratch and for the ways of
reusing a pretrained encoder, over several seeds.

For every method of `efficiency.methods`, label budget of `efficiency.budgets` and seed of `efficiency.seeds`
one classifier run trains on the first `budget` jets of the training split's labelled order for that seed
(`data.label_budget`, jetjax.data.labelled: nested, so a larger budget holds the smaller one, and the same
jets for every method) and is evaluated on the natural test stream. Methods are config values only:

  scratch   mode 'supervised': a randomly initialised encoder and head
  probe     mode 'probe': a logistic regression on the frozen encoder's representation (jetjax.probe)
  finetune  mode 'finetune' (finetune.method 'full' where the config has a finetune section): every weight
  adapter   mode 'finetune', finetune.method 'adapter': the pretrained backbone frozen, an adapter head
  lora      mode 'finetune', finetune.method 'lora': the pretrained weights frozen, low-rank updates of the
            blocks' projections and the head train (jetjax/finetune.py)

The pretrained encoder is the best checkpoint of `efficiency.pretrained` (any jetjax workdir with a ParT
encoder of the same shape), or, when that is unset, of a pretraining stage `pretrain/` run here first with
`efficiency.objective` for `efficiency.pretrain_epochs` on every training jet without its label (its data:
`data` with the overrides of `efficiency.pretrain_data`, e.g. another data set for transfer). Every
classifier run shares the config's model, optimiser, batch size, `train.epochs` and `data.epoch_size` (the
same number of steps for every budget: a small subset is passed over many times) and selects its best
checkpoint on the balanced validation sample of `data.val_size` jets (labels a real small-label analysis
might not have; the same for every method).

The workdir holds `pretrain/`, one run per `<method>/n<budget>/seed<seed>/` and `report/` (efficiency.md,
.csv, .json: mean and standard deviation over seeds; efficiency.png: both metrics against the budget).
Stages are skipped when done and resumed when interrupted (jetjax.study.run_stages).
"""
import json
from pathlib import Path

import ml_collections
import numpy as np

from jetjax import metrics, regression, study
from jetjax.data import pipeline
from jetjax.report import HEADLINE_METRICS as METRICS, format_value, pipe_table, pyplot, write_csv

METHODS = {"scratch": ("supervised", None), "probe": ("probe", None), "finetune": ("finetune", "full"),
           "adapter": ("finetune", "adapter"), "lora": ("finetune", "lora")}
"""Method -> (config.mode, config.finetune.method or None)."""
TITLES = {"scratch": "From scratch", "probe": "Linear probe", "finetune": "Full fine-tune",
          "adapter": "Frozen + adapter", "lora": "LoRA fine-tune"}


def run_name(method, budget, seed):
    return f"{method}/n{budget}/seed{seed}"


def _check_settings(config):
    eff = config.efficiency
    unknown = [m for m in eff.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"efficiency.methods names {unknown[0]!r}; choose from {', '.join(METHODS)}")
    bad = [b for b in eff.budgets if not (float(b) >= 1 and float(b) == int(b))]
    if bad or not eff.budgets:
        raise ValueError(f"efficiency.budgets={tuple(eff.budgets)}: give whole numbers of labelled jets (>= 1)")
    if not eff.seeds:
        raise ValueError("efficiency.seeds is empty: give at least one seed")
    wrong = [k for k in eff.pretrain_data if k not in config.data]
    if wrong:
        raise ValueError(f"efficiency.pretrain_data.{wrong[0]} is not a key of config.data")


def pretrain_config(config):
    """The pretraining stage: every training jet, no labels used, `efficiency.pretrain_data` applied."""
    eff = config.efficiency
    c = study.run_config(config, "pretrain", eff.pretrain_epochs)
    c.objective = ml_collections.ConfigDict(eff.objective.to_dict())
    c.data = pipeline.with_overrides(c.data, eff.pretrain_data)
    c.data.label_budget = 0
    return c


def stages(config, workdir):
    """[(stage name, (method, budget, seed) or None for the pretraining run, run config)] in running order."""
    _check_settings(config)
    regression.refuse_in_study(config)
    eff, workdir = config.efficiency, Path(workdir)
    reuses = any(METHODS[m][0] != "supervised" for m in eff.methods)
    result = []
    if reuses and not eff.pretrained:
        result.append(("pretrain", None, pretrain_config(config)))
    encoder = eff.pretrained or str(workdir / "pretrain")
    for method in eff.methods:
        mode, finetune_method = METHODS[method]
        for budget in eff.budgets:
            for seed in eff.seeds:
                c = study.run_config(config, mode, config.train.epochs)
                c.seed, c.data.label_budget = int(seed), int(budget)
                c.evaluate.title = f"{TITLES[method]}, {int(budget)} labels, seed {int(seed)}"
                if mode != "supervised":
                    c.train.init_from = encoder
                if mode == "probe":
                    c.model.head = "linear"  # the linear probe
                if finetune_method is not None and "finetune" in c:
                    c.finetune.method = finetune_method
                result.append((run_name(method, int(budget), int(seed)), (method, int(budget), int(seed)), c))
    return result


def run(config, workdir):
    """Run (or continue) the study in `workdir`; returns the summary rows, or None when a stage was stopped by
    a signal (the same command continues it)."""
    workdir = Path(workdir)
    plan = stages(config, workdir)
    if not study.run_stages(config, workdir, plan):
        return None
    runs = []
    for name, row, _ in plan:
        if row is not None:
            values = metrics.read_json(workdir / name / "evaluation" / "metrics.json")
            runs.append(dict(zip(("method", "budget", "seed"), row), **{k: values[k] for k in METRICS}))
    return write_report(runs, workdir / "report")


def summarise(runs):
    """One row per (method, budget) in the runs' order: mean and standard deviation over seeds (ddof=1; 0 for
    a single seed) of every metric."""
    rows = []
    for method in dict.fromkeys(r["method"] for r in runs):
        for budget in sorted({r["budget"] for r in runs if r["method"] == method}):
            group = [r for r in runs if r["method"] == method and r["budget"] == budget]
            row = dict(method=method, budget=budget, seeds=len(group))
            for key in METRICS:
                values = np.array([r[key] for r in group])
                row[key] = float(values.mean())
                row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            rows.append(row)
    return rows


def gain_over_scratch(rows):
    """Lines 'method at N labels: macro AUC difference to scratch +- combined std' for every budget that scratch
    shares with a pretrained method."""
    scratch = {r["budget"]: r for r in rows if r["method"] == "scratch"}
    lines = []
    for r in rows:
        base = scratch.get(r["budget"])
        if r["method"] != "scratch" and base is not None:
            difference = r["macro_auc"] - base["macro_auc"]
            spread = np.hypot(r["macro_auc_std"], base["macro_auc_std"])
            lines.append(f"{TITLES[r['method']]} at {r['budget']} labels: macro AUC {difference:+.3f} +- "
                         f"{spread:.3f} against from scratch")
    return lines


def write_report(runs, out):
    """efficiency.md / .csv / .json (rows, gains and every run) and efficiency.png into `out`; prints the
    Markdown. Returns the rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(runs)
    columns = ["Method", "Labels", "Seeds"] + [f"{t}{s}" for t in METRICS.values() for s in ("", " std")]
    cells = [[TITLES[r["method"]], str(r["budget"]), str(r["seeds"])]
             + [format_value(r[f"{k}{s}"], 3) for k in METRICS for s in ("", "_std")] for r in rows]
    gains = gain_over_scratch(rows)
    caption = "Data efficiency: test metrics against the number of labelled training jets (mean and std over seeds)."
    markdown = pipe_table(caption, columns, cells) + "".join(f"\n- {g}" for g in gains) + "\n"
    (out / "efficiency.md").write_text(markdown)
    write_csv(out / "efficiency.csv", columns, cells)
    (out / "efficiency.json").write_text(json.dumps({"caption": caption, "rows": rows, "gain_over_scratch": gains,
                                                     "runs": runs}, indent=2))
    plot(rows, out / "efficiency.png")
    print(markdown)
    print(f"efficiency report: {out}")
    return rows


def plot(rows, path):
    """Macro AUC and accuracy against the labelled jets (log x), one line per method, error bars = std over
    seeds."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4))
    for axis, (key, title) in zip(axes, METRICS.items()):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            axis.errorbar([r["budget"] for r in mine], [r[key] for r in mine], yerr=[r[f"{key}_std"] for r in mine],
                          marker="o", capsize=3, label=TITLES[method])
        axis.set(xscale="log", xlabel="labelled training jets", ylabel=f"test {title}")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
