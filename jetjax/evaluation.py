"""Mode 'evaluate': the best checkpoint of a classifier run on the natural test stream, with its predictions,
metrics and the study's tables in the run's `evaluation/` folder (classifier runs end with it, jetjax/train.py)."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import defaults
from jetjax import metrics, parallel, regression, report
from jetjax.build import build_model, data_settings, micro_batch_size
from jetjax.checkpoint import best_checkpoint
from jetjax.data import pipeline
from jetjax.data.classes import task_scheme
from jetjax.feeding import Feeder, layout_settings, run_eval
from jetjax.steps import TrainState, make_eval_step


def trained_classifier(run, mesh, key):
    """(the run's config in mode 'evaluate', its model, its best state replicated on `mesh`) of the classifier
    workdir `run`; errors name the config `key`."""
    restored = best_checkpoint(run, key)
    run_config = ml_collections.ConfigDict(json.loads((Path(run) / "config.json").read_text()))
    run_config.mode = "evaluate"
    model = build_model(run_config)
    variables = jax.tree.map(jnp.asarray, {k: restored[k] for k in ("params", "batch_stats")})
    state = parallel.replicate(TrainState(**variables, opt_state=(), step=jnp.asarray(restored["step"]),
                                          key=jax.random.key(run_config.seed)), mesh)
    return run_config, model, state


def evaluate(config, workdir):
    """The best checkpoint of the classifier run in `config.evaluate.run` (default `workdir`) on the natural
    test stream: writes predictions.npz (scores, labels, embeddings of the first jets), metrics.json and
    the study's tables (tables.md, the Markdown summary, and each table as .md/.csv/.json) into that run's
    `evaluation/` folder, and returns the metrics; for a regression task, its figures and response plot
    (`regression.write_evaluation`)."""
    run = Path(config.evaluate.run or workdir)
    mesh = parallel.data_mesh()
    run_config, model, state = trained_classifier(run, mesh, "evaluate.run")
    run_config.data.root = config.data.root or run_config.data.root
    batch_size = micro_batch_size(run_config)
    scheme = task_scheme(run_config.data)
    data = data_settings(run_config, run)
    layout = layout_settings(run_config)
    result = run_eval(state, make_eval_step(model), Feeder(model, mesh, run_config.data.num_particles, layout),
                      pipeline.test_batches(**data, batch_size=batch_size), batch_size, layout.eval_window,
                      keep_embeddings=config.evaluate.embeddings)
    saved = json.loads((run / "config.json").read_text())
    title = defaults.value(saved, "evaluate.title") or run_title(saved)
    regressed = "predictions" in result  # a regression task (jetjax/regression.py)
    values = (regression.resolution_metrics(result["predictions"], result["targets"], result["labels"], scheme.names)
              if regressed else metrics.evaluate(result["scores"], result["labels"], scheme.names,
                                                 background=scheme.background))
    if not parallel.is_main_process():
        return values
    out = run / "evaluation"
    out.mkdir(exist_ok=True)
    if regressed:
        regression.write_evaluation(out, title, result, values, scheme.names)
        return values
    np.savez_compressed(out / "predictions.npz", scores=result["scores"].astype(np.float32),
                        labels=result["labels"], embeddings=result.get("embeddings", np.zeros((0,))))
    metrics.write_json(out / "metrics.json", values)
    print(report.write_tables({title: values}, out, titles=dict(zip(scheme.names, scheme.titles))))
    return values


MODE_TITLES = {"supervised": "Supervised", "finetune": "Fine-tuned", "probe": "Linear probe"}


def run_title(saved):
    """The row name of a classifier run's tables from its saved config (a dict) when `evaluate.title` is unset:
    what trained it, e.g. 'Fine-tuned (adapter), 100 labels'."""
    title = MODE_TITLES.get(saved["mode"], saved["mode"])
    if saved["mode"] == "finetune":
        title += f" ({defaults.section(saved, 'finetune').method})"
    budget = defaults.value(saved, "data.label_budget")
    return f"{title}, {budget} labels" if budget else title
