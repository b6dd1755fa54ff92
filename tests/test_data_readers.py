"""Readers: parquet and ROOT agree on the real JetClass-II jets, labels map as data/README.md says, file
discovery and splits, JetClass v1 one-hot labels, and bad input (missing column, unreadable file)."""
import json

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot
from conftest import shared_path

from jetjax.data import chunks, features, readers
from jetjax.data.classes import JETCLASS2_7, JETCLASS_10
from jetjax.data.pipeline import test_batches as natural_test_batches
from jetjax.data.chunks import DataError, DataReport
from jetjax.data.readers import discover_files, read_chunks

EXAMPLE = ("data", "jetclass2_example")
README_TASK = {0: "bb", 3: "qq", 12: "tauhtaue", 13: "tauhtaum", 14: "tauhtauh", 70: "qqb_bcs", 127: "qqb_bcs",
               **{label: "qcd" for label in range(161, 188)}}
"""The 7-class task of data/README.md, written out label by label."""


def example(suffix):
    return shared_path(*EXAMPLE, f"JetClassII_example.{suffix}")


def read_all(path, feature_set="full", chunk_size=33):
    return chunks.concatenate_chunks(read_chunks(path, features.required_particle_columns(feature_set),
                                                  chunk_size=chunk_size))


def test_parquet_and_root_read_identically():
    from_parquet, from_root = read_all(example("parquet")), read_all(example("root"))
    assert len(from_parquet) == 100 and from_parquet.counts.sum() > 1000
    np.testing.assert_array_equal(from_parquet.counts, from_root.counts)
    np.testing.assert_array_equal(from_parquet.raw_label, from_root.raw_label)
    assert set(from_parquet.particles) == set(from_root.particles)
    for name, values in from_parquet.particles.items():
        np.testing.assert_array_equal(values, from_root.particles[name], err_msg=name)
        assert values.dtype == from_root.particles[name].dtype, name
    for name, values in from_parquet.jets.items():
        np.testing.assert_array_equal(values, from_root.jets[name], err_msg=name)
    # and whole batches built from either file are identical
    batches = [list(natural_test_batches(files=[example(s)], feature_set="full", batch_size=64)) for s in
               ("parquet", "root")]
    for a, b in zip(*batches):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_real_labels_map_to_the_study_task_as_the_readme_says():
    chunk = read_all(example("parquet"))
    expected = [JETCLASS2_7.names.index(README_TASK[int(l)]) if int(l) in README_TASK else -1
                for l in chunk.raw_label]
    np.testing.assert_array_equal(JETCLASS2_7.class_index(chunk.raw_label), expected)
    names = json.loads(shared_path(*EXAMPLE, "jetclass2_label_names_188.json").read_text())
    for c in JETCLASS2_7.classes:
        for label in c.raw_labels:
            stem = names[label].replace("label_X_YY_", "").replace("label_X_", "").replace("label_", "")
            assert (stem.startswith("QCD") if c.name == "qcd" else stem in c.name.split("_")), (c.name, names[label])
    report = DataReport()
    batches = list(natural_test_batches(files=[example("parquet")], batch_size=1000, report=report))
    n_task = sum(l in README_TASK for l in chunk.raw_label.tolist())
    assert len(batches) == 1 and len(batches[0]["label"]) == n_task
    assert sum(report.excluded_labels.values()) == 100 - n_task
    assert set(report.excluded_labels) == {int(l) for l in chunk.raw_label if int(l) not in README_TASK}


def test_jetclass_v1_root_one_hot_labels(tmp_path):
    path = tmp_path / "HToBB_120.root"
    counts = np.array([2, 3, 1])
    flat = lambda dtype: ak.unflatten(np.arange(1, 7).astype(dtype), counts)
    branches = {n: flat(np.float32) for n in features.PARTICLE_VECTOR_COLUMNS}
    branches.update({n: flat(np.float32) * 0 for n in ("part_charge",)})
    branches.update({f"part_{n}": flat(np.float32) * 0 for n in ("isPhoton", "isElectron", "isMuon")})
    branches.update({n: np.full(3, 600.0, np.float32) for n in chunks.JET_COLUMNS})
    hot = [1, 8, None]
    for i, b in enumerate(JETCLASS_10.label_branches):
        branches[b] = np.array([float(h == i) for h in hot], np.float32)
    with uproot.recreate(path) as out:
        out["tree"] = branches
    chunk = chunks.concatenate_chunks(read_chunks(path, features.required_particle_columns("kin"),
                                                   JETCLASS_10.label_branches))
    np.testing.assert_array_equal(chunk.raw_label, [1, 8, -1])
    np.testing.assert_array_equal(chunk.counts, counts)
    assert readers.file_group(path) == "HToBB" and JETCLASS_10.classes[1].file_group == "HToBB"


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_discovery_of_flat_jetclass2_files_by_index_range(tmp_path):
    touch(tmp_path, "Res2P_0199.parquet", "Res2P_0200.parquet", "Res2P_0250.parquet", "Res34P_0859.root",
          "Res34P_0860.parquet", "QCD_0349.parquet", "QCD_0350.parquet", "QCD_0419.parquet", "notes.txt")
    names = lambda split: {g: [p.name for p in ps] for g, ps in discover_files(tmp_path, split).items()}
    assert names("train") == {"Res2P": ["Res2P_0199.parquet"], "Res34P": ["Res34P_0859.root"]}
    assert names("val") == {"Res2P": ["Res2P_0200.parquet"], "Res34P": ["Res34P_0860.parquet"],
                            "QCD": ["QCD_0349.parquet"]}
    assert names("test") == {"Res2P": ["Res2P_0250.parquet"], "QCD": ["QCD_0350.parquet", "QCD_0419.parquet"]}


def test_discovery_keeps_the_configured_format(tmp_path):
    touch(tmp_path / "train", "QCD_0000.root", "QCD_0000.parquet", "Res2P_0000.root", "Res2P_0000.parquet")
    names = lambda fmt: sorted(p.name for ps in discover_files(tmp_path, "train", file_format=fmt).values()
                               for p in ps)
    assert names("parquet") == ["QCD_0000.parquet", "Res2P_0000.parquet"]
    assert names("root") == ["QCD_0000.root", "Res2P_0000.root"]
    assert len(names("any")) == 4
    touch(tmp_path / "test", "QCD_0001.root")
    with pytest.raises(FileNotFoundError, match=r"no parquet files .* \(found 1 \.root\): set config.data.format"):
        discover_files(tmp_path, "test", file_format="parquet")
    with pytest.raises(ValueError, match="config.data.format='hdf5'"):
        discover_files(tmp_path, "train", file_format="hdf5")


def test_discovery_of_split_folders_and_explicit_lists(tmp_path):
    touch(tmp_path / "train_100M", "HToBB_10.root", "ZJetsToNuNu_11.root")
    touch(tmp_path / "test_20M", "HToBB_100.root")
    assert {g: len(p) for g, p in discover_files(tmp_path, "train").items()} == {"HToBB": 1, "ZJetsToNuNu": 1}
    with pytest.raises(FileNotFoundError, match="no val files"):
        discover_files(tmp_path, "val")
    touch(tmp_path / "other", "QCD_0001.parquet", "QCD_0002.parquet", "Res2P_0003.parquet")
    groups = discover_files(None, "val", files=[str(tmp_path / "other" / "QCD_*.parquet"),
                                                 str(tmp_path / "other" / "Res2P_0003.parquet")])
    assert {g: len(p) for g, p in groups.items()} == {"QCD": 2, "Res2P": 1}
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        discover_files(None, "train", files=[str(tmp_path / "nothing_here*.parquet")])
    with pytest.raises(FileNotFoundError, match="not a folder"):
        discover_files(tmp_path / "absent", "train")


def test_missing_column_names_file_and_column(tmp_path):
    table = pq.read_table(example("parquet"))
    path = tmp_path / "Res2P_0000.parquet"
    pq.write_table(table.drop_columns(["part_d0err"]), path)
    list(read_chunks(path, features.required_particle_columns("kinpid")))  # not needed: fine
    with pytest.raises(DataError, match=r"Res2P_0000\.parquet.*'part_d0err'"):
        list(read_chunks(path, features.required_particle_columns("full")))
    with pytest.raises(DataError, match=r"Res2P_0000\.parquet.*'part_d0err'"):  # never skipped
        list(natural_test_batches(files=[path], feature_set="full", skip_bad_files=True))


def test_unreadable_file_is_named_or_skipped_and_reported(tmp_path):
    good, bad = tmp_path / "QCD_0000.parquet", tmp_path / "QCD_0001.parquet"
    pq.write_table(pq.read_table(example("parquet")), good)
    bad.write_bytes(b"this is not a parquet file")
    with pytest.raises(DataError, match=r"QCD_0001\.parquet"):
        list(natural_test_batches(files=[good, bad]))
    report = DataReport()
    batches = list(natural_test_batches(files=[good, bad], skip_bad_files=True, report=report))
    assert sum(len(b["label"]) for b in batches) == sum(l in README_TASK for l in
                                                        pq.read_table(good)["jet_label"].to_pylist())
    assert [p for p, _ in report.skipped_files] == [str(bad)]
    assert "QCD_0001.parquet" in str(report) and report.as_dict()["skipped_files"][0]["path"] == str(bad)
    with pytest.raises(DataError, match=r"unknown file format"):
        list(read_chunks(tmp_path / "jets.csv", ("part_px",)))


def test_nonfinite_values_in_a_file_are_sanitised_and_counted(tmp_path):
    table = pq.read_table(example("parquet"))
    columns = {name: table[name].to_pylist() for name in ("part_px", "part_d0val")}
    first, second = [i for i, l in enumerate(table["jet_label"].to_pylist()) if l in README_TASK][:2]
    columns["part_px"][first][0] = float("nan")
    columns["part_d0val"][second][2] = float("inf")
    for name, values in columns.items():
        field = table.schema.field(name)
        table = table.set_column(table.schema.get_field_index(name), field, pa.array(values, field.type))
    path = tmp_path / "QCD_0000.parquet"
    pq.write_table(table, path)
    report = DataReport()
    (batch,) = natural_test_batches(files=[path], feature_set="full", batch_size=1000, report=report)
    assert report.counts["particles_nonfinite_dropped"] == 1 and report.counts["values_nonfinite_zeroed"] == 1
    assert all(np.all(np.isfinite(v)) for v in batch.values())


def test_recomputed_angles_match_the_stored_jetclass2_ones():
    """deta / dphi from the four-vectors about the stored jet axis equal the files' part_deta / part_dphi,
    and logptrel uses the stored jet_pt (the batch's jet is the stored jet four-vector rescaled)."""
    table = pq.read_table(example("parquet"), columns=["part_deta", "part_dphi", "part_px", "part_py", "jet_pt",
                                                       "jet_label"]).to_pydict()
    rows = [i for i, l in enumerate(table["jet_label"]) if l in README_TASK]
    (batch,) = natural_test_batches(files=[example("parquet")], batch_size=1000)
    names = features.FEATURE_SETS["kin"]
    for b, i in enumerate(rows):
        n = min(len(table["part_deta"][i]), 128)
        np.testing.assert_allclose(batch["features"][b, :n, names.index("deta")], table["part_deta"][i][:n], atol=1e-5)
        np.testing.assert_allclose(batch["features"][b, :n, names.index("dphi")], table["part_dphi"][i][:n], atol=1e-5)
        logptrel = np.log(np.hypot(table["part_px"][i][:n], table["part_py"][i][:n]) / table["jet_pt"][i])
        np.testing.assert_allclose(batch["features"][b, :n, names.index("logptrel")],
                                   np.clip((logptrel + 4.7) * 0.7, -5, 5), atol=1e-5)
