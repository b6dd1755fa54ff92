"""Training state and the jit-compiled steps shared by every objective.

The state is one pytree (params, batch_stats, opt_state, step, key, extra); a train step is a pure function
state, batch -> state, metrics, compiled once with the state's buffers donated. Under a data mesh the batch
arrives sharded along 'data' and the state replicated, so the same code runs on one device or many.
"""
import functools
import itertools
import json
import signal
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from jetjax import checks, compilation, devices, knn_validation, objectives, optim, parallel
from jetjax.checkpoint import Checkpoints, best_checkpoint
from jetjax.data import pipeline
from jetjax.feeding import Feeder, compile_ahead, eval_stream, layout_settings, run_eval


@flax.struct.dataclass
class TrainState:
    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    extra: Any = flax.struct.field(default_factory=dict)
    """The objective's other variable collections, which it updates itself in each training step (neither
    trained by the optimizer nor BatchNorm statistics): e.g. MoCo's momentum encoder and queue."""


def init_state(model, tx, batch, key):
    """A fresh state: the model initialised on `batch` (any batch of the right shapes) with `key`. Compiled
    as one program: op by op, flax's init compiles hundreds of small programs (seconds on CPU)."""

    @jax.jit
    def init(batch, key):
        init_key, model_key, state_key = jax.random.split(key, 3)
        variables = model.init(init_key, batch, model_key)
        params = variables["params"]
        extra = {k: v for k, v in variables.items() if k not in ("params", "batch_stats")}
        return TrainState(params=params, batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                          step=jnp.zeros((), jnp.int32), key=state_key, extra=extra)

    return init(batch, key)


def step_keys(state):
    """Independent keys for this step's views (augmentation/masking) and dropout: fold_in(key, step)."""
    view_key, dropout_key = jax.random.split(jax.random.fold_in(state.key, state.step))
    return view_key, dropout_key


def make_train_step(model, tx):
    """state, batch, plan -> new state, metrics (loss, the objective's metrics, gradient norm). `plan` is the
    batch's static layout (models/layout.py; None = every slot): one compiled program per plan."""

    def train_step(state, batch, plan):
        view_key, dropout_key = step_keys(state)

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats, **state.extra}
            (loss, metrics, _), new = model.apply(variables, batch, view_key, step=state.step, train=True, plan=plan,
                                                  rngs={"dropout": dropout_key}, mutable=["batch_stats", *state.extra])
            return loss, (metrics, new)

        (loss, (metrics, new)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        state = state.replace(params=optax.apply_updates(state.params, updates), batch_stats=new.get("batch_stats", {}),
                              opt_state=opt_state, step=state.step + 1, extra={k: new[k] for k in state.extra})
        return state, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(train_step, donate_argnums=0, static_argnums=2)


def make_eval_step(model):
    """state, batch, plan -> metrics, outputs (eval mode: running statistics, no dropout; views from a key
    fixed per step so validation is reproducible)."""

    def eval_step(state, batch, plan):
        view_key, _ = step_keys(state)
        variables = {"params": state.params, "batch_stats": state.batch_stats, **state.extra}
        loss, metrics, outputs = model.apply(variables, batch, view_key, step=state.step, train=False, plan=plan)
        return {**metrics, "loss": loss}, outputs

    return jax.jit(eval_step, static_argnums=2)


def run_steps(state, train_step, feeder, batches):
    """The train step dispatched on every batch of `batches`, fed by `feeder`: yields (state, metrics) as soon
    as each step is queued; the host waits for a step only where the devices need it (Feeder.sync_each_step)."""
    for device_batch, plan, _ in feeder(batches):
        state, metrics = train_step(state, device_batch, plan)
        if feeder.sync_each_step:  # API_NOTES: CPU collectives of queued steps can deadlock
            jax.block_until_ready(metrics)
        yield state, metrics


# ---------------------------------------------------------------------------------------------------------
# Runs: model and data from a config, the epoch loop with validation, selection, checkpoints and resume.

CLASSIFIER_MODES = ("supervised", "finetune", "probe")
MODES = CLASSIFIER_MODES + ("pretrain", "evaluate")


def build_model(config):
    """The objective module of a run: the classifier for supervised / finetune / probe, the config's
    pretraining objective for pretrain."""
    from jetjax import finetune
    from jetjax.data.classes import task_scheme
    from jetjax.models.part import ParT

    checks.check_counts(config)
    mode = config.mode
    if mode not in MODES:
        raise ValueError(f"config.mode={mode!r} is not one of {MODES} (or 'study', 'efficiency', 'scaling', which run several)")
    model_settings = {**config.model, "dtype": devices.compute_dtype(config.model.dtype, jax.default_backend())}
    if mode in CLASSIFIER_MODES or mode == "evaluate":
        return finetune.classifier(config, ParT, model_settings, task_scheme(config.data).num_classes)
    encoder = ParT(num_classes=None, **model_settings)
    settings = {k: v for k, v in config.objective.items() if k != "name"}
    if config.objective.name == "supervised":
        raise ValueError("config.objective.name='supervised' is not a pretraining objective; "
                         "use mode='supervised' or one of supcon, jetclr, mpm, clipvae, vicreg, simsiam, moco")
    return objectives.build(config.objective.name, encoder, config.data.feature_set, config.data.num_particles,
                            **settings)


def data_settings(config, workdir):
    """Keyword arguments of the jetjax.data.pipeline entry points. The data are `data.root`; only without one,
    `data.synthetic_jets_per_group` > 0 asks for a synthetic data set in `workdir/data` (made, with a line
    saying so, when it is not there)."""
    from jetjax.data import synthetic
    from jetjax.data.classes import task_scheme

    root = config.data.root
    if root is None and config.data.synthetic_jets_per_group:
        root = Path(workdir) / "data"
        if not (root / "test").exists():
            print(f"data: generating synthetic jets ({config.data.synthetic_jets_per_group} per group) in {root} "
                  "(config.data.synthetic_jets_per_group; set config.data.root to read your own files)")
            synthetic.write_dataset(root, config.data.synthetic_jets_per_group, seed=config.seed)
    if root is None:
        raise ValueError("config.data.root is not set: point it at the JetClass-II folder "
                         "(or set data.synthetic_jets_per_group to generate synthetic jets)")
    return dict(root=str(root), scheme=task_scheme(config.data), feature_set=config.data.feature_set,
                num_particles=config.data.num_particles, skip_bad_files=config.data.skip_bad_files,
                file_format=config.data.format, column_map=pipeline.column_map(config.data))


def example_batch(config, batch_size):
    """A batch of zeros with the shapes and dtypes the data pipeline delivers (for initialisation)."""
    from jetjax.data.features import FEATURE_SETS

    b, p, c = batch_size, config.data.num_particles, len(FEATURE_SETS[config.data.feature_set])
    return {"features": np.zeros((b, p, c), np.float32), "vectors": np.zeros((b, p, 4), np.float32),
            "mask": np.zeros((b, p), bool), "label": np.zeros((b,), np.int32), "pid": np.zeros((b, p), np.int32),
            "jet": np.zeros((b, 4), np.float32)}


def load_encoder(state, run):
    """`state` with the encoder (parameters and BatchNorm statistics, not the classifier head) of the best
    checkpoint of the pretraining workdir `run`."""
    from jetjax.models.convert import check_compatible

    restored = best_checkpoint(run, "train.init_from")
    encoder = {k: v for k, v in restored["params"]["encoder"].items() if k != "head"}
    ours = {k: v for k, v in state.params["encoder"].items() if k != "head"}
    check_compatible(encoder, ours)
    params = {**state.params, "encoder": {**state.params["encoder"], **jax.tree.map(jnp.asarray, encoder)}}
    stats = restored.get("batch_stats", {}).get("encoder", {})
    batch_stats = {**state.batch_stats, "encoder": jax.tree.map(jnp.asarray, stats)} if stats else state.batch_stats
    return state.replace(params=params, batch_stats=batch_stats)


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
        from tensorboardX import SummaryWriter

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


def selection_value(config, validation, class_names):
    """The validation quantity that selects the best checkpoint, and whether higher is better: the loss
    (lower) for pretraining, the macro ROC-AUC (higher) for classifiers (the study's §2.2)."""
    from jetjax import metrics

    if config.mode == "pretrain":
        return "val_loss", validation["metrics"]["loss"], False
    return "val_macro_auc", metrics.macro_roc_auc(validation["scores"], validation["labels"], class_names), True


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


def micro_batch_size(config):
    """Jets per compiled step: the global batch `train.batch_size`, split into `train.accumulate` micro
    batches whose gradients are averaged before each update (optax.MultiSteps)."""
    size, steps = config.train.batch_size, config.train.get("accumulate", 1)
    if steps < 1 or size % steps:
        raise ValueError(f"train.accumulate={steps} must be a positive divisor of train.batch_size={size}")
    return size // steps


def accumulated(tx, steps):
    """`tx` updating once every `steps` calls with the mean of their gradients (in between, the parameters do
    not move); `tx` itself for 1. BatchNorm still normalises each micro batch with its own statistics and
    updates its running statistics once per micro batch."""
    return tx if steps == 1 else optax.MultiSteps(tx, every_k_schedule=steps).gradient_transformation()


def stop_agreed(stop, step, every):
    """Whether to save and stop now: at once on a signal for one process; several processes decide together
    at every `every`-th step (each may get the signal at a different step, the save is collective)."""
    if jax.process_count() == 1:
        return stop.requested
    return step % every == 0 and parallel.any_process(stop.requested)


def fit(config, workdir):
    """Train a run in `workdir` (supervised, pretrain or finetune; the probe: jetjax.probe), resuming where it stopped;
    classifiers are evaluated on the natural test stream at the end. Returns the final record."""
    from jetjax import finetune, objectives
    from jetjax.data.classes import task_scheme
    from jetjax.data.chunks import DataReport

    if config.mode == "probe":
        raise ValueError("mode 'probe' is fitted by jetjax.probe.fit (python -m jetjax.main runs it), not trained")
    model = build_model(config)  # first: a wrong mode, objective or model setting fails before any work
    compilation.use_persistent_cache(config)
    encoder = model.encoder  # None: no representation to probe (the tokenizer stage, float32)
    devices.announce(jnp.float32 if encoder is None else encoder.dtype)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    main = parallel.is_main_process()
    changes = checks.compare_with_workdir(config, workdir)  # before config.json is overwritten
    if changes and main:
        print(f"{workdir}: resuming with changed settings: {'; '.join(changes)}")
    if main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    mesh = parallel.data_mesh()
    batch_size, accumulate = micro_batch_size(config), config.train.get("accumulate", 1)
    parallel.check_batch_size(batch_size, mesh, "train.batch_size / train.accumulate")
    report = DataReport()
    data = data_settings(config, workdir)
    model = objectives.prepare(model, workdir, data, config.seed)
    knn = knn_validation.knn_settings(config)
    knn_samples = None if encoder is None else knn_validation.probe_samples(config, data, batch_size)
    sampler = pipeline.training_sampler(**data, batch_size=batch_size, epoch_size=config.data.epoch_size,
                                        seed=config.seed, report=report, length_window=config.data.length_grouping,
                                        workers=config.data.workers, label_budget=config.data.get("label_budget", 0),
                                        label_seed=config.seed)
    steps_per_epoch, epochs = sampler.batches_per_epoch, config.train.epochs
    tx = accumulated(optim.make_optimizer(epochs * steps_per_epoch // accumulate, **config.optimizer,
                                          **finetune.optimizer_settings(config, config.model.num_layers)), accumulate)
    state = init_state(model, tx, example_batch(config, batch_size), jax.random.key(config.seed))
    if config.mode == "finetune":
        if not config.train.init_from:
            raise ValueError(f"mode={config.mode!r} needs train.init_from, the workdir of a pretraining run")
        state = load_encoder(state, config.train.init_from)
        checks.check_same_pair_mass(config, config.train.init_from)
    checkpoints = Checkpoints(workdir, config.train.get("keep_checkpoints", 2))
    record = {"epoch": 0, "batch": 0, "best": None, "selection": None}
    restored = checkpoints.restore("latest", state)
    if restored is not None:
        state, record = restored
        print(f"resuming {workdir} at epoch {record['epoch']} batch {record['batch']} (step {int(state.step)})")
    step = int(state.step)
    state = parallel.replicate(state, mesh)
    train_step, eval_step = make_train_step(model, tx), make_eval_step(model)
    layout = layout_settings(config)
    # training, validation and the kNN probe's embeddings each fix their programs on batches of their own
    # (validation batches are grouped by multiplicity, so they fit smaller layouts than training batches)
    feeder, eval_feeder = (Feeder(model, mesh, config.data.num_particles, layout) for _ in range(2))
    embed_step, bare_feeder = knn_validation.make_embed_step(model), Feeder(
        objectives.EncoderLengths(), mesh, config.data.num_particles, layout)
    validation_report = DataReport()
    validation_batches = functools.partial(pipeline.validation_batches, **data, num_jets=config.data.val_size,
                                           batch_size=batch_size, seed=config.seed + 1, report=validation_report)
    class_names = task_scheme(config.data).names
    log, pending = MetricsLog(workdir), StepMetrics(workdir, steps_per_epoch)
    with compilation.CompileLog() as startup:
        compile_ahead(state, (train_step,), feeder, list(itertools.islice(sampler.batches(0), layout.sample_batches)))
        compile_ahead(state, (eval_step,), eval_feeder, list(itertools.islice(
            eval_stream(validation_batches(), batch_size, layout.eval_window), layout.sample_batches)))
        if knn_samples:
            compile_ahead(state, (embed_step,), bare_feeder,
                          list(eval_stream(iter(knn_samples[0]), batch_size, layout.eval_window)))
    ahead = startup.summary()
    log.write("compile", step, {**ahead, "layouts": len(feeder.programs), "eval_layouts": len(eval_feeder.programs)})
    print(f"{workdir}: {feeder.mode} layout, {len(feeder.programs)} training programs (slots "
          f"{[slots for slots, _ in feeder.programs]}), {len(eval_feeder.programs)} validation programs; compiled {ahead['compiled_programs']} XLA programs "
          f"in {ahead['compile_s']:.1f} s ({ahead['cache_hits']} from the persistent cache)")
    try:
        with StopRequest() as stop, compilation.CompileLog() as compiled:
            first_epoch = record["epoch"]
            for epoch in range(first_epoch, epochs):
                bar = tqdm.tqdm(total=steps_per_epoch * batch_size, initial=record["batch"] * batch_size,
                                unit="jet", unit_scale=True, desc=f"{config.mode} epoch {epoch + 1}/{epochs}",
                                disable=not main)
                for state, metrics in run_steps(state, train_step, feeder, sampler.batches(epoch, record["batch"])):
                    step += 1
                    record["batch"] += 1
                    pending.add(step, metrics)
                    bar.update(batch_size)
                    stopping = stop_agreed(stop, step, config.train.log_every)
                    if step % config.train.log_every == 0 or stopping:
                        logged = pending.flush()
                        log.write("train", *logged)
                        bar.set_postfix(loss=f"{logged[1]['loss']:.4f}")
                    if stopping:
                        checkpoints.save("latest", step, state, record)
                        checkpoints.wait()
                        print(f"stopped by a signal; saved {workdir} at epoch {epoch} batch {record['batch']}")
                        return record
                bar.close()
                logged = pending.flush()
                if logged:
                    log.write("train", *logged)
                validation = run_eval(state, eval_step, eval_feeder, validation_batches(), batch_size,
                                      layout.eval_window)
                if epoch == first_epoch:
                    say_read_again(validation_report, "the validation sample", "config.data.val_size")
                name, value, higher_is_better = selection_value(config, validation, class_names)
                if knn_samples:
                    embedded = [run_eval(state, embed_step, bare_feeder, iter(sample), batch_size, layout.eval_window,
                                         keep_embeddings=len(sample) * batch_size) for sample in knn_samples]
                    validation["metrics"].update(knn_validation.knn_metrics(*embedded, knn.k, len(class_names)))
                compiles = compiled.summary()
                log.write("val", step, {**validation["metrics"], name: value, "layouts_used": len(feeder.used),
                                        "eval_layouts_used": len(eval_feeder.used),
                                        **compiles})
                best = record["best"]
                improved = best is None or (value > best if higher_is_better else value < best)
                record = {"epoch": epoch + 1, "batch": 0, "best": value if improved else best,
                          "selection": name}
                checkpoints.save("latest", step, state, record)
                if improved:
                    checkpoints.save("best", step, state, record)
                print(f"epoch {epoch + 1}: {name} {value:.4f}" + (" (best)" if improved else "") +
                      f"; the loop's XLA programs so far: {compiles['compiled_programs']} ({compiles['compile_s']:.1f} s)")
            checkpoints.wait()
    finally:
        log.close()
        checkpoints.close()
        if main:
            (workdir / "data_report.json").write_text(json.dumps(
                {**report.as_dict(), "validation": validation_report.as_dict()}, indent=2))
    if config.mode in CLASSIFIER_MODES:
        evaluate(config, workdir)
    return record


def trained_classifier(run, mesh, key):
    """(the run's config in mode 'evaluate', its model, its best state replicated on `mesh`) of the classifier
    workdir `run`; errors name the config `key`."""
    import ml_collections

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
    `evaluation/` folder, and returns the metrics."""
    from jetjax import metrics, report
    from jetjax.data.classes import task_scheme

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
    values = metrics.evaluate(result["scores"], result["labels"], scheme.names, background=scheme.background)
    if not parallel.is_main_process():
        return values
    out = run / "evaluation"
    out.mkdir(exist_ok=True)
    np.savez_compressed(out / "predictions.npz", scores=result["scores"].astype(np.float32),
                        labels=result["labels"], embeddings=result.get("embeddings", np.zeros((0,))))
    metrics.write_json(out / "metrics.json", values)
    saved = json.loads((run / "config.json").read_text())
    title = saved.get("evaluate", {}).get("title") or run_title(saved)
    print(report.write_tables({title: values}, out, titles=dict(zip(scheme.names, scheme.titles))))
    return values


MODE_TITLES = {"supervised": "Supervised", "finetune": "Fine-tuned", "probe": "Linear probe"}


def run_title(saved):
    """The row name of a classifier run's tables from its saved config (a dict) when `evaluate.title` is unset:
    what trained it, e.g. 'Fine-tuned (adapter), 100 labels'."""
    title = MODE_TITLES.get(saved["mode"], saved["mode"])
    if saved["mode"] == "finetune":
        title += f" ({saved.get('finetune', {}).get('method', 'full')})"
    budget = saved["data"].get("label_budget", 0)
    return f"{title}, {budget} labels" if budget else title
