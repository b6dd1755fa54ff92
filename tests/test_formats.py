"""The public benchmark formats, on small files written here in their published layouts: Top Landscape (pandas
HDFStore, key "table", E_i PX_i PY_i PZ_i x 200, truth*, ttv, is_signal_new) and energyflow's quark-gluon npz
(X = pt, y, phi, pid zero-padded; y). Four-vectors and features against direct numpy computations from the
published columns, labels, padding, chunking, particle ID, clear errors, discovery, and the sampler drawing
two classes from one file group."""
import numpy as np
import pandas as pd
import pytest

from jetjax.data import features, pipeline
from jetjax.data.classes import QUARK_GLUON, TOP_LANDSCAPE, get_scheme
from jetjax.data.chunks import DataError, MissingColumnError, concatenate_chunks
from jetjax.data.readers import discover_files, read_chunks

TOP_SLOTS = 200
TOP_COLUMNS = [f"{c}_{i}" for i in range(TOP_SLOTS) for c in ("E", "PX", "PY", "PZ")] + [
    "truthE", "truthPX", "truthPY", "truthPZ", "ttv", "is_signal_new"]
"""The 806 columns of train.h5 / val.h5 / test.h5, in the published order."""
QG_SLOTS = 24
QG_PARTICLES = {  # PDG id: (mass GeV, charge, isElectron, isMuon, isPhoton, isChargedHadron, isNeutralHadron, pid)
    22: (0.0, 0, 0, 0, 1, 0, 0, 0), 11: (0.000511, -1, 1, 0, 0, 0, 0, 4), -11: (0.000511, 1, 1, 0, 0, 0, 0, 5),
    13: (0.10566, -1, 0, 1, 0, 0, 0, 6), -13: (0.10566, 1, 0, 1, 0, 0, 0, 7),
    211: (0.13957, 1, 0, 0, 0, 1, 0, 3), -211: (0.13957, -1, 0, 0, 0, 1, 0, 1),
    321: (0.49368, 1, 0, 0, 0, 1, 0, 3), -321: (0.49368, -1, 0, 0, 0, 1, 0, 1),
    2212: (0.93827, 1, 0, 0, 0, 1, 0, 3), -2212: (0.93827, -1, 0, 0, 0, 1, 0, 1),
    130: (0.49761, 0, 0, 0, 0, 0, 1, 2), 2112: (0.93957, 0, 0, 0, 0, 0, 1, 2), -2112: (0.93957, 0, 0, 0, 0, 0, 1, 2)}
"""The final-state particles of the generator samples, written out: Pythia 8 mass (energyflow's pids2ms),
charge, the five flags, and the 8-class masked-particle ID (photon 0, h- 1, h0 2, h+ 3, e- 4, e+ 5, mu- 6,
mu+ 7)."""
FLAG_NAMES = ("isElectron", "isMuon", "isPhoton", "isChargedHadron", "isNeutralHadron")


def top_landscape_jets(n, seed):
    """(n, 200, 4) (E, PX, PY, PZ) slots as published (real particles first in decreasing pT, zero-padded) and
    labels; the multiplicity is odd for top jets, even for QCD (the sampler test reads the label from it)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    counts = 2 * rng.integers(2, 12, n) + labels
    slots = np.zeros((n, TOP_SLOTS, 4))
    for jet, m in enumerate(counts):
        pt = np.sort(rng.exponential(30.0, m) + 1.0)[::-1]
        eta = rng.uniform(-1.5, 1.5) + rng.normal(0, 0.2, m)
        phi = rng.uniform(-np.pi, np.pi) + rng.normal(0, 0.2, m)
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        slots[jet, :m] = np.stack([np.sqrt(px ** 2 + py ** 2 + pz ** 2 + 0.14 ** 2), px, py, pz], -1)
    return slots.astype(np.float32), labels


def write_top_landscape(path, slots, labels, layout="table"):
    """A Top Landscape file: key "table", the 806 columns in order, float32 values, int64 ttv and label."""
    n = len(labels)
    truth = np.where(labels[:, None] == 1, [[700.0, 300.0, -200.0, 400.0]], 0.0)
    frame = pd.DataFrame(np.concatenate([slots.reshape(n, -1), truth], 1).astype(np.float32), columns=TOP_COLUMNS[:-2])
    frame["ttv"] = np.zeros(n, np.int64)
    frame["is_signal_new"] = labels.astype(np.int64)
    frame.to_hdf(path, key="table", format=layout, mode="w")
    stored = pd.read_hdf(path, "table")
    assert list(stored.columns) == TOP_COLUMNS and stored.dtypes.value_counts().to_dict() == {
        np.dtype(np.float32): 804, np.dtype(np.int64): 2}
    return path


def quark_gluon_jets(n, seed):
    """(n, QG_SLOTS, 4) (pt, y, phi, pid) slots as energyflow stores them (particles in no particular order,
    phi within pi of the jet, not wrapped; zero padding after them) and float labels (1 quark, 0 gluon); odd
    multiplicity for quarks."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    counts = 2 * rng.integers(2, 11, n) + labels
    slots = np.zeros((n, QG_SLOTS, 4))
    ids = np.array(sorted(QG_PARTICLES))
    for jet, m in enumerate(counts):
        slots[jet, :m] = np.stack([rng.exponential(30.0, m) + 0.5, rng.uniform(-1.7, 1.7) + rng.normal(0, 0.1, m),
                                   rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.1, m), rng.choice(ids, m)], -1)
    return slots, labels.astype(np.float64)


def write_quark_gluon(path, slots, labels, compressed=True):
    (np.savez_compressed if compressed else np.savez)(path, X=slots, y=labels)
    return path


def read_all(path, feature_set="kin", chunk_size=4096):
    return concatenate_chunks(read_chunks(path, features.required_particle_columns(feature_set),
                                          chunk_size=chunk_size))


def direct_kinematics(vectors, pt, eta, phi, mask):
    """The kin channels (docs/formulas.md §1.2-1.4) written out in float64 from padded (n, P, 4) px, py, pz, E and the
    particles' pt, eta, phi: jet = sum of the constituents, everything scaled to jet pT = 500 GeV."""
    jet = np.sum(vectors * mask[..., None], axis=1)
    jet_pt = np.hypot(jet[:, 0], jet[:, 1])
    jet_eta, jet_phi = np.arcsinh(jet[:, 2] / jet_pt), np.arctan2(jet[:, 1], jet[:, 0])
    scale = 500.0 / jet_pt[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        deta = np.sign(jet_eta)[:, None] * (eta - jet_eta[:, None])
        dphi = (phi - jet_phi[:, None] + np.pi) % (2 * np.pi) - np.pi
        energy = vectors[..., 3]
        out = np.stack([np.clip((np.log(pt * scale) - 1.7) * 0.7, -5, 5),
                        np.clip((np.log(energy * scale) - 2.0) * 0.7, -5, 5),
                        np.clip((np.log(pt / jet_pt[:, None]) + 4.7) * 0.7, -5, 5),
                        np.clip((np.log(energy / jet[:, 3:]) + 4.7) * 0.7, -5, 5),
                        np.clip((np.hypot(deta, dphi) - 0.2) * 4.0, -5, 5), deta, dphi], -1)
    return np.where(mask[..., None], out, 0.0)


def kinematic_channels(batch, feature_set):
    names = features.FEATURE_SETS[feature_set]
    return batch["features"][..., [names.index(k) for k in features.KINEMATIC_NAMES]]


# ---------------------------------------------------------------------------------------------------------
# Top Landscape


@pytest.mark.parametrize("layout", ["table", "fixed"])
def test_top_landscape_four_vectors_labels_padding_and_chunks(tmp_path, layout):
    slots, labels = top_landscape_jets(23, seed=1)
    path = write_top_landscape(tmp_path / "train.h5", slots, labels, layout)
    chunks = list(read_chunks(path, features.required_particle_columns("kin"), chunk_size=5))
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 3]
    chunk = concatenate_chunks(chunks)
    real = [[s for s in jet if np.any(s != 0)] for jet in slots]  # published: E_i = 0 slots are padding
    np.testing.assert_array_equal(chunk.counts, [len(r) for r in real])
    expected = np.concatenate([np.array(r)[:, [1, 2, 3, 0]] for r in real])  # (E, PX, PY, PZ) -> px, py, pz, E
    np.testing.assert_array_equal(chunk.particle_vectors(), expected)
    assert chunk.particle_vectors().dtype == np.float32 and np.all(chunk.particles["part_energy"] > 0)
    np.testing.assert_array_equal(chunk.raw_label, labels)
    np.testing.assert_array_equal(TOP_LANDSCAPE.class_index(chunk.raw_label), labels)  # 0 qcd, 1 top
    assert chunk.jets == {}  # the jet is the constituent sum
    assert not any(chunk.particles[c].any() for c in ("part_charge", "part_isPhoton", "part_isElectron",
                                                       "part_isMuon"))  # kin's pid target columns: zero
    whole = read_all(path, chunk_size=10_000)
    for name, values in whole.particles.items():
        np.testing.assert_array_equal(values, chunk.particles[name], err_msg=name)
    np.testing.assert_array_equal(whole.counts, chunk.counts)


def test_top_landscape_kin_batches_match_a_direct_computation(tmp_path):
    slots, labels = top_landscape_jets(30, seed=2)
    write_top_landscape(tmp_path / "test.h5", slots, labels)
    (batch,) = pipeline.test_batches(tmp_path, feature_set="kin", num_particles=32, batch_size=100,
                                     scheme="top_landscape")
    np.testing.assert_array_equal(batch["label"], labels)
    mask = slots[..., 0] != 0
    np.testing.assert_array_equal(batch["mask"], mask[:, :32])
    energy, px, py, pz = np.moveaxis(slots.astype(np.float64), -1, 0)
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = direct_kinematics(np.stack([px, py, pz, energy], -1), pt, np.arcsinh(pz / pt),
                                     np.arctan2(py, px), mask)
    np.testing.assert_allclose(batch["features"], expected[:, :32], atol=2e-5)
    jet = slots[..., 1:].sum(1)
    np.testing.assert_allclose(np.hypot(batch["jet"][:, 0], batch["jet"][:, 1]), 500.0, rtol=1e-6)
    np.testing.assert_allclose(batch["jet"][:, 2] / 500.0, jet[:, 2] / np.hypot(jet[:, 0], jet[:, 1]), rtol=1e-5)


def test_top_landscape_refuses_particle_id_feature_sets(tmp_path):
    path = write_top_landscape(tmp_path / "test.h5", *top_landscape_jets(4, seed=3))
    pattern = r"test\.h5: the Top Landscape format has no column\(s\) 'part_charge', .*'part_isChargedHadron'"
    with pytest.raises(MissingColumnError, match=pattern + r".*feature_set = 'kin'"):
        list(read_chunks(path, features.required_particle_columns("kinpid")))
    with pytest.raises(MissingColumnError, match=r"'part_d0val'.*feature_set = 'kin'"):  # never skipped
        list(pipeline.test_batches(tmp_path, feature_set="full", scheme="top_landscape", skip_bad_files=True))
    with pytest.raises(MissingColumnError, match=r"test\.h5.*label_QCD.*is_signal_new"):
        list(read_chunks(path, features.required_particle_columns("kin"), get_scheme("jetclass_10").label_branches))


def test_not_a_top_landscape_file_is_named(tmp_path):
    path = tmp_path / "val.h5"
    pd.DataFrame({"E_0": np.ones(3, np.float32)}).to_hdf(path, key="table", format="table")
    with pytest.raises(MissingColumnError, match=r"val\.h5: not the Top Landscape layout: missing column\(s\) 'PX_0'"):
        read_all(path)
    pd.DataFrame({"a": [1.0]}).to_hdf(path, key="other", mode="w")
    with pytest.raises(DataError, match=r"val\.h5: no key 'table'"):
        read_all(path)
    path.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"val\.h5: cannot open as HDF5"):
        read_all(path)


# ---------------------------------------------------------------------------------------------------------
# Quark-gluon


@pytest.mark.parametrize("compressed", [True, False])
def test_quark_gluon_four_vectors_from_rapidity_and_pdg_mass(tmp_path, compressed):
    slots, labels = quark_gluon_jets(21, seed=4)
    path = write_quark_gluon(tmp_path / "QG_jets_3.npz", slots, labels, compressed)
    chunks = list(read_chunks(path, features.required_particle_columns("kinpid"), chunk_size=8))
    assert [len(c) for c in chunks] == [8, 8, 5]
    chunk = concatenate_chunks(chunks)
    rows = [(pt, y, phi, int(pid)) for jet in slots for pt, y, phi, pid in jet if pt != 0]
    np.testing.assert_array_equal(chunk.counts, np.count_nonzero(slots[..., 0], axis=1))
    expected = []
    for pt, y, phi, pid in rows:
        transverse_mass = np.sqrt(pt ** 2 + QG_PARTICLES[pid][0] ** 2)
        expected.append([pt * np.cos(phi), pt * np.sin(phi), transverse_mass * np.sinh(y),
                         transverse_mass * np.cosh(y)])
    vectors = chunk.particle_vectors().astype(np.float64)
    np.testing.assert_allclose(vectors, expected, rtol=1e-6)
    # physics: the stored y is the rapidity of the four-vector, and E^2 - p^2 is the PDG mass squared
    np.testing.assert_allclose(0.5 * np.log((vectors[:, 3] + vectors[:, 2]) / (vectors[:, 3] - vectors[:, 2])),
                               [r[1] for r in rows], atol=2e-5)
    np.testing.assert_allclose(np.array(expected)[:, 3] ** 2 - np.sum(np.array(expected)[:, :3] ** 2, 1),
                               [QG_PARTICLES[r[3]][0] ** 2 for r in rows], atol=1e-6)
    np.testing.assert_array_equal(chunk.raw_label, labels)
    np.testing.assert_array_equal(QUARK_GLUON.class_index(chunk.raw_label), labels)  # 0 gluon, 1 quark
    whole = read_all(path, "kinpid", chunk_size=10_000)
    for name, values in whole.particles.items():
        np.testing.assert_array_equal(values, chunk.particles[name], err_msg=name)


def test_quark_gluon_kinpid_batches_match_direct_kinematics_and_particle_id(tmp_path):
    slots, labels = quark_gluon_jets(30, seed=5)
    (tmp_path / "test").mkdir()
    write_quark_gluon(tmp_path / "test" / "QG_jets.npz", slots, labels)
    assert {int(p) for p in slots[..., 3][slots[..., 0] > 0]} == set(QG_PARTICLES)  # every species is there
    (batch,) = pipeline.test_batches(tmp_path, feature_set="kinpid", num_particles=QG_SLOTS, batch_size=100,
                                     scheme="quark_gluon")
    np.testing.assert_array_equal(batch["label"], labels)
    order = np.argsort(-slots[..., 0], axis=1, kind="stable")  # the batch is in decreasing pT
    pt, rapidity, phi, pid = np.moveaxis(np.take_along_axis(slots, order[..., None], axis=1), -1, 0)
    mask = pt > 0
    species = np.array([[QG_PARTICLES.get(int(p), (0.0,) * 8) for p in jet] for jet in pid])  # (n, P, 8)
    mass = species[..., 0]
    transverse_mass = np.sqrt(pt ** 2 + mass ** 2)
    vectors = np.stack([pt * np.cos(phi), pt * np.sin(phi), transverse_mass * np.sinh(rapidity),
                        transverse_mass * np.cosh(rapidity)], -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(np.sinh(rapidity) * np.sqrt(1 + (mass / pt) ** 2))  # energyflow's etas_from_pts_ys_ms
    np.testing.assert_array_equal(batch["mask"], mask)
    np.testing.assert_allclose(kinematic_channels(batch, "kinpid"), direct_kinematics(vectors, pt, eta, phi, mask),
                               atol=3e-5)
    names = features.FEATURE_SETS["kinpid"]
    np.testing.assert_array_equal(batch["features"][..., names.index("charge")], species[..., 1] * mask)
    for i, flag in enumerate(FLAG_NAMES):
        np.testing.assert_array_equal(batch["features"][..., names.index(flag)], species[..., 2 + i] * mask,
                                      err_msg=flag)
    np.testing.assert_array_equal(batch["pid"], species[..., 7] * mask)


def test_quark_gluon_refuses_full_and_unknown_particles(tmp_path):
    slots, labels = quark_gluon_jets(4, seed=6)
    path = write_quark_gluon(tmp_path / "QG_jets_1.npz", slots, labels)
    assert len(read_all(path, "kin")) == 4
    with pytest.raises(MissingColumnError, match=r"QG_jets_1\.npz: the quark-gluon format has no column\(s\) "
                                                 r"'part_d0val', 'part_d0err', 'part_dzval', 'part_dzerr'.*"
                                                 r"'kin' or 'kinpid'"):
        read_all(path, "full")
    slots[2, 1, 3] = 3122.5
    write_quark_gluon(path, slots, labels)
    with pytest.raises(DataError, match=r"QG_jets_1\.npz: the PDG ids .* are not integers"):
        read_all(path)
    slots[2, 1, 3] = 990
    write_quark_gluon(path, slots, labels)
    with pytest.raises(DataError, match=r"QG_jets_1\.npz: PDG id\(s\) \[990\] are not in"):
        read_all(path)
    np.savez(path, X=slots)
    with pytest.raises(MissingColumnError, match=r"QG_jets_1\.npz: missing array\(s\) \['y'\]"):
        read_all(path)


# ---------------------------------------------------------------------------------------------------------
# Discovery and sampling


def test_discovery_of_the_benchmark_layouts(tmp_path):
    top = tmp_path / "top"
    top.mkdir()
    for split in ("train", "val", "test"):
        write_top_landscape(top / f"{split}.h5", *top_landscape_jets(2, seed=7))
    for split in ("train", "val", "test"):
        assert {g: [p.name for p in ps] for g, ps in discover_files(top, split).items()} == {
            "TopLandscape": [f"{split}.h5"]}
    assert TOP_LANDSCAPE.file_groups == ("TopLandscape",)
    qg = tmp_path / "qg"
    for folder, names in {"train": ("QG_jets.npz", "QG_jets_1.npz", "QG_jets_herwig_0.npz"),
                          "test": ("QG_jets_19.npz",)}.items():
        (qg / folder).mkdir(parents=True)
        for name in names:
            write_quark_gluon(qg / folder / name, *quark_gluon_jets(2, seed=8))
    train = {g: [p.name for p in ps] for g, ps in discover_files(qg, "train", file_format="npz").items()}
    assert train == {"QG_jets": ["QG_jets.npz", "QG_jets_1.npz"], "QG_jets_herwig": ["QG_jets_herwig_0.npz"]}
    assert QUARK_GLUON.file_groups == ("QG_jets",)
    with pytest.raises(FileNotFoundError, match="no val files"):
        discover_files(qg, "val")
    with pytest.raises(FileNotFoundError, match=r"no h5 files .* \(found 1 \.npz\)"):
        discover_files(qg, "test", file_format="h5")
    flat = tmp_path / "flat"
    flat.mkdir()
    write_quark_gluon(flat / "QG_jets_2.npz", *quark_gluon_jets(2, seed=9))
    with pytest.raises(FileNotFoundError, match=r"no train files .* expected train/"):
        discover_files(flat, "train")


@pytest.mark.parametrize("fmt", ["top_landscape", "quark_gluon"])
def test_sampler_draws_both_classes_of_one_file_group_in_balance(tmp_path, fmt):
    if fmt == "top_landscape":
        write_top_landscape(tmp_path / "train.h5", *top_landscape_jets(40, seed=10))
    else:
        (tmp_path / "train").mkdir()
        write_quark_gluon(tmp_path / "train" / "QG_jets_0.npz", *quark_gluon_jets(40, seed=10))
    sampler = pipeline.training_sampler(tmp_path, feature_set="kin", num_particles=QG_SLOTS, batch_size=8,
                                        epoch_size=48, seed=0, scheme=fmt, buffer_size=8, chunk_size=6)
    for epoch in (0, 1):
        batches = list(sampler.batches(epoch))
        labels = np.concatenate([b["label"] for b in batches])
        assert len(batches) == 6 and np.bincount(labels).tolist() == [24, 24]
        multiplicity = np.concatenate([b["mask"].sum(1) for b in batches])
        np.testing.assert_array_equal(multiplicity % 2, labels)  # each jet's class is its own
    assert sampler.report.counts["particles_truncated"] == 0 and not sampler.report.excluded_labels
