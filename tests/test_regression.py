"""Regression tasks (jetjax/regression.py): the loss against a loop, resolution and bias against scipy, the target
read from the files' columns (real JetClass-II jets), bad targets dropped and counted, a run through the engine
that learns the target and predicts it in its units (evaluate, predict), every fine-tuning method training a
regression head, and the modes that cannot serve a regression run saying so."""
import importlib
import itertools
import json

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.stats

from configs import predict as predict_config
from conftest import shared_path, toy_jets
from jetjax import (build, checkpoint, efficiency, export, finetune, losses, metrics, optim, physics, predict, probe,
                    regression, scaling, study, train)
from jetjax.data import features, pipeline
from jetjax.data.chunks import ColumnMap, DataError, DataReport, JetChunk, MissingColumnError
from jetjax.data.classes import get_scheme
from jetjax.data.readers import read_chunks
from jetjax.steps import init_state, make_train_step
from test_finetune import TINY as FINETUNE_TINY
from test_finetune import config as finetune_config
from test_finetune import flat
from test_train import tiny_config


@pytest.mark.parametrize("loss,delta", [("mse", 1.0), ("huber", 1.0), ("huber", 0.3)])
def test_the_regression_loss_equals_a_loop(loss, delta):
    rng = np.random.default_rng(0)
    pred, target = rng.normal(0, 1, 50), rng.normal(0, 1.5, 50)
    errors = []
    for p, t in zip(pred, target):
        d = abs(p - t)
        errors.append(d * d if loss == "mse" else (0.5 * d * d if d < delta else delta * (d - 0.5 * delta)))
    value, metrics = losses.regression(pred, target, loss, delta)
    assert float(value) == pytest.approx(np.mean(errors), rel=1e-5)
    assert float(metrics["rmse"]) == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)), rel=1e-5)


def test_bias_and_resolution_are_the_median_and_half_the_iqr_of_the_relative_error():
    rng = np.random.default_rng(1)
    targets = rng.uniform(0.05, 0.4, 400)
    targets[:7] = 0.0  # left out of the relative figures, counted
    labels = rng.integers(0, 2, 400)
    predictions = targets * rng.normal(1.03, 0.1, 400) + 0.01 * labels
    values = regression.resolution_metrics(predictions, targets, labels, ["a", "b"])
    kept = targets != 0
    r = (predictions[kept] - targets[kept]) / targets[kept]
    assert values["bias"] == pytest.approx(np.median(r))
    assert values["resolution"] == pytest.approx(scipy.stats.iqr(r) / 2)
    assert values["jets_zero_target"] == 7 and values["jets"] == 400
    assert values["rmse"] == pytest.approx(np.sqrt(np.mean((predictions - targets) ** 2)))
    for k, name in enumerate("ab"):
        rk = r[labels[kept] == k]
        assert values["per_class"][name]["resolution"] == pytest.approx(scipy.stats.iqr(rk) / 2)
    assert "| all | 400 |" in regression.table("run", values)


def test_target_columns_are_a_column_or_a_ratio():
    c = tiny_config()
    assert regression.target_columns(c) == () and regression.task(c) is None
    for target, columns in (("jet_sdmass", ("jet_sdmass",)), ("jet_sdmass / jet_pt", ("jet_sdmass", "jet_pt"))):
        c.regression.target = target
        assert regression.target_columns(c) == columns
    for bad in ("a/b/c", "jet_sdmass/", "/jet_pt"):
        c.regression.target = bad
        with pytest.raises(ValueError, match="config.regression.target"):
            regression.target_columns(c)
    c.regression.update(dict(target="jet_sdmass", loss="l1"))
    with pytest.raises(ValueError, match="config.regression.loss='l1'"):
        regression.task(c)


def test_the_target_is_read_from_the_files_as_a_column_or_a_ratio():
    path = shared_path("data", "jetclass2_example", "JetClassII_example.parquet")
    table = pq.read_table(path, columns=["jet_sdmass", "jet_pt", "jet_label"]).to_pandas()
    scheme = get_scheme("jetclass2_7")
    task_jets = table[np.isin(table.jet_label, [r for c in scheme.classes for r in c.raw_labels])]
    assert len(task_jets) > 10
    for target, expected in ((("jet_sdmass",), task_jets.jet_sdmass), (("jet_sdmass", "jet_pt"),
                                                                         task_jets.jet_sdmass / task_jets.jet_pt)):
        batches = pipeline.test_batches(files=[str(path)], batch_size=16, column_map=ColumnMap(target=target))
        got = np.concatenate([b["target"] for b in batches])
        np.testing.assert_allclose(got, np.asarray(expected, np.float32), rtol=1e-6)


def test_a_target_column_the_files_lack_is_named_with_its_config_key():
    path = shared_path("data", "jetclass2_example", "JetClassII_example.parquet")
    with pytest.raises(MissingColumnError, match=r"'jet_mass' \(config.regression.target\)"):
        next(read_chunks(path, ("part_px",), column_map=ColumnMap(target=("jet_mass", "jet_pt"))))


def test_jets_with_a_non_finite_target_are_dropped_and_counted():
    rng = np.random.default_rng(2)
    counts = np.array([3, 2, 4])
    n = counts.sum()
    particles = {c: rng.uniform(1, 10, n).astype(np.float32) for c in ("part_px", "part_py", "part_pz")}
    particles["part_energy"] = 20 + particles["part_px"]
    chunk = JetChunk("f.parquet", counts, particles, {"target": np.array([0.1, np.inf, np.nan])}, np.zeros(3))
    report = DataReport()
    cleaned = features.clean(chunk, report)
    assert len(cleaned) == 1 and cleaned.jets["target"][0] == 0.1
    assert report.counts["jets_bad_target_dropped"] == 2


def test_benchmark_formats_have_no_target_column():
    with pytest.raises(DataError, match="regression target"):
        next(read_chunks("train.h5", ("part_px",), column_map=ColumnMap(target=("jet_sdmass",))))


def regression_config(mode="supervised"):
    c = tiny_config(mode)
    c.regression.target = "jet_sdmass/jet_pt"
    c.data.update(dict(epoch_size=1280, val_size=256))
    c.train.update(dict(epochs=2, log_every=5))
    c.optimizer.learning_rate = 3e-3
    c.layout.update(dict(mode="dense", buckets=1))
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("regression")
    config = regression_config()
    train.fit(config, workdir)
    return config, workdir


def test_a_regression_run_learns_its_target_and_keeps_its_scale(trained):
    config, workdir = trained
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    validation = [r for r in records if r["split"] == "val"]
    assert validation[-1]["val_loss"] < 0.5 * validation[0]["val_loss"] or validation[-1]["val_loss"] < 0.3
    assert {"bias", "resolution", "mse"} <= set(validation[-1])
    # the standardisation: mean and std of the targets of the run's first training batches, kept in the checkpoint
    sampler = pipeline.training_sampler(**build.data_settings(config, workdir), batch_size=64, epoch_size=1280,
                                        seed=config.seed)
    first = np.concatenate([b["target"] for b in itertools.islice(sampler.batches(0), regression.SCALE_BATCHES)])
    scale = checkpoint.best_checkpoint(workdir, "run")["batch_stats"]["target_scale"]
    np.testing.assert_allclose(scale, [first.mean(), first.std()], rtol=1e-5)
    # evaluation: the test jets' true targets, predictions in their units, better than predicting the mean
    saved = np.load(workdir / "evaluation" / "predictions.npz")
    values = metrics.read_json(workdir / "evaluation" / "metrics.json")
    assert values["rmse"] < 0.7 * np.std(saved["targets"])
    expected = regression.resolution_metrics(saved["predictions"], saved["targets"], saved["labels"],
                                             get_scheme("jetclass2_7").names)
    for name, figures in [("all", values), *values.pop("per_class").items()]:
        reference = {k: v for k, v in (expected if name == "all" else expected["per_class"][name]).items()
                     if k != "per_class"}
        assert figures == pytest.approx(reference), name
    assert (workdir / "evaluation" / "response.png").stat().st_size > 10_000
    assert 0.05 < np.median(saved["targets"]) < 0.3  # soft-drop mass over pT of these jets


def test_predict_writes_the_same_predictions(trained, tmp_path):
    config, workdir = trained
    c = predict_config.get_config()
    c.predict.update(dict(run=str(workdir), files=str(workdir / "data" / "test" / "*.parquet"),
                          out=str(tmp_path / "p.parquet"), carry=("jet_label",)))
    predict.run(c)
    table = pq.read_table(tmp_path / "p.parquet").to_pandas()
    assert "prediction" in table and not any(k.startswith("score_") for k in table)
    saved = np.load(workdir / "evaluation" / "predictions.npz")
    task = np.isin(table.jet_label, [r for k in get_scheme("jetclass2_7").classes for r in k.raw_labels])
    np.testing.assert_allclose(table.prediction[task], saved["predictions"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["study_quickstart", "efficiency_quickstart", "scaling_quickstart"])
def test_the_studies_of_classifiers_refuse_a_regression_task(name, tmp_path):
    c = importlib.import_module(f"configs.{name}").get_config()
    c.regression.target = "jet_sdmass/jet_pt"
    runner = {"study": study, "efficiency": efficiency, "scaling": scaling}[c.mode]
    with pytest.raises(ValueError, match="compares classifiers"):
        runner.stages(c, tmp_path)


def test_probe_and_export_refuse_a_regression_run(trained, tmp_path):
    config, workdir = trained
    c = regression_config("probe")
    c.train.init_from = str(workdir)
    with pytest.raises(ValueError, match="regression.target"):
        probe.fit(c, tmp_path)
    with pytest.raises(ValueError, match="regression run"):
        export.load_run(workdir)


def with_mass_target(batch):
    """A toy batch whose target is its jet's mass over pT (learnable from the particles)."""
    jet = np.asarray(batch["jet"], np.float64)
    return {**batch, "target": (np.sqrt(np.maximum(physics.mass2(jet), 0)) / physics.pt(jet)).astype(np.float32)}


@pytest.mark.parametrize("method", ["full", "adapter", "last_k", "lora"])
def test_every_fine_tuning_method_trains_a_regression_head(method):
    c = finetune_config(method)
    c.regression.target = "jet_sdmass/jet_pt"
    model = build.build_model(c)
    tx = optim.make_optimizer(200, **{**c.optimizer, "learning_rate": 3e-3},
                              **finetune.optimizer_settings(c, FINETUNE_TINY["num_layers"]))
    data = [with_mass_target(toy_jets(seed, batch=32, slots=16, lengths=None)) for seed in range(4)]
    targets = np.concatenate([b["target"] for b in data])
    model = model.with_training_batches(data)
    state = init_state(model, tx, data[0], jax.random.key(0))
    encoder_before = flat(jax.device_get(state.params["encoder"]))
    step, history = make_train_step(model, tx), []
    for i in range(60):
        state, metrics = step(state, data[i % 4], None)
        history.append(float(metrics["loss"]))
    assert np.mean(history[-8:]) < 0.7 * np.mean(history[:8]), (history[:8], history[-8:])
    np.testing.assert_allclose(state.batch_stats["target_scale"], [targets.mean(), targets.std()], rtol=1e-5)
    encoder_after = flat(jax.device_get(state.params["encoder"]))
    unchanged = [k for k in encoder_before if encoder_before[k].tobytes() == encoder_after[k].tobytes()]
    if method in ("adapter", "lora"):  # pretrained weights frozen bit for bit
        assert set(unchanged) >= {k for k in encoder_before if not finetune.is_lora(k.split("/")[-1])
                                  and not k.startswith("head")}
