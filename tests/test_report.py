"""The study's tables from two fake runs: exact rows and columns (parsed back from CSV), values, figures."""
import csv
import json
import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from conftest import shared_path
from jetjax import metrics, report
from jetjax.data.classes import JETCLASS2_7

TITLES = dict(zip(JETCLASS2_7.names, JETCLASS2_7.titles))
STUDY_TITLES = ["bb", "tau_h tau_e", "tau_h tau_mu", "tau_h tau_h", "qqb/bcs", "qq", "QCD"]
EXPECTED_COLUMNS = {
    "table1_global": ["Method", "Accuracy", "Macro AUC", "Micro AUC", "Macro-F1"],
    "table2_auc": ["Method"] + [f"AUC_{t}" for t in STUDY_TITLES],
    "table3_rejection": ["Method"] + [f"Rej_{t}" for t in STUDY_TITLES[:-1]],
    "table4_signal_efficiency": ["Method"] + [f"eps_S_{t}" for t in STUDY_TITLES[:-1]],
}
RUNS = {"Ours (Supervised)": 6.0, "Ours (SupCon)": 1.0}
"""Fake runs: name -> how far the true class's logit is pushed up (6: near-perfect, infinite rejections)."""


def fake_run(signal, seed, n=4000):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, n)
    logits = rng.normal(size=(n, 7))
    logits[np.arange(n), labels] += signal
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return metrics.evaluate(scores, labels, JETCLASS2_7.names, background="qcd")


@pytest.fixture(scope="module")
def results():
    return {run: fake_run(signal, seed) for seed, (run, signal) in enumerate(RUNS.items())}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_tables_have_the_study_rows_and_columns(results, tmp_path):
    table1 = report.write_tables(results, tmp_path, TITLES)
    for name, columns in EXPECTED_COLUMNS.items():
        header, *rows = read_csv(tmp_path / f"{name}.csv")
        assert header == columns
        assert [row[0] for row in rows] == list(RUNS)
        assert all(len(row) == len(columns) for row in rows)
        stored = json.loads((tmp_path / f"{name}.json").read_text())
        assert stored["columns"] == columns and [row[0] for row in stored["rows"]] == list(RUNS)
        assert (tmp_path / f"{name}.md").read_text().count("\n| ") == len(RUNS) + 1
    assert table1 == (tmp_path / "table1_global.md").read_text()
    assert table1.splitlines()[2] == "| " + " | ".join(EXPECTED_COLUMNS["table1_global"]) + " |"


def test_table_headers_match_the_study_text(results):
    """Table 1's header is the study's header line; Tables 2-4 have the study's number of columns."""
    lines = shared_path("reference", "000_de1800cb20b26312.txt").read_text().splitlines()
    study_headers = [line.split("\t") for line in lines if line.startswith("Method\t")]
    ours = [t["columns"] for t in report.study_tables(results, TITLES)]
    assert len(study_headers) == 4
    assert ours[0] == study_headers[0]
    assert [len(c) for c in ours] == [len(c) for c in study_headers]


def test_table_values_are_the_evaluated_numbers_as_the_study_prints_them(results, tmp_path):
    report.write_tables(results, tmp_path, TITLES)
    table1 = {row[0]: row[1:] for row in read_csv(tmp_path / "table1_global.csv")[1:]}
    table2 = {row[0]: row[1:] for row in read_csv(tmp_path / "table2_auc.csv")[1:]}
    table3 = {row[0]: row[1:] for row in read_csv(tmp_path / "table3_rejection.csv")[1:]}
    table4 = {row[0]: row[1:] for row in read_csv(tmp_path / "table4_signal_efficiency.csv")[1:]}
    for run, r in results.items():
        global_values = [r["accuracy"], r["macro_auc"], r["micro_auc"], r["macro_f1"]]
        assert all(len(cell.split(".")[1]) == 3 for cell in table1[run])
        assert [float(c) for c in table1[run]] == pytest.approx(global_values, abs=5e-4)
        assert [float(c) for c in table2[run]] == pytest.approx(
            [r["per_class"][c]["auc"] for c in JETCLASS2_7.names], abs=5e-4)
        signal_classes = JETCLASS2_7.names[:-1]
        for cell, name in zip(table3[run], signal_classes):
            rejection = r["per_class"][name]["rejection"]
            assert cell == "inf" if math.isinf(rejection) else int(cell) == round(rejection)
        assert [float(c) for c in table4[run]] == pytest.approx(
            [r["per_class"][c]["signal_efficiency"] for c in signal_classes], abs=5e-4)
    assert "inf" in table3["Ours (Supervised)"]
    stored = metrics.read_json(tmp_path / "table3_rejection.json")
    assert stored["rows"][1][1:] == [results["Ours (SupCon)"]["per_class"][c]["rejection"]
                                     for c in JETCLASS2_7.names[:-1]]


def test_runs_on_other_classes_are_refused(results, tmp_path):
    other = dict(results)
    other["odd"] = dict(results["Ours (SupCon)"], class_names=list(STUDY_TITLES))
    with pytest.raises(ValueError, match="run 'odd' has class_names"):
        report.write_tables(other, tmp_path)


def test_figures_are_written(results, tmp_path):
    paths = report.plot_roc_curves(results, tmp_path, TITLES)
    assert sorted(p.name for p in paths) == sorted(f"roc_{n}.png" for n in JETCLASS2_7.names[:-1])
    assert all(p.stat().st_size > 1000 for p in paths)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 400)
    embeddings = {run: (rng.normal(size=(400, 8)) + 3 * np.eye(7, 8)[labels], labels) for run in RUNS}
    with threadpool_limits(1):  # OpenMP threads of t-SNE spin for seconds on a busy 2-core machine
        path = report.plot_tsne(embeddings, JETCLASS2_7.titles, tmp_path / "tsne.png", max_points=150)
    assert path.stat().st_size > 1000


def test_training_curves_read_back_what_the_run_logged(tmp_path):
    from jetjax.train import MetricsLog

    log = MetricsLog(tmp_path)
    log.write("train", 10, {"loss": 2.0, "accuracy": 0.1})
    log.write("val", 20, {"loss": 1.7, "val_macro_auc": 0.6})
    log.write("train", 20, {"loss": 1.5, "accuracy": 0.3})
    log.write("train", 30, {"loss": 1.0})  # a record without accuracy
    log.close()
    curves = report.read_metrics_log(tmp_path / "metrics.jsonl")
    assert sorted(curves) == ["train", "val"]
    assert curves["train"]["step"].tolist() == [10, 20, 30] and curves["train"]["loss"].tolist() == [2.0, 1.5, 1.0]
    np.testing.assert_array_equal(curves["train"]["accuracy"], [0.1, 0.3, np.nan])
    assert curves["val"]["val_macro_auc"].tolist() == [0.6]
    path = report.plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "figures" / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty.jsonl holds no records"):
        report.read_metrics_log(tmp_path / "empty.jsonl")
