"""predict: a trained classifier's scores for new files equal the engine's evaluation of the same jets, every row
maps back to its input jet (carried columns), ROOT and parquet outputs agree, unreadable files are reported."""
import json

import jax
import numpy as np
import optax
import pyarrow.parquet as pq
import pytest
import uproot

from configs import predict as predict_config
from configs import quickstart
from jetjax import build, evaluation, predict, steps
from jetjax.checkpoint import Checkpoints
from jetjax.data import synthetic
from jetjax.data.classes import JETCLASS2_7

TINY = dict(embed_dims=(16, 32, 16), pair_embed_dims=(8,), num_heads=2, num_layers=1, num_cls_layers=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A classifier workdir (config.json and a best checkpoint of a seeded initialisation), evaluated."""
    root = tmp_path_factory.mktemp("predict")
    synthetic.write_dataset(root / "data", jets_per_group=600, seed=2)
    c = quickstart.get_config()
    c.data.update(dict(root=str(root / "data"), synthetic_jets_per_group=0, num_particles=16))
    c.model.update(TINY)
    c.train.batch_size = 32
    c.layout.update(dict(mode="dense", buckets=1))  # one compiled program (the engine tests cover packing)
    workdir = root / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(c.to_json_best_effort())
    model = build.build_model(c)
    state = steps.init_state(model, optax.sgd(0.1), build.example_batch(c, 8), jax.random.key(3))
    checkpoints = Checkpoints(workdir)
    checkpoints.save("best", 0, state, {"epoch": 0})
    checkpoints.wait()
    checkpoints.close()
    c.evaluate.embeddings = 10_000
    evaluation.evaluate(c, workdir)
    return workdir


def predict_into(run, out, files, **settings):
    c = predict_config.get_config()
    c.predict.update(dict(run=str(run), files=files, out=str(out), chunk_size=40, **settings))
    return predict.run(c)


def test_scores_equal_the_evaluation_and_rows_map_back(run, tmp_path):
    test_files = sorted((run.parent / "data" / "test").glob("*.parquet"))
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not a parquet file")
    summary = predict_into(run, tmp_path / "scores.parquet", ",".join(map(str, test_files + [bad])),
                           carry=("jet_label", "jet_pt"), embeddings=True)
    assert summary["files_failed"] == 1 and summary["failed_files"][0]["path"] == str(bad)
    assert json.loads((tmp_path / "scores.parquet.report.json").read_text())["files_failed"] == 1
    out = pq.read_table(tmp_path / "scores.parquet").to_pandas()
    for path in test_files:  # every jet of every readable file, in order, with its own columns
        mine = out[out["file"] == str(path)]
        source = pq.read_table(path, columns=["jet_label", "jet_pt"]).to_pandas()
        np.testing.assert_array_equal(mine["row"], np.arange(len(source)))
        np.testing.assert_array_equal(mine["jet_label"], source["jet_label"].to_numpy()[mine["row"]])
        np.testing.assert_array_equal(mine["jet_pt"], source["jet_pt"].to_numpy()[mine["row"]])
    assert summary["jets_written"] == len(out)
    # the evaluation's natural test stream: the task's jets in file-name order
    evaluation = np.load(run / "evaluation" / "predictions.npz")
    in_task = JETCLASS2_7.class_index(out["jet_label"].to_numpy()) >= 0
    scores = out[[f"score_{n}" for n in JETCLASS2_7.names]].to_numpy()[in_task]
    np.testing.assert_array_equal(JETCLASS2_7.class_index(out["jet_label"].to_numpy()[in_task]), evaluation["labels"])
    np.testing.assert_allclose(scores, evaluation["scores"], atol=2e-5)
    z = out[[f"z_{i}" for i in range(TINY["embed_dims"][-1])]].to_numpy()[in_task]
    np.testing.assert_allclose(z, evaluation["embeddings"], atol=2e-5)
    assert not np.allclose(scores, scores.mean(axis=0))  # the scores differ from jet to jet

    predict_into(run, tmp_path / "scores.root", str(test_files[0]), carry=("jet_label",))
    tree = uproot.open(tmp_path / "scores.root")["predictions"].arrays(library="np")
    first = out[out["file"] == str(test_files[0])]
    np.testing.assert_array_equal(tree["row"], first["row"])
    np.testing.assert_allclose(tree["score_qcd"], first["score_qcd"], atol=2e-5)
    assert list(tree["file"]) == [str(test_files[0])] * len(first)


def test_errors_name_the_key(run, tmp_path):
    with pytest.raises(ValueError, match="config.predict.out"):
        predict_into(run, tmp_path / "scores.csv", str(next((run.parent / "data" / "test").glob("*.parquet"))))
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="none of the 1 input files could be read"):
        predict_into(run, tmp_path / "scores.parquet", str(bad))
    with pytest.raises(FileNotFoundError, match="predict.run"):
        predict_into(tmp_path, tmp_path / "scores.parquet", str(bad))


def test_the_runs_column_map_is_the_default_and_overrides_change_only_what_differs(run, tmp_path):
    import shutil

    source = next((run.parent / "data" / "test").glob("*.parquet"))
    expected = predict_into(run, tmp_path / "plain.parquet", str(source))
    plain = pq.read_table(tmp_path / "plain.parquet").to_pandas()
    # a run trained on files whose px is stored as 'px' (its config.json maps it)
    renamed_run = tmp_path / "renamed_run"
    shutil.copytree(run, renamed_run, ignore=shutil.ignore_patterns("evaluation"))
    run_config = json.loads((renamed_run / "config.json").read_text())
    run_config["data"]["columns"]["part_px"] = "px"
    (renamed_run / "config.json").write_text(json.dumps(run_config))
    table = pq.read_table(source)
    renamed = tmp_path / source.name
    pq.write_table(table.rename_columns(["px" if n == "part_px" else n for n in table.column_names]), renamed)
    # the new files stored like the run's: no data override at all
    assert predict_into(renamed_run, tmp_path / "a.parquet", str(renamed))["jets_written"] == expected["jets_written"]
    a = pq.read_table(tmp_path / "a.parquet").to_pandas()
    np.testing.assert_array_equal(a["score_qcd"], plain["score_qcd"])
    # new files that differ in one column: only that column is given, the run's other names stay
    other = tmp_path / "other" / source.name
    other.parent.mkdir()
    pq.write_table(table.rename_columns(["px_new" if n == "part_px" else n for n in table.column_names]), other)
    c = predict_config.get_config()
    c.predict.update(dict(run=str(renamed_run), files=str(other), out=str(tmp_path / "b.parquet"), chunk_size=40))
    c.data.columns.part_px = "px_new"
    predict.run(c)
    np.testing.assert_array_equal(pq.read_table(tmp_path / "b.parquet").to_pandas()["score_qcd"], plain["score_qcd"])
    # without the override the run's name 'px' is looked for, and the file is reported as unreadable
    with pytest.raises(ValueError, match="none of the 1 input files could be read"):
        predict_into(renamed_run, tmp_path / "c.parquet", str(other))
