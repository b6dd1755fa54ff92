"""The synthetic generator: the real JetClass-II parquet schema, seeding, layout, and classes that differ
the way the physics does (learnable well but not perfectly)."""
import numpy as np
import pyarrow.parquet as pq
from conftest import shared_path
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from jetjax import physics
from jetjax.data import synthetic
from jetjax.data.classes import JETCLASS2_7
from jetjax.data.readers import discover_files


def generated(group, n, seed=0):
    rng = np.random.default_rng(seed)
    labels = synthetic.group_labels(rng, group, n)
    return labels, synthetic.generate_jets(rng, labels)


def test_written_files_have_exactly_the_real_schema(tmp_path):
    real = pq.read_schema(shared_path("data", "jetclass2_example", "JetClassII_example.parquet"))
    synthetic.write_dataset(tmp_path, jets_per_group=50, seed=0, jets_per_file=20)
    for path in sorted(tmp_path.rglob("*.parquet")):
        written = pq.read_schema(path)
        assert written.names == real.names, path
        for field in real:
            assert written.field(field.name).type == field.type, (path, field.name)
            assert written.field(field.name).nullable == field.nullable, (path, field.name)


def test_layout_numbering_and_seeding(tmp_path):
    paths = synthetic.write_dataset(tmp_path / "a", jets_per_group=50, seed=5, jets_per_file=20)
    names = sorted(p.relative_to(tmp_path / "a").as_posix() for p in paths)
    assert "train/Res2P_0000.parquet" in names and "train/Res2P_0001.parquet" in names
    assert "val/Res2P_0002.parquet" in names and "test/Res2P_0003.parquet" in names
    assert {g: len(p) for g, p in discover_files(tmp_path / "a", "train").items()} == {
        "Res2P": 2, "Res34P": 2, "QCD": 2}
    again = synthetic.write_dataset(tmp_path / "b", jets_per_group=50, seed=5, jets_per_file=20)
    other = synthetic.write_dataset(tmp_path / "c", jets_per_group=50, seed=6, jets_per_file=20)
    assert pq.read_table(paths[0]).equals(pq.read_table(again[0]))
    assert not pq.read_table(paths[0]).equals(pq.read_table(other[0]))


def test_columns_are_consistent_like_real_files():
    labels, (particles, counts, jets, _) = generated("Res2P", 2000)
    jet_of = np.repeat(np.arange(len(counts)), counts)
    vectors = np.stack([particles[k] for k in ("part_px", "part_py", "part_pz", "part_energy")], -1)
    total = np.stack([np.bincount(jet_of, vectors[:, i]) for i in range(4)], -1)
    np.testing.assert_allclose(jets["jet_pt"], physics.pt(total), rtol=1e-9)
    np.testing.assert_array_equal(jets["jet_nparticles"], counts)
    pt = physics.pt(vectors)
    assert np.all(pt[1:][jet_of[1:] == jet_of[:-1]] <= pt[:-1][jet_of[1:] == jet_of[:-1]])  # pT ordered
    # generated within R = 0.8 of the generation axis; the constituent axis moves a little from it
    distance = np.hypot(particles["part_deta"], particles["part_dphi"])
    assert np.all(distance < 0.9) and np.mean(distance > 0.8) < 0.01
    assert np.all(vectors[:, 3] ** 2 >= (vectors[:, :3] ** 2).sum(1) * (1 - 1e-9))
    neutral = particles["part_charge"] == 0
    assert np.all(particles["part_d0val"][neutral] == 0) and np.all(particles["part_d0err"][~neutral] > 0)
    flags = np.stack([particles[f"part_is{k}"] for k in ("Electron", "Muon", "Photon", "ChargedHadron",
                                                         "NeutralHadron")], -1)
    assert np.all(flags.sum(1) == 1)
    assert set(np.unique(labels)) == {0, 1, 3, 9, 12, 13, 14}  # including labels outside the task


def per_jet_summary(group, n, seed):
    """Class index and jet-level observables (mass, multiplicity, tau2/tau1, leptons, displaced tracks)."""
    labels, (p, counts, jets, _) = generated(group, n, seed)
    jet_of = np.repeat(np.arange(len(counts)), counts)
    per_jet = lambda x: np.bincount(jet_of, x.astype(float), len(counts))
    significance = np.abs(p["part_d0val"]) / np.maximum(p["part_d0err"], 1e-9)
    x = np.stack([jets["jet_sdmass"], counts, jets["jet_tau2"] / np.maximum(jets["jet_tau1"], 1e-9),
                  per_jet(p["part_isElectron"]), per_jet(p["part_isMuon"]),
                  per_jet((significance > 3) & (p["part_charge"] != 0))], -1)
    return JETCLASS2_7.class_index(labels), x


def test_classes_differ_the_way_the_physics_does_and_are_learnable_but_not_trivially():
    parts = [per_jet_summary(g, 4000, seed) for seed, g in enumerate(("Res2P", "Res34P", "QCD"))]
    y, x = (np.concatenate(v) for v in zip(*parts))
    keep = y >= 0
    order = np.random.default_rng(0).permutation(np.count_nonzero(keep))
    y, x = y[keep][order], x[keep][order]
    mean = lambda k, col: x[y == JETCLASS2_7.names.index(k), col].mean()
    assert mean("tauhtauh", 1) < 0.5 * mean("qq", 1)                  # di-tau: few particles
    assert mean("tauhtaue", 3) > 0.8 and mean("tauhtauh", 3) < 0.1    # an electron in tau_h tau_e
    assert mean("tauhtaum", 4) > 0.8 and mean("tauhtaue", 4) < 0.1    # a muon in tau_h tau_mu
    assert mean("bb", 5) > 2 * mean("qq", 5)                          # displaced tracks in b jets
    assert mean("qqb_bcs", 0) > mean("qcd", 0) + 50                   # top mass above the QCD spectrum
    assert mean("qq", 2) < mean("qcd", 2)                             # two prongs: lower tau2/tau1
    half = len(y) // 2
    with threadpool_limits(1):  # OpenMP threads fight other processes on a small shared machine
        model = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(x[:half], y[:half])
    accuracy = (model.predict(x[half:]) == y[half:]).mean()
    assert 0.6 < accuracy < 0.97, accuracy
