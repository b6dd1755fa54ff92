"""Tasks and columns as data in the config: a config-defined task equal to jetclass2_7 gives the built-in
scheme's batches; a user's parquet / ROOT files with other column names and tree give the original files'
batches through config.data.columns; missing columns fail naming the file, the column, its config key and a
feature set that works."""
import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot

from configs import base
from jetjax import build
from jetjax.data import classes, pipeline, synthetic
from jetjax.data.chunks import MissingColumnError

RENAMED = {"part_px": "pf_px", "part_py": "pf_py", "part_pz": "pf_pz", "part_energy": "pf_e",
           "part_charge": "pf_q", "part_isPhoton": "pf_gamma", "jet_pt": "fj_pt", "jet_label": "truth"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("jets")
    synthetic.write_dataset(root, jets_per_group=400, seed=3)
    return root


def config_for(root, **task):
    c = base.get_config()
    c.data.root = str(root)
    c.data.num_particles = 16
    if task:
        c.data.scheme = "my_task"
        c.data.task.update(task)
    return c


def jetclass2_7_as_config():
    s = classes.JETCLASS2_7
    return dict(classes=s.names, titles=s.titles, labels=tuple(c.raw_labels for c in s.classes),
                fractions=tuple(c.target_fraction for c in s.classes),
                file_groups=tuple(c.file_group for c in s.classes),
                background="qcd")


def streams(c, tmp_path):
    """Training, validation and test batches of the data config `c` (build.data_settings, the engine's path)."""
    data = build.data_settings(c, tmp_path)
    return (list(pipeline.training_sampler(**data, batch_size=32, epoch_size=96, seed=5).batches(1)),
            list(pipeline.validation_batches(**data, num_jets=64, batch_size=32, seed=6)),
            list(pipeline.test_batches(**data, batch_size=50)))


def assert_same_batches(a, b, rtol=0.0):
    assert len(a) == len(b) and all(len(x) for x in a)
    for stream_a, stream_b in zip(a, b):
        for x, y in zip(stream_a, stream_b):
            assert set(x) == set(y)
            for k in x:
                np.testing.assert_allclose(x[k], y[k], rtol=rtol, atol=0 if rtol == 0 else 1e-5, err_msg=k)


def test_config_task_equal_to_jetclass2_7_gives_the_same_batches(dataset, tmp_path):
    task = classes.task_scheme(config_for(dataset, **jetclass2_7_as_config()).data)
    assert task.names == classes.JETCLASS2_7.names and task.background == "qcd"
    assert_same_batches(streams(config_for(dataset, **jetclass2_7_as_config()), tmp_path),
                        streams(config_for(dataset), tmp_path))


def test_task_from_any_file_with_merged_labels(dataset, tmp_path):
    c = config_for(dataset, classes=("resonance", "qcd"), labels=((0, 3, 70, 127), classes.JETCLASS2_QCD_LABELS),
                   fractions=(0.25, 0.75))
    data = build.data_settings(c, tmp_path)
    batches = list(pipeline.training_sampler(**data, batch_size=40, epoch_size=400, seed=1).batches(0))
    labels = np.concatenate([b["label"] for b in batches])
    assert np.bincount(labels).tolist() == [100, 300]
    test = list(pipeline.test_batches(**data, batch_size=64))
    raw = np.concatenate([pq.read_table(p, columns=["jet_label"])["jet_label"].to_numpy()
                          for p in sorted((dataset / "test").glob("*.parquet"), key=str)])
    expected = np.where(np.isin(raw, (0, 3, 70, 127)), 0, np.where(raw >= 161, 1, -1))
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in test]), expected[expected >= 0])


def renamed_copy(dataset, out, suffix):
    """The dataset with RENAMED columns, as parquet or as ROOT files (tree 'events')."""
    for path in dataset.rglob("*.parquet"):
        table = pq.read_table(path)
        table = table.rename_columns([RENAMED.get(n, n) for n in table.column_names])
        target = out / path.relative_to(dataset).with_suffix(suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".parquet":
            pq.write_table(table, target)
            continue
        arrays = ak.from_arrow(table.select([n for n in table.column_names if not n.startswith(("aux_", "genpart_"))]))
        with uproot.recreate(target) as file:
            file["events"] = {n: arrays[n] for n in arrays.fields}


@pytest.mark.parametrize("suffix", [".parquet", ".root"])
def test_mapped_columns_read_a_users_files(dataset, tmp_path, suffix):
    renamed_copy(dataset, tmp_path / "mine", suffix)
    c = config_for(tmp_path / "mine")
    c.data.feature_set = "kinpid"
    c.data.columns.update(RENAMED)
    c.data.tree = "events"
    reference = config_for(dataset)
    reference.data.feature_set = "kinpid"
    assert_same_batches(streams(c, tmp_path), streams(reference, tmp_path))


def test_four_vectors_only(dataset, tmp_path):
    """A file with only the particle four-vectors and a label: kin with the particle-ID columns and the jet
    columns mapped to '' (the jet is the constituent sum, as in the synthetic files)."""
    out = tmp_path / "minimal" / "test"
    out.mkdir(parents=True)
    for path in (dataset / "test").glob("*.parquet"):
        pq.write_table(pq.read_table(path, columns=["part_px", "part_py", "part_pz", "part_energy", "jet_label"]),
                       out / path.name)
    c = config_for(tmp_path / "minimal")
    c.data.num_particles = 128
    with pytest.raises(MissingColumnError) as error:
        list(pipeline.test_batches(**build.data_settings(c, tmp_path), batch_size=50))
    message = str(error.value)
    assert "'part_charge' (config.data.columns.part_charge)" in message and "minimal/test" in message
    assert "'kin' with config.data.columns.part_charge=''" in message
    c.data.columns.update({n: "" for n in ("part_charge", "part_isPhoton", "part_isElectron", "part_isMuon",
                                           "jet_pt", "jet_eta", "jet_phi", "jet_energy")})
    mine = list(pipeline.test_batches(**build.data_settings(c, tmp_path), batch_size=50))
    reference = config_for(dataset)
    reference.data.num_particles = 128
    full = list(pipeline.test_batches(**build.data_settings(reference, tmp_path), batch_size=50))
    assert len(mine) == len(full)
    for a, b in zip(mine, full):
        for k in ("features", "vectors", "mask", "label", "jet"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-4, err_msg=k)
        assert (a["pid"][a["mask"]] == 2).all()  # no particle ID in the files: every particle a neutral hadron


def test_missing_column_names_the_file_key_and_a_working_feature_set(dataset, tmp_path):
    c = config_for(dataset)
    c.data.feature_set = "full"
    c.data.columns.part_d0val = "d0"
    with pytest.raises(MissingColumnError, match=r"test/QCD_0002.parquet: missing column\(s\) 'd0' "
                       r"\(config.data.columns.part_d0val\).*feature_set = 'kin' or 'kinpid'$"):
        list(pipeline.test_batches(**build.data_settings(c, tmp_path), batch_size=50))


def test_task_and_column_errors_name_the_key(dataset, tmp_path):
    built_in_name = config_for(dataset, classes=("a", "b"), labels=(0, 1))
    built_in_name.data.scheme = "jetclass2_7"
    with pytest.raises(ValueError, match="names a built-in scheme"):
        classes.task_scheme(built_in_name.data)
    with pytest.raises(ValueError, match="either labels"):
        classes.task_scheme(config_for(dataset, classes=("a", "b")).data)
    with pytest.raises(ValueError, match="task.fractions has 1 entries for 2 classes"):
        classes.task_scheme(config_for(dataset, classes=("a", "b"), labels=(0, 1), fractions=(1.0,)).data)
    with pytest.raises(ValueError, match="each in one class only"):
        classes.task_scheme(config_for(dataset, classes=("a", "b"), labels=((0, 1), 1)).data)
    with pytest.raises(ValueError, match="task.background='c'"):
        classes.task_scheme(config_for(dataset, classes=("a", "b"), labels=(0, 1), background="c").data)
    c = config_for(dataset)
    c.data.columns.jet_pt = ""
    with pytest.raises(ValueError, match="all four jet columns"):
        build.data_settings(c, tmp_path)
    c = config_for(dataset)
    c.data.columns.part_charge = ""
    c.data.feature_set = "kinpid"
    with pytest.raises(ValueError, match=r"\['part_charge'\] to ''"):
        build.data_settings(c, tmp_path)
