"""The study runner: matched settings across methods, a tiny study end to end with its report, skipping
finished stages and continuing an interrupted study, and the quickstart study (slow)."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import study as study_config
from configs import study_quickstart, study_sim
from jetjax import study

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_DIFFERENCES = {
    "ours": {"model.ffn", "model.ffn_ratio", "model.drop_path", "model.layer_scale_init", "model.head"},
    "ours_muon": {"model.ffn", "model.ffn_ratio", "model.drop_path", "model.layer_scale_init", "model.head",
                  "optimizer.name", "optimizer.muon_learning_rate"},
    "pretrain": {"mode", "train.epochs", "objective"},
    "finetune": {"mode", "train.epochs", "train.init_from"},
}
"""What each stage may change with respect to the ParT run: everything else is matched."""


def flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "objective":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(a, b):
    a, b = flatten(a.to_dict()), flatten(b.to_dict())
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_every_stage_matches_the_reference_run_but_for_its_method(tmp_path):
    config = study_config.get_config()
    plan = study.stages(config, tmp_path)
    assert [name for name, _, _ in plan] == ["ours", "ours_muon", "part", "supcon_pretrain", "supcon_finetune",
                                             "clipvae_pretrain", "clipvae_finetune", "jetclr_pretrain",
                                             "jetclr_finetune", "mpm_pretrain", "mpm_finetune"]
    configs = {name: c for name, _, c in plan}
    part = configs["part"]
    assert part.mode == "supervised" and "study" not in part and part.model == config.model
    for name, row, c in plan:
        kind = "pretrain" if name.endswith("_pretrain") else "finetune" if name.endswith("_finetune") else name
        assert differences(c, part) - {"evaluate.title"} <= ALLOWED_DIFFERENCES.get(kind, set()), name
        assert c.evaluate.title == row  # each classifier's tables name its method
        if kind == "pretrain":
            assert row is None and c.train.epochs == 50 and c.objective.name == name.split("_")[0]
        if kind == "finetune":
            assert c.train.init_from == str(tmp_path / name.replace("finetune", "pretrain"))
            assert c.train.epochs == 20 and row == study.METHODS[name.split("_")[0]]
    assert configs["supcon_pretrain"].objective.temperature == 0.07
    assert configs["ours_muon"].optimizer.name == "muon" and configs["ours"].model.ffn == "geglu"


@pytest.mark.parametrize("key,value,message", [
    ("objectives", ("supcon", "byol"), "study.objectives names 'byol'"),
    ("supervised", ("part", "ours_lion"), "study.supervised names 'ours_lion'"),
    ("tsne", ("mpm_pretrain",), "study.tsne names 'mpm_pretrain'"),
])
def test_unknown_stage_names_fail_naming_the_key(tmp_path, key, value, message):
    config = study_config.get_config()
    config.study.objectives = ("supcon",)
    config.study[key] = value
    with pytest.raises(ValueError, match=message):
        study.run(config, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was made


def test_the_study_configs_build():
    for module in (study_quickstart, study_sim):
        config = module.get_config()
        assert config.mode == "study"
        plan = study.stages(config, "runs/x")
        assert len(plan) == 11
        assert all(c.data == plan[0][2].data for _, _, c in plan)


def tiny_study():
    config = study_quickstart.get_config()
    config.data.update(dict(synthetic_jets_per_group=600, num_particles=16, epoch_size=640, val_size=256))
    config.model.update(dict(embed_dims=(16, 32, 16), pair_embed_dims=(8,), num_heads=2, num_layers=1,
                             num_cls_layers=1))
    config.train.update(dict(epochs=1, batch_size=64, log_every=5))
    config.optimizer.warmup_steps = 0
    config.study.update(dict(supervised=("part",), objectives=("mpm",), pretrain_epochs=1, finetune_epochs=1,
                             tsne=("mpm_pretrain", "part"), tsne_points=100))
    config.study.objective_settings.mpm.update(dict(decoder_width=16, decoder_layers=1, decoder_heads=2))
    return config


def test_tiny_study_reports_and_continues_where_it_stopped(tmp_path, capsys):
    results = study.run(tiny_study(), tmp_path)
    assert list(results) == ["ParT", "MPM"]  # the study's row order
    report = tmp_path / "report"
    with open(report / "table1_global.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Method", "Accuracy", "Macro AUC", "Micro AUC", "Macro-F1"]
    assert [r[0] for r in rows[1:]] == ["ParT", "MPM"]
    assert float(rows[1][2]) == pytest.approx(results["ParT"]["macro_auc"], abs=5e-4)
    assert {p.name for p in report.glob("*.png")} >= {"tsne.png", "roc_bb.png", "roc_qq.png"}
    assert "Table 1" in capsys.readouterr().out

    # as if stopped during the fine-tuning's evaluation: only that is redone, the rest is skipped
    best = tmp_path / "mpm_pretrain" / "checkpoints" / "best"
    before = {p: p.stat().st_mtime_ns for p in best.rglob("*")}
    (tmp_path / "mpm_finetune" / "evaluation" / "metrics.json").unlink()
    (report / "table1_global.csv").unlink()
    again = study.run(tiny_study(), tmp_path)
    out = capsys.readouterr().out
    assert "study: part done, skipped" in out and "study: mpm_pretrain done, skipped" in out
    assert "study: mpm_finetune (finetune, 1 epochs)" in out
    assert {p: p.stat().st_mtime_ns for p in best.rglob("*")} == before
    assert again["MPM"]["macro_auc"] == pytest.approx(results["MPM"]["macro_auc"], abs=1e-6)
    assert (report / "table1_global.csv").exists()


@pytest.mark.slow
def test_quickstart_study_end_to_end(tmp_path):
    # the README's quickstart command with epochs of 1,920 jets instead of 6,400 and 4 of its 11 runs (the suite's
    # time budget: each run costs ~30 s of compiling): Ours and ParT, SupCon pretrained and fine-tuned (the t-SNE's
    # two stages); every objective's own training is tested in test_objectives*.py
    result = subprocess.run([sys.executable, "-m", "jetjax.main", "--config", "configs/study_quickstart.py",
                             f"--workdir={tmp_path}", "--config.data.epoch_size=1920",
                             "--config.study.supervised=('ours', 'part')", "--config.study.objectives=('supcon',)",
                             f"--config.compile.cache_dir={tmp_path / 'xla_cache'}"],
                            cwd=ROOT,
                            capture_output=True, text=True, timeout=1800, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Table 1: Global metrics on the test set." in result.stdout
    table = json.loads((tmp_path / "report" / "table1_global.json").read_text())
    rows = {row[0]: dict(zip(table["columns"][1:], row[1:])) for row in table["rows"]}
    assert list(rows) == ["Ours (Supervised)", "Ours (SupCon)", "ParT"]  # the study's row order
    for method in ("Ours (Supervised)", "ParT"):  # measured 0.86-0.88 AUC, 0.63-0.66 accuracy; chance 0.5, ~1/7
        assert rows[method]["Macro AUC"] > 0.8 and rows[method]["Accuracy"] > 3 / 7
    assert (tmp_path / "report" / "tsne.png").exists()
    ours = tmp_path / "ours"  # one run workdir of the study: its log and both checkpoints
    assert {json.loads(line)["split"] for line in (ours / "metrics.jsonl").read_text().splitlines()} == {"compile", "train", "val"}
    assert (ours / "checkpoints" / "best").exists() and (ours / "checkpoints" / "latest").exists()
    assert any((tmp_path / "xla_cache").iterdir())  # compiled programs kept for the fine-tuning runs
