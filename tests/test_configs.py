"""Every experiment config loads, passes its values to the code it names, and builds its model."""
import importlib
import json

import jax
import pytest

from jetjax import build, optim
from jetjax.data.classes import get_scheme

CONFIGS = [("supervised_part", None), ("supervised_ours", None), ("supervised_ours_muon", None),
           ("quickstart", None), ("part_versions", "3.5")] + [
    (o, s) for o in ("supcon", "jetclr", "mpm", "clipvae", "vicreg", "simsiam", "moco", "jepa") for s in ("pretrain", "finetune")]


@pytest.mark.parametrize("name,stage", CONFIGS, ids=[f"{n}:{s}" if s else n for n, s in CONFIGS])
def test_config_builds_its_model_and_optimizer(name, stage):
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config(stage) if stage else module.get_config()
    model = build.build_model(config)
    batch = build.example_batch(config, 2)
    shapes = jax.eval_shape(model.init, jax.random.key(0), batch, jax.random.key(1))
    tx = optim.make_optimizer(100, **config.optimizer)
    jax.eval_shape(tx.init, shapes["params"])
    assert get_scheme(config.data.scheme).num_classes == 7
    if config.mode == "finetune":
        assert config.train.init_from == f"runs/{name}_pretrain"


def test_the_study_settings():
    config = importlib.import_module("configs.supcon").get_config("pretrain")
    assert (config.data.epoch_size, config.train.batch_size, config.optimizer.learning_rate) == (2_000_000, 256, 1e-4)
    assert (config.optimizer.clip_norm, config.train.epochs, config.objective.temperature) == (1.0, 50, 0.07)
    assert importlib.import_module("configs.mpm").get_config("finetune").train.epochs == 20


def test_misspelt_override_fails_naming_the_key(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "jetjax.main", "--config", "configs/quickstart.py",
                             f"--workdir={tmp_path}", "--config.model.num_layerz=3"], cwd=root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "num_layerz" in result.stderr
    assert not (tmp_path / "data").exists()  # failed before any work


def test_the_config_of_an_older_run_reads_what_it_ran_with():
    """A config.json saved before the optional sections and keys existed (configs/defaults.py), and with the
    old `layout.packed` switch, loads with the defaults of its time; a new config carries the same defaults."""
    import ml_collections

    from configs import base, defaults
    from jetjax import feeding, finetune, probe

    saved = json.loads(base.get_config().to_json())
    for name in defaults.SECTIONS:
        del saved[name]
    del saved["train"]["accumulate"], saved["data"]["label_budget"], saved["model"]["pair_mass"]
    saved["layout"] = {"packed": False, "buckets": 2}
    config = ml_collections.ConfigDict(saved)
    layout = feeding.layout_settings(config)
    assert (layout.mode, layout.buckets, layout.groups) == ("dense", 2, 4)
    assert finetune.settings(config).method == "full" and probe.probe_settings(config).max_iterations == 1000
    assert defaults.section(config, "knn").k == 20 and defaults.section(config, "compile").cache
    assert build.micro_batch_size(config) == config.train.batch_size
    assert defaults.value(config, "data.label_budget") == 0
    assert defaults.value(config, "model.pair_mass") == "reference"  # its default changed since
    new = base.get_config()
    assert new.model.pair_mass == "stable" and defaults.value(new, "model.pair_mass") == "stable"
    for name in defaults.SECTIONS:
        assert new[name].to_dict() == defaults.section(ml_collections.ConfigDict(), name).to_dict(), name
