"""The linear probe (mode 'probe'): a logistic regression on a frozen encoder's representation, fitted to
convergence, not a few optimizer steps of a head.

1. The encoder of `train.init_from` (eval mode: running BatchNorm statistics, no dropout) embeds the training
   jets, `z` of the class token: with `data.label_budget` N each of the N labelled jets once, otherwise the
   first epoch of the training sampler (`data.epoch_size` jets); and the balanced validation sample.
2. Each dimension is standardised with the training jets' mean and standard deviation (a frozen `z` carries a
   large common offset and a small spread across jets: gradient steps of a head barely move on it).
3. A multinomial logistic regression with the L2 penalty ||W||^2 / (2 C) on the summed cross-entropy (bias
   unpenalised: scikit-learn's LogisticRegression) is fitted by L-BFGS for every C of `probe.c_grid`; the C
   with the best validation macro ROC-AUC is kept (CLIP's linear-probe protocol).
4. The standardisation is folded into the encoder's linear head (W / sigma, b - (mu / sigma) W), so the run
   is an ordinary classifier run: `best` checkpoint, metrics.jsonl ('probe' record), the test evaluation,
   and predict / export read it as any other.
"""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from configs import defaults
from jetjax import (build, checks, compilation, devices, evaluation, knn_validation, memory, metrics, objectives,
                    parallel, regression, steps, train)
from jetjax.checkpoint import Checkpoints
from jetjax.data import pipeline
from jetjax.data.classes import task_scheme
from jetjax.data.chunks import DataReport
from jetjax.data.labelled import LabelledSampler
from jetjax.feeding import Feeder, compile_ahead, eval_stream, layout_settings, run_eval, softmax

def probe_settings(config):
    """config.probe (inverse L2 strengths tried, scikit-learn's C; L-BFGS iterations at most per fit) with the
    defaults filled in (configs/defaults.py); errors name the key."""
    values = defaults.section(config, "probe")
    if not values.c_grid or any(c <= 0 for c in values.c_grid):
        raise ValueError(f"config.probe.c_grid={tuple(values.c_grid)}: give one or more positive inverse L2 "
                         "strengths (scikit-learn's C)")
    if config.model.head != "linear":
        raise ValueError(f"mode 'probe' is the linear probe: set config.model.head='linear' (it is "
                         f"{config.model.head!r})")
    return values


def standardisation(features):
    """(mean, standard deviation) per dimension; a constant dimension gets 1 (it carries no information)."""
    mean, std = features.mean(axis=0), features.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def fit_logistic(features, labels, num_classes, c, max_iterations=1000):
    """(W (E, K), b (K,), iterations) minimising sum_i CE(softmax(x_i W + b), y_i) + ||W||^2 / (2 c) by L-BFGS
    in float64 (the problem is convex: one minimum)."""
    x = np.asarray(features, np.float64)
    onehot = np.eye(num_classes)[labels]
    e = x.shape[1]

    def loss_and_gradient(theta):
        w, b = theta[:e * num_classes].reshape(e, num_classes), theta[e * num_classes:]
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        residual = np.exp(log_p) - onehot
        loss = -(onehot * log_p).sum() + (w ** 2).sum() / (2 * c)
        return loss, np.concatenate([(x.T @ residual + w / c).ravel(), residual.sum(axis=0)])

    result = scipy.optimize.minimize(loss_and_gradient, np.zeros(e * num_classes + num_classes), jac=True,
                                     method="L-BFGS-B", options=dict(maxiter=max_iterations, ftol=1e-12, gtol=1e-8))
    return result.x[:e * num_classes].reshape(e, num_classes), result.x[e * num_classes:], int(result.nit)


def folded_head(w, b, mean, std):
    """The linear head on raw z equal to (W, b) on standardised z: kernel W / sigma, bias b - (mu / sigma) W."""
    kernel = w / std[:, None]
    return {"kernel": kernel.astype(np.float32), "bias": (b - mean @ kernel).astype(np.float32)}


def select(train_set, val_set, num_classes, class_names, c_grid, max_iterations):
    """The fit (dict: c, kernel, bias, iterations, val_macro_auc per C) with the best validation macro AUC."""
    mean, std = standardisation(train_set["embeddings"])
    fits = []
    for c in c_grid:
        w, b, iterations = fit_logistic((train_set["embeddings"] - mean) / std, train_set["labels"], num_classes,
                                        c, max_iterations)
        head = folded_head(w, b, mean, std)
        scores = softmax(val_set["embeddings"] @ head["kernel"].astype(np.float64) + head["bias"])
        fits.append({"c": float(c), **head, "iterations": iterations,
                     "val_macro_auc": metrics.macro_roc_auc(scores, val_set["labels"], class_names)})
    return max(fits, key=lambda fit: fit["val_macro_auc"]), fits


def training_jets(config, data, batch_size, report):
    """Batches of the jets the probe is fitted on: each labelled jet once (`data.label_budget`), else the
    first epoch of the training sampler."""
    sampler = pipeline.training_sampler(**data, batch_size=batch_size, epoch_size=config.data.epoch_size,
                                        seed=config.seed, report=report, label_budget=config.data.get(
                                            "label_budget", 0), label_seed=config.seed)
    return sampler.each_jet_once() if isinstance(sampler, LabelledSampler) else sampler.batches(0)


def fit(config, workdir):
    """Fit the linear probe of `config` (mode 'probe') in `workdir` and evaluate it on the test stream (module
    docstring). Returns the run's record (as train.fit does)."""
    memory.advise()
    settings = probe_settings(config)
    model = build.build_model(config)
    compilation.use_persistent_cache(config)
    devices.announce(model.encoder.dtype)
    if not config.train.init_from:
        raise ValueError("mode='probe' needs train.init_from, the workdir of a pretraining run")
    if regression.target_columns(config):
        raise ValueError(f"mode='probe' fits a logistic regression (classes); config.regression.target="
                         f"{config.regression.target!r} asks for a regression task: use mode='finetune' with "
                         "finetune.method='adapter' (a head on the frozen encoder) or 'full'")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if parallel.is_main_process():
        checks.store_config(config, workdir)
    mesh, batch_size = parallel.data_mesh(), build.micro_batch_size(config)
    report, validation_report = DataReport(), DataReport()
    data = build.data_settings(config, workdir)
    model = objectives.prepare(model, workdir, data, config.seed)
    state = steps.init_state(model, optax.set_to_zero(), build.example_batch(config, batch_size),
                             jax.random.key(config.seed))
    state = build.load_encoder(state, config.train.init_from)
    checks.check_same_pair_mass(config, config.train.init_from)
    replicated = parallel.replicate(state, mesh)
    layout = layout_settings(config)
    embed_step = knn_validation.make_embed_step(model)
    feeder = Feeder(objectives.EncoderLengths(), mesh, config.data.num_particles, layout)
    samples = {"train": list(training_jets(config, data, batch_size, report)),
               "val": list(pipeline.validation_batches(**data, num_jets=config.data.val_size, batch_size=batch_size,
                                                       seed=config.seed + 1, report=validation_report))}
    train.say_read_again(validation_report, "the validation sample", "config.data.val_size")
    with compilation.CompileLog() as compiled:
        compile_ahead(replicated, (embed_step,), feeder, list(eval_stream(iter(samples["train"] + samples["val"]),
                                                                          batch_size, layout.eval_window)))
        embedded = {name: run_eval(replicated, embed_step, feeder, iter(batches), batch_size, layout.eval_window,
                                   keep_embeddings=sum(len(b["label"]) for b in batches))
                    for name, batches in samples.items()}
    class_names = task_scheme(config.data).names
    best, fits = select(*(embedded[name] for name in ("train", "val")), len(class_names), class_names,
                        settings.c_grid, settings.max_iterations)
    print(f"{workdir}: linear probe on {len(embedded['train']['labels'])} training jets, C = {best['c']:g} "
          f"({best['iterations']} L-BFGS iterations), validation macro AUC {best['val_macro_auc']:.4f}")
    head = {"out": {k: jnp.asarray(best[k]) for k in ("kernel", "bias")}}
    state = state.replace(params={**state.params, "encoder": {**state.params["encoder"], "head": head}})
    record = {"epoch": config.train.epochs, "batch": 0, "best": best["val_macro_auc"], "selection": "val_macro_auc"}
    checkpoints = Checkpoints(workdir)
    for which in ("latest", "best"):
        checkpoints.save(which, 0, parallel.replicate(state, mesh), record)
    checkpoints.wait()
    checkpoints.close()
    log = train.MetricsLog(workdir)
    log.write("compile", 0, compiled.summary())
    for f in fits:  # one record per C; `selected` marks the kept one
        log.write("probe", 0, {"c": f["c"], "iterations": f["iterations"], "val_macro_auc": f["val_macro_auc"],
                               "train_jets": len(embedded["train"]["labels"]), "selected": f is best})
    log.close()
    if parallel.is_main_process():
        (workdir / "data_report.json").write_text(json.dumps(
            {**report.as_dict(), "validation": validation_report.as_dict()}, indent=2))
    evaluation.evaluate(config, workdir)
    return record
