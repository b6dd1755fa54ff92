"""Sampler and pipeline on a small synthetic dataset: class fractions, reproducibility, resuming, the
natural test stream, missing classes, prefetching."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from jetjax.data import pipeline, synthetic
from jetjax.data.classes import JETCLASS2_7
from jetjax.data.chunks import DataError, DataReport
from jetjax.data.readers import discover_files
from jetjax.data.sampler import StratifiedSampler, exact_counts


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.write_dataset(root, jets_per_group=3000, seed=3, jets_per_file=600)
    return root


def sampler(root, **kw):
    args = dict(feature_set="kin", num_particles=32, batch_size=250, epoch_size=2500, seed=0, buffer_size=400,
                pool_size=3, chunk_size=200)
    return pipeline.training_sampler(root, **{**args, **kw})


def test_class_fractions_match_targets_within_three_standard_errors(dataset):
    s = sampler(dataset, epoch_size=25000, batch_size=500)
    labels = np.concatenate([b["label"] for b in s.batches(epoch=0)])
    assert len(labels) == 25000
    observed = np.bincount(labels, minlength=7) / len(labels)
    target = JETCLASS2_7.target_fractions
    standard_error = np.sqrt(target * (1 - target) / len(labels))
    assert np.all(np.abs(observed - target) < 3 * standard_error), (observed, target)
    buckets = {b: sum(observed[i] for i, c in enumerate(JETCLASS2_7.classes) if c.bucket == b)
               for b in ("signal", "top", "qcd")}
    assert all(abs(f - 1 / 3) < 3 * np.sqrt(2 / 9 / len(labels)) for f in buckets.values()), buckets
    assert sum(s.report.excluded_labels.values()) > 0  # the generator's X -> cc, gg, YY labels were met
    assert set(s.report.excluded_labels) <= {1, 9, 15, 71}


def test_each_batch_mixes_classes_and_is_well_formed(dataset):
    batch = next(sampler(dataset).batches())
    assert batch["features"].shape == (250, 32, 7) and batch["vectors"].shape == (250, 32, 4)
    assert batch["mask"].dtype == bool and batch["label"].dtype == np.int32 and batch["pid"].dtype == np.int32
    assert len(np.unique(batch["label"])) == 7
    assert np.all(batch["mask"].sum(1) > 0) and np.all(batch["features"][~batch["mask"]] == 0)
    np.testing.assert_allclose(np.hypot(batch["jet"][:, 0], batch["jet"][:, 1]), 500.0, rtol=1e-5)


def test_same_seed_same_jets_other_seed_other_jets(dataset):
    first = list(sampler(dataset).batches(epoch=1))
    again = list(sampler(dataset).batches(epoch=1))
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other_seed = next(sampler(dataset, seed=1).batches(epoch=1))
    other_epoch = next(sampler(dataset).batches(epoch=2))
    assert not np.array_equal(other_seed["vectors"], first[0]["vectors"])
    assert not np.array_equal(other_epoch["vectors"], first[0]["vectors"])


def test_resume_from_a_batch_number_gives_the_same_remaining_batches(dataset):
    full = list(sampler(dataset).batches(epoch=4))
    resumed = list(sampler(dataset).batches(epoch=4, start_batch=6))
    assert len(resumed) == len(full) - 6
    for a, b in zip(full[6:], resumed):
        np.testing.assert_array_equal(a["features"], b["features"])
        np.testing.assert_array_equal(a["label"], b["label"])


def jet_keys_from_files(paths):
    """(class, multiplicity up to 32, leading-particle ln(pT / jet pT)) of every task jet, read directly."""
    keys = []
    for path in paths:
        t = pq.read_table(path, columns=["part_px", "part_py", "jet_pt", "jet_label"]).to_pydict()
        for px, py, jet_pt, label in zip(t["part_px"], t["part_py"], t["jet_pt"], t["jet_label"]):
            k = JETCLASS2_7.class_index([label])[0]
            if k >= 0:
                keys.append((int(k), min(len(px), 32), round(float(np.log(np.hypot(px, py).max() / jet_pt)), 3)))
    return sorted(keys)


def test_natural_stream_visits_every_test_jet_once(dataset):
    groups = discover_files(dataset, "test")
    report = DataReport()
    batches = list(pipeline.test_batches(dataset, num_particles=32, batch_size=97, chunk_size=128, report=report))
    assert all(len(b["label"]) == 97 for b in batches[:-1]) and 0 < len(batches[-1]["label"]) <= 97
    logptrel = [b["features"][:, 0, 2] / 0.7 - 4.7 for b in batches]
    got = sorted((int(l), int(n), round(float(x), 3)) for b, lp in zip(batches, logptrel)
                 for l, n, x in zip(b["label"], b["mask"].sum(1), lp))
    expected = jet_keys_from_files(sorted(p for ps in groups.values() for p in ps))
    assert got == expected
    assert sum(report.excluded_labels.values()) > 0


def test_validation_sample_is_fixed(dataset):
    args = dict(num_jets=1000, num_particles=16, batch_size=200, buffer_size=300, pool_size=2, chunk_size=200)
    first = list(pipeline.validation_batches(dataset, **args))
    second = list(pipeline.validation_batches(dataset, **args))
    assert len(first) == 5
    assert all(np.array_equal(a["vectors"], b["vectors"]) for a, b in zip(first, second))


def test_missing_class_files_raise_naming_the_class(dataset):
    groups = discover_files(dataset, "train")
    del groups["Res34P"]
    with pytest.raises(DataError, match=r"qqb_bcs \(files Res34P_\*\)"):
        StratifiedSampler(groups, JETCLASS2_7, "kin", 16, 100, 1000, seed=0)
    groups = discover_files(dataset, "train")
    groups["Res34P"] = groups["QCD"]  # files that hold no top jets at all
    with pytest.raises(DataError, match="no jets of class 'qqb_bcs'"):
        list(StratifiedSampler(groups, JETCLASS2_7, "kin", 16, 100, 1000, seed=0, buffer_size=100,
                               chunk_size=200).batches())


def test_exact_counts_sum_and_round():
    counts = exact_counts(1000, JETCLASS2_7.target_fractions)
    assert counts.sum() == 1000 and np.all(np.abs(counts - 1000 * JETCLASS2_7.target_fractions) < 1)


def test_prefetch_yields_the_same_batches_and_reraises_errors(dataset):
    direct = list(sampler(dataset).batches(epoch=0))
    fetched = list(pipeline.prefetch(sampler(dataset).batches(epoch=0), size=2))
    assert len(direct) == len(fetched)
    assert all(np.array_equal(a["features"], b["features"]) for a, b in zip(direct, fetched))

    def failing():
        yield direct[0]
        raise DataError("broken.parquet: read failed")

    stream = pipeline.prefetch(failing())
    assert np.array_equal(next(stream)["label"], direct[0]["label"])
    with pytest.raises(DataError, match="broken.parquet"):
        next(stream)


def test_skim_keeps_every_task_jet_and_nothing_else(dataset, tmp_path):
    report = DataReport()
    written = pipeline.skim(dataset, tmp_path, report=report)
    assert len(written) == sum(len(p) for split in ("train", "val", "test")
                               for p in discover_files(dataset, split).values())
    assert set(report.excluded_labels) == {1, 9, 15, 71}
    assert pq.read_schema(written[0]) == pq.read_schema(dataset / written[0].relative_to(tmp_path))
    original = list(pipeline.test_batches(dataset, num_particles=16, batch_size=300))
    skimmed_report = DataReport()
    skimmed = list(pipeline.test_batches(tmp_path, num_particles=16, batch_size=300, report=skimmed_report))
    assert len(original) == len(skimmed) and not skimmed_report.excluded_labels
    for a, b in zip(original, skimmed):
        np.testing.assert_array_equal(a["features"], b["features"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_a_group_of_only_unreadable_files_is_skipped_then_fails_clearly(dataset, tmp_path):
    groups = discover_files(dataset, "train")
    bad = tmp_path / "QCD_0000.parquet"
    bad.write_bytes(b"corrupt")
    groups["QCD"] = [bad]
    report = DataReport()
    s = StratifiedSampler(groups, JETCLASS2_7, "kin", 16, 100, 1000, seed=0, skip_bad_files=True, report=report)
    with pytest.raises(DataError, match="group 'QCD' yield no jets"):
        list(s.batches())
    assert report.skipped_files and report.skipped_files[0][0] == str(bad)


def test_length_grouped_sampler_keeps_the_epoch_groups_by_multiplicity_and_resumes(dataset):
    plain, grouped = sampler(dataset), sampler(dataset, length_window=5)
    a, b = list(plain.batches(1)), list(grouped.batches(1))
    assert len(a) == len(b) == grouped.batches_per_epoch == 10

    def jets(batches):
        return sorted(zip(*(np.concatenate([x[k] if k == "label" else x[k].sum(1) if k == "mask" else x[k][:, 0, 0]
                                            for x in batches]) for k in ("label", "mask", "features"))))

    assert jets(a) == jets(b)  # the same jets: only their batches differ
    spread = lambda batches: np.mean([np.ptp(x["mask"].sum(1)) for x in batches])
    assert spread(b) < 0.5 * spread(a)
    resumed = list(grouped.batches(1, start_batch=7))
    assert len(resumed) == 3
    for x, y in zip(resumed, b[7:]):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    again = list(sampler(dataset, length_window=5).batches(1))
    np.testing.assert_array_equal(np.concatenate([x["label"] for x in again]), np.concatenate([x["label"] for x in b]))


def test_a_validation_sample_larger_than_its_split_is_reported_once_with_its_counts(dataset, capsys):
    from jetjax import train

    # the val split holds 300 jets per file group (3000 x 10%, ~840 of the task): 250 jets are drawn once each,
    # 2000 need files read again
    small, large = DataReport(), DataReport()
    for report, jets in ((small, 250), (large, 2000)):
        batches = list(pipeline.validation_batches(dataset, num_jets=jets, num_particles=32, batch_size=250, seed=1,
                                                   report=report, pool_size=1, chunk_size=100))
        assert sum(len(b["label"]) for b in batches) == jets
        distinct = {jet.tobytes() for b in batches for jet in b["features"]}
        assert len(distinct) == jets if report is small else len(distinct) < jets
    assert "jets_read_again" not in small.counts
    assert large.counts["jets_read_again"] >= 2000 - 3 * 300
    assert large.as_dict()["meaning"]["jets_read_again"].startswith("drawn again:")
    train.say_read_again(small, "the validation sample", "config.data.val_size")
    assert capsys.readouterr().out == ""
    train.say_read_again(large, "the validation sample", "config.data.val_size")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"({large.counts['jets_read_again']} jets read again)" in out
    assert "config.data.val_size" in out


def test_every_counter_is_explained_as_cut_repaired_dropped_or_drawn_again():
    import ast
    from pathlib import Path

    from jetjax.data.chunks import COUNTERS

    sources = (Path(__file__).resolve().parents[1] / "jetjax").rglob("*.py")
    counted = {node.args[0].value for path in sources for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "count" and node.args
               and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)}
    counted |= {"particles_nonfinite_dropped", "particles_nonpositive_pt_dropped"}  # passed as a reason
    assert counted == set(COUNTERS)
    assert {kind for kind, _ in COUNTERS.values()} == {"cut", "repaired", "dropped", "drawn again"}
