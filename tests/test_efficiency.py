"""The data-efficiency study: each (method, budget, seed) run differs from the others only by its method's config
values, its label budget and its seed; the report's mean and std against the statistics module; finished runs are
skipped; a tiny study end to end writes its table and figure and a rerun skips every stage (slow: each tiny run
costs about 35 s of CPU, mostly tracing and lowering the engine's programs)."""
import csv
import os
import subprocess
import sys
import json
import statistics
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from configs import efficiency as efficiency_config
from configs import efficiency_quickstart, transfer_quark_gluon, transfer_top_landscape
from jetjax import efficiency, metrics
from jetjax.data.classes import JETCLASS2_7
from tests.test_study import differences

ROOT = Path(__file__).resolve().parents[1]

EXISTING = ("scratch", "probe", "finetune")
"""The methods the engine runs today ('adapter' needs the fine-tuning modes' config.finetune section)."""


def test_runs_differ_only_by_method_budget_and_seed(tmp_path):
    config = efficiency_config.get_config()
    config.efficiency.methods = EXISTING
    plan = efficiency.stages(config, tmp_path)
    assert [name for name, _, _ in plan[:4]] == ["pretrain", "scratch/n100/seed0", "scratch/n100/seed1",
                                                  "scratch/n100/seed2"]
    assert len(plan) == 1 + 3 * 3 * 3
    pretrain = plan[0][2]
    assert pretrain.mode == "pretrain" and pretrain.objective.name == "jetclr" and pretrain.data.label_budget == 0
    reference = plan[1][2]
    for name, row, c in plan[1:]:
        method, budget, seed = row
        assert name == f"{method}/n{budget}/seed{seed}" and "efficiency" not in c
        assert (c.seed, c.data.label_budget, c.train.epochs) == (seed, budget, 20)
        assert c.mode == efficiency.METHODS[method][0]
        allowed = {"seed", "data.label_budget", "evaluate.title"} | ({"mode", "train.init_from"} if method != "scratch" else set())
        assert differences(c, reference) <= allowed, name
        if method != "scratch":
            assert c.train.init_from == str(tmp_path / "pretrain")


def test_methods_are_config_values_and_a_wrong_setting_fails_naming_it(tmp_path):
    config = efficiency_config.get_config()
    plan = {name: c for name, _, c in efficiency.stages(config, tmp_path)}
    assert plan["adapter/n100/seed0"].mode == "finetune" and plan["adapter/n100/seed0"].finetune.method == "adapter"
    assert plan["finetune/n100/seed0"].finetune.method == "full"
    config.efficiency.pretrained = "runs/elsewhere"
    plan = efficiency.stages(config, tmp_path)
    assert plan[0][0] != "pretrain" and plan[-1][2].train.init_from == "runs/elsewhere"
    for key, value, message in (("methods", ("scratch", "prompt"), "names 'prompt'"),
                                ("budgets", (100, 0.5), "whole numbers"), ("seeds", (), "seeds is empty")):
        bad = efficiency_config.get_config()
        bad.efficiency[key] = value
        with pytest.raises(ValueError, match=message):
            efficiency.stages(bad, tmp_path)


def test_transfer_configs_pretrain_on_jetclass2_and_train_on_the_benchmark(tmp_path):
    for module, scheme, feature_set in ((transfer_top_landscape, "top_landscape", "kin"),
                                        (transfer_quark_gluon, "quark_gluon", "kinpid")):
        config = module.get_config()
        config.efficiency.methods = EXISTING
        plan = efficiency.stages(config, tmp_path)
        pretrain, classifier = plan[0][2], plan[-1][2]
        assert (pretrain.data.scheme, pretrain.data.root, pretrain.data.feature_set) == \
            ("jetclass2_7", "data/JetClass-II", feature_set)
        assert (classifier.data.scheme, classifier.data.feature_set, classifier.data.label_budget) == \
            (scheme, feature_set, 100_000)


def test_rows_are_the_mean_and_sample_std_over_seeds(tmp_path):
    runs = [dict(method=m, budget=b, seed=s, macro_auc=0.5 + 0.1 * s + b / 1e4 + (m == "finetune") * 0.05,
                 accuracy=0.2 + 0.01 * s * s + b / 1e5) for m in ("scratch", "finetune") for b in (1000, 100)
            for s in (0, 1, 2)]
    rows = efficiency.write_report(runs, tmp_path)
    assert [(r["method"], r["budget"]) for r in rows] == [("scratch", 100), ("scratch", 1000), ("finetune", 100),
                                                          ("finetune", 1000)]
    for row in rows:
        mine = [r for r in runs if (r["method"], r["budget"]) == (row["method"], row["budget"])]
        for key in ("macro_auc", "accuracy"):
            assert row[key] == pytest.approx(statistics.mean(r[key] for r in mine))
            assert row[f"{key}_std"] == pytest.approx(statistics.stdev(r[key] for r in mine))
    gains = json.loads((tmp_path / "efficiency.json").read_text())["gain_over_scratch"]
    assert gains == ["Full fine-tune at 100 labels: macro AUC +0.050 +- 0.141 against from scratch",
                     "Full fine-tune at 1000 labels: macro AUC +0.050 +- 0.141 against from scratch"]
    assert (tmp_path / "efficiency.png").stat().st_size > 10_000


def test_finished_runs_are_skipped_and_reported(tmp_path, capsys):
    rng = np.random.default_rng(0)
    config = efficiency_quickstart.get_config()
    config.efficiency.update(dict(methods=("scratch", "finetune"), pretrained=str(tmp_path / "elsewhere")))
    config.data.root = str(tmp_path / "data")  # never read: every stage is done
    config.data.synthetic_jets_per_group = 0
    expected = {}
    for name, _, _ in efficiency.stages(config, tmp_path):
        labels = rng.integers(0, 7, 300)
        scores = rng.dirichlet(np.ones(7), 300)
        scores[np.arange(300), labels] += rng.uniform(0, 2)
        values = metrics.evaluate(scores / scores.sum(axis=1, keepdims=True), labels, JETCLASS2_7.names, "qcd")
        (tmp_path / name / "evaluation").mkdir(parents=True)
        metrics.write_json(tmp_path / name / "evaluation" / "metrics.json", values)
        expected[name] = values
    rows = efficiency.run(config, tmp_path)
    assert capsys.readouterr().out.count("done, skipped") == 8
    first = [expected[f"finetune/n1000/seed{s}"]["accuracy"] for s in (0, 1)]
    assert rows[-1]["accuracy"] == pytest.approx(np.mean(first))
    assert (tmp_path / "report" / "efficiency.csv").exists()


def tiny_study():
    config = efficiency_quickstart.get_config()
    config.data.update(dict(synthetic_jets_per_group=600, num_particles=16, epoch_size=128, val_size=128))
    config.model.update(dict(embed_dims=(16, 16, 16), pair_embed_dims=(8, 8, 8), num_heads=2, num_layers=1,
                             num_cls_layers=1))
    config.train.update(dict(epochs=1, batch_size=64, log_every=5))
    config.optimizer.warmup_steps = 0
    config.efficiency.update(dict(methods=("scratch", "finetune"), budgets=(20, 60), seeds=(3,), pretrain_epochs=1))
    config.efficiency.pretrain_data.epoch_size = 128
    config.efficiency.objective = ml_collections.ConfigDict(dict(name="mpm", mask_fraction=0.3, decoder_width=16,
                                                                 decoder_layers=1, decoder_heads=2))
    return config


@pytest.mark.slow
def test_tiny_study_writes_its_table_and_figure_and_a_rerun_skips_every_stage(tmp_path, capsys):
    rows = efficiency.run(tiny_study(), tmp_path)
    assert [(r["method"], r["budget"], r["seeds"]) for r in rows] == [("scratch", 20, 1), ("scratch", 60, 1),
                                                                      ("finetune", 20, 1), ("finetune", 60, 1)]
    report = tmp_path / "report"
    with open(report / "efficiency.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["Method", "Labels", "Seeds", "Macro AUC", "Macro AUC std", "Accuracy", "Accuracy std"]
    evaluated = metrics.read_json(tmp_path / "finetune" / "n60" / "seed3" / "evaluation" / "metrics.json")
    assert table[4][:3] == ["Full fine-tune", "60", "1"]
    assert float(table[4][3]) == pytest.approx(evaluated["macro_auc"], abs=5e-4)
    assert float(table[4][5]) == pytest.approx(evaluated["accuracy"], abs=5e-4)
    saved = json.loads((report / "efficiency.json").read_text())
    assert len(saved["runs"]) == 4 and saved["gain_over_scratch"][0].startswith("Full fine-tune at 20 labels")
    assert (report / "efficiency.png").stat().st_size > 10_000
    assert "Full fine-tune" in (report / "efficiency.md").read_text()
    run_config = json.loads((tmp_path / "scratch" / "n20" / "seed3" / "config.json").read_text())
    assert run_config["data"]["label_budget"] == 20 and run_config["seed"] == 3

    best = tmp_path / "pretrain" / "checkpoints" / "best"
    before = {p: p.stat().st_mtime_ns for p in best.rglob("*")}
    capsys.readouterr()
    again = efficiency.run(tiny_study(), tmp_path)
    out = capsys.readouterr().out
    assert out.count("done, skipped") == 5 and "epochs)" not in out
    assert {p: p.stat().st_mtime_ns for p in best.rglob("*")} == before
    assert again == rows


def test_a_schedule_too_short_for_its_warmup_fails_before_any_work(tmp_path):
    config = efficiency_quickstart.get_config()
    config.efficiency.methods = ("scratch",)
    config.optimizer.warmup_steps = 60  # the classifiers' 3 epochs of 20 steps
    with pytest.raises(ValueError, match="warmup_steps=60"):
        efficiency.run(config, tmp_path)
    assert not any(tmp_path.iterdir())


PARSE = """
import sys
from absl import flags
from ml_collections import config_flags
from jetjax import efficiency
config = config_flags.DEFINE_config_file("config", lock_config=True)
flags.FLAGS(sys.argv)
stages = efficiency.stages(config.value, "workdir")
print(stages[0][0], stages[0][2].data.root, stages[0][2].data.format, stages[-1][2].data.root)
"""


@pytest.mark.parametrize("name", ["efficiency", "efficiency_quickstart", "transfer_top_landscape"])
def test_documented_pretrain_data_override_reaches_the_pretraining_stage(name):
    # docs/efficiency.md: --config.efficiency.pretrain_data.root=data/jetclass2_sim on any efficiency config,
    # parsed as jetjax.main parses it (a locked config: unknown keys fail)
    done = subprocess.run([sys.executable, "-c", PARSE, f"--config=configs/{name}.py",
                           "--config.efficiency.pretrain_data.root=data/jetclass2_sim",
                           "--config.efficiency.pretrain_data.format=parquet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    stage, root, file_format, classifier_root = done.stdout.split()
    expected_classifier_root = {"efficiency": "data/jetclass2_sim", "efficiency_quickstart": "None",
                                "transfer_top_landscape": "data/TopLandscape"}[name]
    assert (stage, root, file_format, classifier_root) == ("pretrain", "data/jetclass2_sim", "parquet",
                                                           expected_classifier_root)
