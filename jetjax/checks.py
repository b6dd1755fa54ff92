"""Checks of a run's config before any work: every size and count by its own key (`check_counts`), and a
workdir's stored config against the one a rerun brings (`compare_with_workdir`), and the storing (`store_config`)."""
import json
import os
from pathlib import Path

from configs import defaults

COUNTS = {
    "train.batch_size": 1, "train.epochs": 1, "train.accumulate": 1, "train.log_every": 1,
    "train.keep_checkpoints": 1,
    "data.epoch_size": 1, "data.val_size": 1, "data.num_particles": 1, "data.workers": 0, "data.label_budget": 0,
    "data.length_grouping": 0, "data.synthetic_jets_per_group": 0,
    "layout.buckets": 1, "layout.groups": 1, "layout.slot_multiple": 1, "layout.eval_window": 1,
    "layout.sample_batches": 1,
    "optimizer.warmup_steps": 0,
    "knn.train_jets": 0, "knn.val_jets": 0, "knn.k": 1,
    "evaluate.embeddings": 0,
}
"""Integer config keys and their smallest allowed value (a key absent from a config is not checked)."""


def lookup(config, key):
    """The value of the dotted `key` in `config` (nested ConfigDicts or dicts), or None when absent."""
    value = config
    for part in key.split("."):
        if not hasattr(value, "get") or value.get(part) is None:
            return None
        value = value.get(part)
    return value


def check_counts(config):
    """Every key of COUNTS that `config` has: a whole number >= its minimum, and the epoch at least one batch;
    errors name the key and the allowed range."""
    for key, minimum in COUNTS.items():
        value = lookup(config, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"config.{key}={value!r}: give a whole number >= {minimum}")
    batch, epoch = lookup(config, "train.batch_size"), lookup(config, "data.epoch_size")
    if batch is not None and epoch is not None and epoch < batch:
        raise ValueError(f"config.data.epoch_size={epoch} is smaller than config.train.batch_size={batch}: an "
                         "epoch must hold at least one batch")


FIXED = ("mode", "seed", "model", "objective", "data.feature_set", "data.num_particles", "data.scheme",
         "data.task", "data.label_budget", "optimizer.name", "finetune.method", "finetune.unfreeze_blocks")
"""Keys (and sections) a run's state depends on: a workdir with checkpoints refuses a config that changes them."""




def stored_pair_mass(run):
    """model.pair_mass of the workdir `run` (runs saved before the key existed: 'reference')."""
    stored = flat(json.loads((Path(run) / "config.json").read_text()))
    return stored.get("model.pair_mass", defaults.SAVED_WITHOUT["model.pair_mass"])


def check_same_pair_mass(config, run, key="train.init_from"):
    """An encoder reused from the workdir `run` was trained on its own pair mass: the new run must compute it alike."""
    theirs, ours = stored_pair_mass(run), defaults.value(config, "model.pair_mass")
    if theirs != ours:
        raise ValueError(f"{key}={str(run)!r} was trained with model.pair_mass={theirs!r}, this config has "
                         f"{ours!r}: set --config.model.pair_mass={theirs}")


def flat(tree, prefix=""):
    """{dotted key: value} of the leaves of a nested dict."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def is_fixed(key):
    return any(key == f or key.startswith(f + ".") for f in FIXED)


def compare_with_workdir(config, workdir):
    """Checks a rerun in `workdir` (which holds checkpoints) against the stored config.json: a change of a FIXED
    key is an error naming every such key with both values; other changes are returned as lines to print once
    ([] when nothing changed or the workdir is new)."""
    stored_path = Path(workdir) / "config.json"
    if not stored_path.exists() or not (Path(workdir) / "checkpoints").exists():
        return []
    stored = {**defaults.SAVED_WITHOUT, **flat(json.loads(stored_path.read_text()))}
    new = flat(json.loads(config.to_json_best_effort()))
    changed = sorted(k for k in set(stored) & set(new) if stored[k] != new[k])  # keys newer than the run: its defaults
    refused = [k for k in changed if is_fixed(k)]
    if refused:
        differences = "; ".join(f"{k}: stored {stored.get(k)!r}, now {new.get(k)!r}" for k in refused)
        raise ValueError(f"{workdir} holds a run of other settings ({differences}): give a new --workdir, or "
                         f"rerun with the stored settings (its config.json)")
    return [f"{k}: {stored[k]!r} -> {new[k]!r}" for k in changed]


def store_config(config, workdir):
    """Writes `config` as the workdir's config.json in one step (a temporary file renamed over it): the other
    processes of a multi-process run read it in `compare_with_workdir` while the main process stores it, and must
    find the old file or the new one, never a half-written one."""
    temporary = Path(workdir) / f"config.json.{os.getpid()}.tmp"
    temporary.write_text(config.to_json_best_effort(indent=2))
    os.replace(temporary, Path(workdir) / "config.json")
