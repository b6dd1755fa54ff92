"""The run: training in a workdir from a config (modes supervised, pretrain, finetune), resuming where it stopped.

`fit` assembles a `Run` (the model, optimizer and data of jetjax/build.py, the compiled steps of jetjax/steps.py,
the feeders of jetjax/feeding.py, checkpoints), compiles every program ahead, then runs epochs: training steps,
validation (and the kNN probe of a pretraining run), checkpoint selection, a clean stop on a signal. Classifier
runs end with the evaluation on the test stream (jetjax/evaluation.py).
"""
import dataclasses
import functools
import itertools
import json
import signal
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from configs import defaults
from jetjax import (checks, compilation, devices, finetune, knn_validation, memory, metrics, objectives, optim,
                    parallel, regression, steps)
from jetjax.build import CLASSIFIER_MODES, build_model, data_settings, example_batch, load_encoder, micro_batch_size
from jetjax.checkpoint import Checkpoints
from jetjax.data import pipeline
from jetjax.data.chunks import DataReport
from jetjax.data.classes import task_scheme
from jetjax.evaluation import evaluate
from jetjax.feeding import Feeder, compile_ahead, eval_stream, layout_settings, run_eval


class StopRequest:
    """SIGTERM / SIGINT set `requested` instead of killing the run, which then saves and exits cleanly."""

    def __enter__(self):
        self.requested = False
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class MetricsLog:
    """One JSON line per record in `workdir/metrics.jsonl`, and the same scalars in TensorBoard (written by
    process 0 only)."""

    def __init__(self, workdir):
        self.enabled = parallel.is_main_process()
        if self.enabled:
            self.file = open(Path(workdir) / "metrics.jsonl", "a")
            self.writer = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, split, step, values):
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        self.file.write(json.dumps({"split": split, "step": int(step), **values}) + "\n")
        self.file.flush()
        for k, v in values.items():
            self.writer.add_scalar(f"{split}/{k}", v, int(step))

    def close(self):
        if self.enabled:
            self.file.close()
            self.writer.close()


class StepMetrics:
    """Training metrics left on the devices and fetched together (no host synchronisation per step).
    `flush` checks that every step's loss is finite, so a diverged run stops before anything of it is saved,
    and returns (last step, mean of each metric over the steps)."""

    def __init__(self, workdir, steps_per_epoch):
        self.workdir, self.steps_per_epoch, self.pending = workdir, steps_per_epoch, []

    def add(self, step, metrics):
        self.pending.append((step, metrics))

    def flush(self):
        if not self.pending:
            return None
        steps, values = zip(*self.pending)
        values = parallel.fetch_global(values)
        self.pending = []
        for step, v in zip(steps, values):
            epoch, batch = (step - 1) // self.steps_per_epoch + 1, (step - 1) % self.steps_per_epoch + 1
            if not np.isfinite(v["loss"]):
                raise FloatingPointError(
                    f"{self.workdir}: the training loss is {float(v['loss'])} at step {step} (epoch {epoch}, batch "
                    f"{batch}); the latest checkpoint holds the last validated state. Lower "
                    "optimizer.learning_rate or check data_report.json.")
        return steps[-1], {k: float(np.mean([v[k] for v in values])) for k in values[0]}


def say_read_again(report, sample, key):
    """One line when `sample` read jets again (DataReport 'jets_read_again': it asked for more jets of a class
    than one pass over its files gave)."""
    again = report.counts.get("jets_read_again", 0)
    if again:
        print(f"data: {sample} needed a second pass over its files ({again} jets read again): it asks for more "
              f"jets of a class than the split holds, so some jets repeat; lower {key} to draw each jet once")


def selection_value(config, validation, class_names):
    """The validation quantity that selects the best checkpoint, and whether higher is better: the loss
    (lower) for pretraining and regression tasks, the macro ROC-AUC (higher) for classifiers (the study's §2.2)."""
    if config.mode == "pretrain" or "predictions" in validation:
        return "val_loss", validation["metrics"]["loss"], False
    return "val_macro_auc", metrics.macro_roc_auc(validation["scores"], validation["labels"], class_names), True


def stop_agreed(stop, step, every):
    """Whether to save and stop now: at once on a signal for one process; several processes decide together
    at every `every`-th step (each may get the signal at a different step, the save is collective)."""
    if jax.process_count() == 1:
        return stop.requested
    return step % every == 0 and parallel.any_process(stop.requested)


@dataclasses.dataclass
class Run:
    """Everything a training run's loop works with, assembled by `fit` (`state` and `record` move on with it)."""
    config: Any
    workdir: Path
    state: Any
    record: dict
    checkpoints: Checkpoints
    train_step: Callable
    eval_step: Callable
    feeder: Feeder
    eval_feeder: Feeder
    sampler: Any
    validation_batches: Callable
    report: DataReport
    validation_report: DataReport
    batch_size: int
    layout: Any
    log: Optional[MetricsLog] = None
    knn: Optional[tuple] = None
    """(embed step, its feeder, [labelled training batches, validation batches]) of the kNN probe, or None."""

    @property
    def steps_per_epoch(self):
        return self.sampler.batches_per_epoch


def prepare_workdir(config, workdir):
    """`workdir` created, a rerun's config checked against the stored one (changes printed once), config.json
    (re)written."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    main = parallel.is_main_process()
    changes = checks.compare_with_workdir(config, workdir)  # before config.json is overwritten
    if changes and main:
        print(f"{workdir}: resuming with changed settings: {'; '.join(changes)}")
    if main:
        checks.store_config(config, workdir)
    return workdir


def starting_state(config, workdir, model, tx, batch_size, checkpoints):
    """(state, record) to start from: the latest checkpoint of the workdir if there is one, else a fresh state
    (a fine-tuning run's with the pretrained encoder of train.init_from)."""
    state = steps.init_state(model, tx, example_batch(config, batch_size), jax.random.key(config.seed))
    if config.mode == "finetune":
        if not config.train.init_from:
            raise ValueError(f"mode={config.mode!r} needs train.init_from, the workdir of a pretraining run")
        state = load_encoder(state, config.train.init_from)
        checks.check_same_pair_mass(config, config.train.init_from)
    restored = checkpoints.restore("latest", state)
    if restored is None:
        return state, {"epoch": 0, "batch": 0, "best": None, "selection": None}
    state, record = restored
    print(f"resuming {workdir} at epoch {record['epoch']} batch {record['batch']} (step {int(state.step)})")
    return state, record


def assemble(config, workdir, model):
    """The Run of `config` in `workdir` around the objective `model`: data, optimizer, state, steps, feeders."""
    mesh = parallel.data_mesh()
    batch_size, accumulate = micro_batch_size(config), defaults.value(config, "train.accumulate")
    parallel.check_batch_size(batch_size, mesh, "train.batch_size / train.accumulate")
    data = data_settings(config, workdir)
    report, validation_report = DataReport(), DataReport()
    sampler = pipeline.training_sampler(
        **data, batch_size=batch_size, epoch_size=config.data.epoch_size, seed=config.seed, report=report,
        length_window=config.data.length_grouping, workers=config.data.workers,
        label_budget=defaults.value(config, "data.label_budget"), label_seed=config.seed)
    model = objectives.prepare(model, workdir, data, config.seed, config.train.epochs * sampler.batches_per_epoch,
                               itertools.islice(sampler.batches(0), regression.SCALE_BATCHES))  # read if needed
    tx = steps.accumulated(optim.make_optimizer(config.train.epochs * sampler.batches_per_epoch // accumulate,
                                                **config.optimizer,
                                                **finetune.optimizer_settings(config, config.model.num_layers)),
                           accumulate)
    checkpoints = Checkpoints(workdir, defaults.value(config, "train.keep_checkpoints"))
    state, record = starting_state(config, workdir, model, tx, batch_size, checkpoints)
    layout = layout_settings(config)
    # training, validation and the kNN probe's embeddings each fix their programs on batches of their own
    # (validation batches are grouped by multiplicity, so they fit smaller layouts than training batches)
    feeder, eval_feeder = (Feeder(model, mesh, config.data.num_particles, layout) for _ in range(2))
    samples = None if model.encoder is None else knn_validation.probe_samples(config, data, batch_size)
    knn = None
    if samples:
        knn = (knn_validation.make_embed_step(model),
               Feeder(objectives.EncoderLengths(), mesh, config.data.num_particles, layout), samples)
    return Run(config, workdir, parallel.replicate(state, mesh), record, checkpoints, steps.make_train_step(model, tx),
               steps.make_eval_step(model), feeder, eval_feeder, sampler,
               functools.partial(pipeline.validation_batches, **data, num_jets=config.data.val_size,
                                 batch_size=batch_size, seed=config.seed + 1, report=validation_report),
               report, validation_report, batch_size, layout, knn=knn)


def compile_programs(run):
    """Every program of the run compiled before its first step (training, validation, kNN embeddings), with one
    line and a `compile` record saying how many and how long."""
    window, sample = run.layout.eval_window, run.layout.sample_batches
    with compilation.CompileLog() as startup:
        compile_ahead(run.state, (run.train_step,), run.feeder, list(itertools.islice(run.sampler.batches(0), sample)))
        compile_ahead(run.state, (run.eval_step,), run.eval_feeder, list(itertools.islice(
            eval_stream(run.validation_batches(), run.batch_size, window), sample)))
        if run.knn:
            embed_step, feeder, samples = run.knn
            compile_ahead(run.state, (embed_step,), feeder, list(eval_stream(iter(samples[0]), run.batch_size, window)))
    ahead = startup.summary()
    run.log.write("compile", run.state.step, {**ahead, "layouts": len(run.feeder.programs),
                                              "eval_layouts": len(run.eval_feeder.programs)})
    print(f"{run.workdir}: {run.feeder.mode} layout, {len(run.feeder.programs)} training programs (slots "
          f"{[slots for slots, _ in run.feeder.programs]}), {len(run.eval_feeder.programs)} validation programs; "
          f"compiled {ahead['compiled_programs']} XLA programs in {ahead['compile_s']:.1f} s "
          f"({ahead['cache_hits']} from the persistent cache)")


def train_epoch(run, epoch, stop):
    """The training steps of `epoch` from where the record stands; True when a signal stopped the run (saved)."""
    config, step = run.config, int(jax.device_get(run.state.step))
    pending = StepMetrics(run.workdir, run.steps_per_epoch)
    bar = tqdm.tqdm(total=run.steps_per_epoch * run.batch_size, initial=run.record["batch"] * run.batch_size,
                    unit="jet", unit_scale=True, desc=f"{config.mode} epoch {epoch + 1}/{config.train.epochs}",
                    disable=not parallel.is_main_process())
    for run.state, step_metrics in steps.run_steps(run.state, run.train_step, run.feeder,
                                                   run.sampler.batches(epoch, run.record["batch"])):
        step += 1
        run.record["batch"] += 1
        pending.add(step, step_metrics)
        bar.update(run.batch_size)
        stopping = stop_agreed(stop, step, config.train.log_every)
        if step % config.train.log_every == 0 or stopping:
            logged = pending.flush()
            run.log.write("train", *logged)
            bar.set_postfix(loss=f"{logged[1]['loss']:.4f}")
        if stopping:
            run.checkpoints.save("latest", step, run.state, run.record)
            run.checkpoints.wait()
            print(f"stopped by a signal; saved {run.workdir} at epoch {epoch} batch {run.record['batch']}")
            return True
    bar.close()
    logged = pending.flush()
    if logged:
        run.log.write("train", *logged)
    return False


def validate(run):
    """The validation pass (and kNN probe): (selection name, value, higher is better, the metrics to log)."""
    validation = run_eval(run.state, run.eval_step, run.eval_feeder, run.validation_batches(), run.batch_size,
                          run.layout.eval_window)
    class_names = task_scheme(run.config.data).names
    name, value, higher_is_better = selection_value(run.config, validation, class_names)
    if "predictions" in validation:
        figures = regression.summary(validation["predictions"], validation["targets"])
        validation["metrics"].update({k: figures[k] for k in ("bias", "resolution")})
    if run.knn:
        embed_step, feeder, samples = run.knn
        embedded = [run_eval(run.state, embed_step, feeder, iter(sample), run.batch_size, run.layout.eval_window,
                             keep_embeddings=len(sample) * run.batch_size) for sample in samples]
        knn = defaults.section(run.config, "knn")
        validation["metrics"].update(knn_validation.knn_metrics(*embedded, knn.k, len(class_names)))
    return name, value, higher_is_better, {**validation["metrics"], name: value}


def end_epoch(run, epoch, compiled):
    """Validation after `epoch`, logged; the latest checkpoint saved, and the best one when it improved."""
    name, value, higher_is_better, values = validate(run)
    compiles = compiled.summary()
    run.log.write("val", run.state.step, {**values, "layouts_used": len(run.feeder.used),
                                          "eval_layouts_used": len(run.eval_feeder.used), **compiles})
    best = run.record["best"]
    improved = best is None or (value > best if higher_is_better else value < best)
    run.record = {"epoch": epoch + 1, "batch": 0, "best": value if improved else best, "selection": name}
    step = int(jax.device_get(run.state.step))
    run.checkpoints.save("latest", step, run.state, run.record)
    if improved:
        run.checkpoints.save("best", step, run.state, run.record)
    print(f"epoch {epoch + 1}: {name} {value:.4f}" + (" (best)" if improved else "") +
          f"; the loop's XLA programs so far: {compiles['compiled_programs']} ({compiles['compile_s']:.1f} s)")


def run_epochs(run):
    """Epochs from the record's to train.epochs; False when a signal stopped the run."""
    first_epoch = run.record["epoch"]
    with StopRequest() as stop, compilation.CompileLog() as compiled:
        for epoch in range(first_epoch, run.config.train.epochs):
            if train_epoch(run, epoch, stop):
                return False
            end_epoch(run, epoch, compiled)
            if epoch == first_epoch:
                say_read_again(run.validation_report, "the validation sample", "config.data.val_size")
        run.checkpoints.wait()
    return True


def write_data_report(run):
    if parallel.is_main_process():
        (run.workdir / "data_report.json").write_text(json.dumps(
            {**run.report.as_dict(), "validation": run.validation_report.as_dict()}, indent=2))


def fit(config, workdir):
    """Train a run in `workdir` (supervised, pretrain or finetune; the probe: jetjax/probe.py), resuming where it
    stopped; classifiers are evaluated on the natural test stream at the end. Returns the final record."""
    if config.mode == "probe":
        raise ValueError("mode 'probe' is fitted by jetjax.probe.fit (python -m jetjax.main runs it), not trained")
    memory.advise()
    model = build_model(config)  # first: a wrong mode, objective or model setting fails before any work
    compilation.use_persistent_cache(config)
    devices.announce(jnp.float32 if model.encoder is None else model.encoder.dtype)  # None: the tokenizer stage
    run = assemble(config, prepare_workdir(config, workdir), model)
    run.log = MetricsLog(run.workdir)
    try:
        compile_programs(run)
        finished = run_epochs(run)
    finally:
        run.log.close()
        run.checkpoints.close()
        write_data_report(run)
    if finished and config.mode in CLASSIFIER_MODES:
        evaluate(config, workdir)
    return run.record
