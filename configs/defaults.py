"""Defaults of the config sections and keys a run may lack, in one place: `base.get_config` builds new configs
from them, and the engine reads every such section through `section` and key through `value`, so that the
config of a run saved by an older jetjax (its workdir's config.json) still loads, with what it ran with.

Imports nothing of the engine (configs/ sits below jetjax/ in the import graph).
"""
import ml_collections
from ml_collections import config_dict


def _sections():
    """Fresh defaults of each optional section (fresh: a placeholder must not be shared between configs)."""
    return {
        # how batches are computed (never what): jetjax/feeding.py
        "layout": dict(mode="auto", buckets=4, groups=4, slot_multiple=16, eval_window=16, sample_batches=16),
        # pretraining: the kNN probe at each validation (jetjax/knn_validation.py)
        "knn": dict(train_jets=4096, val_jets=2048, k=20),
        # mode finetune: what trains (jetjax/finetune.py)
        "finetune": dict(method="full", unfreeze_blocks=2, head_learning_rate=config_dict.placeholder(float),
                         lora_rank=8, lora_alpha=16.0, lora_targets=("query", "key", "value", "out")),
        # mode probe: inverse L2 strengths tried (scikit-learn's C), L-BFGS iterations per fit (jetjax/probe.py)
        "probe": dict(c_grid=(0.01, 0.1, 1.0, 10.0, 100.0), max_iterations=1000),
        # XLA's programs: JAX's persistent compilation cache and its folder (jetjax/compilation.py)
        "compile": dict(cache=True, cache_dir=""),
        # a regression task instead of classification: the target jet column or 'a/b' ratio, the loss on the
        # standardised target (jetjax/regression.py)
        "regression": dict(target="", loss="mse", huber_delta=1.0),
    }


SECTIONS = tuple(_sections())

COLUMNS = ("part_px", "part_py", "part_pz", "part_energy", "part_charge", "part_isChargedHadron",
           "part_isNeutralHadron", "part_isPhoton", "part_isElectron", "part_isMuon", "part_d0val", "part_d0err",
           "part_dzval", "part_dzerr", "jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_label")
"""The columns the data pipeline reads, by their canonical (JetClass-II) names: config.data.columns maps each to
the name in a user's files (jetjax/data/chunks.py: which are particle, jet and label columns)."""

KEYS = {"train.accumulate": 1, "train.keep_checkpoints": 2, "data.label_budget": 0, "evaluate.title": None}
"""Keys added after the first runs were saved, with the value such runs ran with (= today's default)."""

SAVED_WITHOUT = {"model.pair_mass": "reference"}
"""Keys whose default changed when they were added: what runs saved before them ran with."""


def new_section(name):
    """A ConfigDict of section `name`'s defaults (for base.get_config)."""
    return ml_collections.ConfigDict(_sections()[name])


def _upgraded(name, saved):
    """Section `name` of an older run's config with renamed keys in today's form: `layout.packed` (a bool) became
    `layout.mode`."""
    if name == "layout" and "packed" in saved:
        packed = saved.pop("packed")
        saved.setdefault("mode", "packed" if packed else "dense")
    return saved


def section(config, name):
    """config.<name> (a ConfigDict or a saved config's dict) with the defaults filled in and older keys upgraded."""
    saved = _upgraded(name, dict(config.get(name) or {}))
    return ml_collections.ConfigDict({**_sections()[name], **saved})


def value(config, key):
    """config's value of the dotted `key` of KEYS or SAVED_WITHOUT; what a run saved without it ran with."""
    node = config
    for part in key.split("."):
        node = node.get(part) if hasattr(node, "get") else None
        if node is None:
            return {**KEYS, **SAVED_WITHOUT}[key]
    return node
