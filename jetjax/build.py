"""A run's pieces from its config: the objective module (`build_model`), the data settings of the pipeline
(`data_settings`), the shapes to initialise with (`example_batch`), the micro batch of a compiled step, and a
pretrained encoder loaded into a fresh state (`load_encoder`). Used by every mode (jetjax/train.py, probe.py,
evaluation.py, predict.py, study.py)."""
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from configs import defaults
from jetjax import checks, devices, finetune, objectives, regression
from jetjax.checkpoint import best_checkpoint
from jetjax.data import pipeline, synthetic
from jetjax.data.classes import task_scheme
from jetjax.data.features import FEATURE_SETS
from jetjax.models.convert import check_compatible
from jetjax.models.part import ParT


CLASSIFIER_MODES = ("supervised", "finetune", "probe")
MODES = CLASSIFIER_MODES + ("pretrain", "evaluate")


def build_model(config):
    """The objective module of a run: the classifier for supervised / finetune / probe, the config's
    pretraining objective for pretrain."""
    checks.check_counts(config)
    mode = config.mode
    if mode not in MODES:
        raise ValueError(f"config.mode={mode!r} is not one of {MODES} (or 'study', 'efficiency', 'scaling', which "
                         "run several, or 'predict')")
    model_settings = {**config.model, "dtype": devices.compute_dtype(config.model.dtype, jax.default_backend())}
    if mode in CLASSIFIER_MODES or mode == "evaluate":
        return finetune.classifier(config, ParT, model_settings, task_scheme(config.data).num_classes)
    encoder = ParT(num_classes=None, **model_settings)
    settings = {k: v for k, v in config.objective.items() if k != "name"}
    if config.objective.name == "supervised":
        others = ", ".join(n for n in objectives.OBJECTIVES if n != "supervised")
        raise ValueError(f"config.objective.name='supervised' is not a pretraining objective; use mode='supervised' "
                         f"or one of {others}")
    return objectives.build(config.objective.name, encoder, config.data.feature_set, config.data.num_particles,
                            **settings)


def data_settings(config, workdir):
    """Keyword arguments of the jetjax.data.pipeline entry points. The data are `data.root`; only without one,
    `data.synthetic_jets_per_group` > 0 asks for a synthetic data set in `workdir/data` (made, with a line
    saying so, when it is not there)."""
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
                file_format=config.data.format, column_map=dataclasses.replace(
                    pipeline.column_map(config.data), target=regression.target_columns(config)))


def example_batch(config, batch_size):
    """A batch of zeros with the shapes and dtypes the data pipeline delivers (for initialisation)."""
    b, p, c = batch_size, config.data.num_particles, len(FEATURE_SETS[config.data.feature_set])
    return {"features": np.zeros((b, p, c), np.float32), "vectors": np.zeros((b, p, 4), np.float32),
            "mask": np.zeros((b, p), bool), "label": np.zeros((b,), np.int32), "pid": np.zeros((b, p), np.int32),
            "jet": np.zeros((b, 4), np.float32), "target": np.zeros((b,), np.float32)}


def overlaid(ours, theirs):
    """The tree `ours` with every leaf that `theirs` has replaced by it (ours alone keeps its LoRA factors)."""
    return {k: overlaid(v, theirs[k]) if isinstance(v, dict) and k in theirs else theirs.get(k, v)
            for k, v in ours.items()}


def load_encoder(state, run):
    """`state` with the encoder (parameters and BatchNorm statistics, not the classifier head) of the best
    checkpoint of the pretraining workdir `run`."""
    restored = best_checkpoint(run, "train.init_from")
    encoder = {k: v for k, v in restored["params"]["encoder"].items() if k != "head"}
    check_compatible(encoder, finetune.without_lora({k: v for k, v in state.params["encoder"].items() if k != "head"}))
    params = {**state.params, "encoder": overlaid(state.params["encoder"], jax.tree.map(jnp.asarray, encoder))}
    stats = restored.get("batch_stats", {}).get("encoder", {})
    batch_stats = {**state.batch_stats, "encoder": jax.tree.map(jnp.asarray, stats)} if stats else state.batch_stats
    return state.replace(params=params, batch_stats=batch_stats)


def micro_batch_size(config):
    """Jets per compiled step: the global batch `train.batch_size`, split into `train.accumulate` micro
    batches whose gradients are averaged before each update (optax.MultiSteps)."""
    size, steps = config.train.batch_size, defaults.value(config, "train.accumulate")
    if steps < 1 or size % steps:
        raise ValueError(f"train.accumulate={steps} must be a positive divisor of train.batch_size={size}")
    return size // steps
