"""The study (§2-4): every objective trained and evaluated under the same settings, then compared.

For each pretraining objective of `study.objectives`: pretrain -> fine-tune a 7-way classifier on its
encoder -> evaluate on the natural test stream; for each supervised reference of `study.supervised`:
train -> evaluate. Every run takes the study config's data, seed, model, optimiser, schedule and batch
size; only what defines the method changes (the objective, "Ours"'s model changes, Muon). Then the
study's Tables 1-4, the ROC curves and the t-SNE of validation embeddings (Figure 1).

The study workdir holds `data/` (when the data are synthetic), one run workdir per stage (`ours/`,
`supcon_pretrain/`, `supcon_finetune/`, ...; the tokenizer `mpm_vq_tokenizer/` before `mpm_vq_pretrain/`)
and `report/`. A stage whose results exist is skipped (a classifier with `evaluation/metrics.json`, a
pretraining run whose last checkpoint completed its epochs), an unfinished one resumes, so running the same
command again continues an interrupted study.
"""
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jetjax import build, checkpoint, metrics, optim, probe, regression, report, train
from jetjax.checkpoint import stored_record
from jetjax.data import pipeline
from jetjax.data.classes import task_scheme

METHODS = {"ours": "Ours (Supervised)", "ours_muon": "Ours (Muon)", "supcon": "Ours (SupCon)", "part": "ParT",
           "clipvae": "CLIP-VAE", "jetclr": "JetCLR", "mpm": "MPM", "mpm_vq": "MPM (VQ-VAE tokens)",
           "mpm_kmeans": "MPM (K-means)", "vicreg": "VICReg", "simsiam": "SimSiam", "moco": "MoCo",
           "jepa": "JEPA"}
"""Method -> table row, in the study's row order."""
SUPERVISED = ("ours", "ours_muon", "part")
OBJECTIVES = ("supcon", "clipvae", "jetclr", "mpm", "mpm_vq", "mpm_kmeans", "vicreg", "simsiam", "moco", "jepa")
TOKENIZERS = {"mpm_vq": "vqvae"}
"""Objective -> the tokenizer objective trained before it (stage '<objective>_tokenizer', study.pretrain_epochs,
settings study.objective_settings[tokenizer]), whose tokens are its targets (objective.tokenizer_run)."""


def method(stage):
    """The method of a stage name: 'supcon' for 'supcon_pretrain' and 'supcon_finetune'."""
    return stage.removesuffix("_pretrain").removesuffix("_finetune")


def stage_title(stage):
    """A stage as a figure title: its table row, or '<row>, pretrained encoder' for a pretraining run."""
    title = METHODS[method(stage)]
    return f"{title}, pretrained encoder" if stage.endswith("_pretrain") else title


STUDY_SECTIONS = ("study", "efficiency", "scaling")
"""Config sections that describe several runs (jetjax.study, jetjax.efficiency, jetjax.scaling), never one run."""


def run_config(config, mode, epochs):
    """The study config as the config of one run: `mode`, `epochs`, no section of STUDY_SECTIONS."""
    c = ml_collections.ConfigDict({k: v for k, v in config.to_dict().items() if k not in STUDY_SECTIONS})
    c.mode = mode
    c.train.epochs = epochs
    return c


def stages(config, workdir):
    """[(stage name, table row or None for a pretraining run, run config)] in the order they run."""
    study, workdir = config.study, Path(workdir)
    regression.refuse_in_study(config)
    for key, names, known in (("study.supervised", study.supervised, SUPERVISED),
                              ("study.objectives", study.objectives, OBJECTIVES)):
        for name in names:
            if name not in known:
                raise ValueError(f"{key} names {name!r}; choose from {', '.join(known)}")
    result = []
    for name in study.supervised:
        c = run_config(config, "supervised", config.train.epochs)
        if name in ("ours", "ours_muon"):
            c.model.update(study.ours_model)
        if name == "ours_muon":
            c.optimizer.update(dict(name="muon", muon_learning_rate=study.muon_learning_rate))
        c.evaluate.title = METHODS[name]
        result.append((name, METHODS[name], c))
    for name in study.objectives:
        pretrain = run_config(config, "pretrain", study.pretrain_epochs)
        pretrain.objective = ml_collections.ConfigDict(dict(name=name, **study.objective_settings[name]))
        finetune = run_config(config, "finetune", study.finetune_epochs)
        finetune.train.init_from = str(workdir / f"{name}_pretrain")
        finetune.evaluate.title = METHODS[name]
        if name in TOKENIZERS:
            tokenizer = run_config(config, "pretrain", study.pretrain_epochs)
            tokenizer.objective = ml_collections.ConfigDict(
                dict(name=TOKENIZERS[name], **study.objective_settings[TOKENIZERS[name]]))
            pretrain.objective.tokenizer_run = str(workdir / f"{name}_tokenizer")
            result.append((f"{name}_tokenizer", None, tokenizer))
        result += [(f"{name}_pretrain", None, pretrain), (f"{name}_finetune", METHODS[name], finetune)]
    missing = [n for n in study.tsne if n not in [stage for stage, _, _ in result]]
    if missing:
        raise ValueError(f"study.tsne names {missing[0]!r}, not a stage of this study; choose from "
                         f"{', '.join(stage for stage, _, _ in result)}")
    return result


def is_done(run, row, epochs):
    """A classifier is done once evaluated; a pretraining run once its last checkpoint completed `epochs`."""
    if row is not None:
        return (run / "evaluation" / "metrics.json").exists()
    if not (run / "checkpoints").exists():
        return False
    record = stored_record(run, "latest")
    return record is not None and record["epoch"] >= epochs


def validation_sample(run_config, run, num_jets):
    """Batches of the first `num_jets` (rounded up to whole batches of the run) of the balanced validation sample
    of the workdir `run` with config `run_config`: the jets its validations saw."""
    batch_size = run_config.train.batch_size
    return pipeline.validation_batches(**build.data_settings(run_config, run), batch_size=batch_size,
                                       num_jets=-(-num_jets // batch_size) * batch_size, seed=run_config.seed + 1)


def validation_embeddings(run, num_jets):
    """The representation z of the best checkpoint of the workdir `run` (any mode) for the first `num_jets`
    jets of its balanced validation sample, with their labels: the encoder alone, eval mode, no views."""
    run_config = ml_collections.ConfigDict(json.loads((Path(run) / "config.json").read_text()))
    restored = checkpoint.best_checkpoint(run, "study.tsne")
    encoder = build.build_model(run_config).encoder
    variables = {"params": restored["params"]["encoder"], "batch_stats": restored["batch_stats"]["encoder"]}
    variables = jax.tree.map(jnp.asarray, variables)
    embed = jax.jit(lambda v, b: encoder.apply(v, b["features"], b["vectors"], b["mask"])["z"])
    z, labels = [], []
    for batch in validation_sample(run_config, run, num_jets):
        z.append(np.asarray(embed(variables, batch)))
        labels.append(batch["label"])
    return np.concatenate(z)[:num_jets], np.concatenate(labels)[:num_jets]


def run(config, workdir):
    """Run (or continue) the study in `workdir`; returns the evaluated metrics by table row, or None when
    a stage was stopped by a signal (the same command continues it)."""
    workdir = Path(workdir)
    plan = stages(config, workdir)
    if not run_stages(config, workdir, plan):
        return None
    evaluated = {method(name): name for name, row, _ in plan if row is not None}
    results = {METHODS[m]: metrics.read_json(workdir / evaluated[m] / "evaluation" / "metrics.json")
               for m in METHODS if m in evaluated}
    return write_report(config, workdir, results)


def run_stages(config, workdir, plan):
    """Train the stages of `plan` ([(name, row, run config)]) in `workdir/<name>`: finished ones skipped, an
    unfinished one resumed. Stages that read the study's data (`data.root` as in `config`) share one data
    set (synthetic: made once in `workdir/data`). False when a stage was stopped by a signal."""
    for _, _, c in plan:  # a wrong model, probe or optimiser setting of any stage fails before any work
        build.build_model(c)
        if c.mode == "probe":
            probe.probe_settings(c)
        optim.make_optimizer(c.train.epochs * (c.data.epoch_size // c.train.batch_size), **c.optimizer)
    data = build.data_settings(config, workdir)
    for name, row, c in plan:
        if c.data.root == config.data.root:
            c.data.update(dict(root=data["root"], synthetic_jets_per_group=0))
        if is_done(workdir / name, row, c.train.epochs):
            print(f"study: {name} done, skipped")
            continue
        print(f"study: {name} ({c.mode}, {c.train.epochs} epochs)")
        start = time.perf_counter()
        record = (probe.fit if c.mode == "probe" else train.fit)(c, workdir / name)
        if record["epoch"] < c.train.epochs:
            print(f"study stopped in {name}; run the same command to continue")
            return False
        print(f"study: {name} finished in {time.perf_counter() - start:.0f} s")
    return True


def write_report(config, workdir, results):
    """Tables 1-4, ROC curves and the t-SNE figure into `workdir/report`; prints Table 1."""
    scheme = task_scheme(config.data)
    titles = dict(zip(scheme.names, scheme.titles))
    out = Path(workdir) / "report"
    table1 = report.write_tables(results, out, titles)
    report.plot_roc_curves(results, out, titles)
    if config.study.tsne:
        embeddings = {stage_title(n): validation_embeddings(workdir / n, config.study.tsne_points)
                      for n in config.study.tsne}
        report.plot_tsne(embeddings, scheme.names, out / "tsne.png", config.study.tsne_points, config.seed)
    print(table1)
    print(f"study report (Tables 1-4, ROC curves, t-SNE): {out}")
    return results
