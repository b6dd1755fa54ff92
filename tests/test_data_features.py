"""Feature building: real JetClass v1 jets against a direct numpy computation, rescaling invariance,
sanitising, particle ID, truncation, and the numpy / jax agreement of the one kinematic implementation."""
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shared_path

from jetjax.data import features
from jetjax.data.chunks import DataReport, JetChunk

V1_FILES = ("SMALLpfVectors.npy", "SMALLpfPoints.npy", "SMALLpfMask.npy", "SMALLlabels.npy")
SCALE_FREE = ("logptrel", "logerel", "deltaR", "deta", "dphi")


def load_v1():
    folder = shared_path("data", "jetclass_v1_sample")
    vectors, points, mask, labels = (np.load(folder / f) for f in V1_FILES)
    return vectors.transpose(0, 2, 1), points.transpose(0, 2, 1), mask[:, 0] > 0, labels.argmax(1)


def chunk_from_padded(vectors, mask, extra=None):
    """JetChunk of padded (n, P, 4) jets without jet columns; PID / impact columns zero unless in `extra`."""
    flat = vectors[mask]
    n = len(flat)
    particles = {"part_px": flat[:, 0], "part_py": flat[:, 1], "part_pz": flat[:, 2], "part_energy": flat[:, 3],
                 "part_charge": np.zeros(n, np.int32),
                 **{f"part_{k}": np.zeros(n, bool) for k in ("isPhoton", "isElectron", "isMuon", "isChargedHadron",
                                                              "isNeutralHadron")},
                 **{f"part_{k}": np.zeros(n, np.float32) for k in ("d0val", "d0err", "dzval", "dzerr")}}
    particles.update(extra or {})
    return JetChunk("test", mask.sum(1), particles, {}, np.zeros(len(mask), np.int64))


def pipeline_batch(vectors, mask, feature_set="kin", num_particles=128, extra=None, report=None):
    report = DataReport() if report is None else report
    chunk = features.clean(chunk_from_padded(vectors, mask, extra), report)
    return features.to_batch(chunk, np.zeros(len(chunk), np.int32), feature_set, num_particles, report)


def direct_kin_features(vectors, mask):
    """The kin features written out from docs/formulas.md §1.2-1.4 in float64, jet = sum of the constituents,
    everything scaled to jet pT = 500 GeV."""
    v = vectors.astype(np.float64) * mask[..., None]
    jet = v.sum(1)
    jet_pt, jet_e = np.hypot(jet[:, 0], jet[:, 1]), jet[:, 3]
    jet_eta, jet_phi = np.arcsinh(jet[:, 2] / jet_pt), np.arctan2(jet[:, 1], jet[:, 0])
    scale = (500.0 / jet_pt)[:, None]
    pt, e = np.hypot(v[..., 0], v[..., 1]), v[..., 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        deta = np.sign(jet_eta)[:, None] * (np.arcsinh(v[..., 2] / pt) - jet_eta[:, None])
        dphi = (np.arctan2(v[..., 1], v[..., 0]) - jet_phi[:, None] + np.pi) % (2 * np.pi) - np.pi
        out = np.stack([np.clip((np.log(pt * scale) - 1.7) * 0.7, -5, 5),
                        np.clip((np.log(e * scale) - 2.0) * 0.7, -5, 5),
                        np.clip((np.log(pt / jet_pt[:, None]) + 4.7) * 0.7, -5, 5),
                        np.clip((np.log(e / jet_e[:, None]) + 4.7) * 0.7, -5, 5),
                        np.clip((np.hypot(deta, dphi) - 0.2) * 4.0, -5, 5), deta, dphi], -1)
    return np.where(mask[..., None], out, 0.0)


def test_kin_features_of_real_jetclass_jets_match_direct_computation():
    vectors, points, mask, _ = load_v1()
    batch = pipeline_batch(vectors, mask)
    assert batch["features"].shape == (500, 128, 7) and batch["features"].dtype == np.float32
    np.testing.assert_array_equal(batch["mask"], mask)  # file is pT ordered: same slots
    np.testing.assert_allclose(batch["features"], direct_kin_features(vectors, mask), atol=2e-5, rtol=1e-5)
    # the dataset's own angles about its jet axis: dphi to float precision, deta to the axis difference
    np.testing.assert_allclose(batch["features"][..., 6][mask], points[..., 1][mask], atol=1e-5)
    np.testing.assert_allclose(batch["features"][..., 5][mask], points[..., 0][mask], atol=0.02)
    jet_pt = np.hypot(batch["jet"][:, 0], batch["jet"][:, 1])
    np.testing.assert_allclose(jet_pt, 500.0, rtol=1e-5)
    np.testing.assert_allclose(batch["vectors"].sum(1), batch["jet"], rtol=1e-4, atol=1e-2)


def test_rescaling_leaves_scale_free_features_unchanged():
    vectors, _, mask, _ = load_v1()
    raw = features.kinematic_features(vectors.astype(np.float64), mask, vectors.astype(np.float64).sum(1))
    batch = pipeline_batch(vectors, mask)
    channels = [features.KINEMATIC_NAMES.index(n) for n in SCALE_FREE]
    np.testing.assert_allclose(batch["features"][..., channels], raw[..., channels], atol=2e-5)
    # the scale-dependent ones do change (the jets are not at 500 GeV already)
    assert np.abs(batch["features"][..., 0] - raw[..., 0])[mask].max() > 0.1
    # rescaling again by any factor changes nothing at all
    again = pipeline_batch(batch["vectors"] * 3.7, batch["mask"])
    np.testing.assert_allclose(again["features"], batch["features"], atol=2e-5)


def test_numpy_and_jax_compute_the_same_kinematics():
    vectors, _, mask, _ = load_v1()
    batch = pipeline_batch(vectors[:50], mask[:50])
    on_jax = features.kinematic_features(jnp.asarray(batch["vectors"]), jnp.asarray(batch["mask"]),
                                         jnp.asarray(batch["jet"]))
    np.testing.assert_allclose(np.asarray(on_jax), batch["features"], atol=1e-4)
    assert np.all(np.asarray(on_jax)[~batch["mask"]] == 0)


def toy_padded(seed=0, n=6, slots=12):
    rng = np.random.default_rng(seed)
    pt = rng.exponential(20.0, (n, slots)) + 0.5
    eta, phi = 0.3 + rng.normal(0, 0.2, (n, slots)), -2.0 + rng.normal(0, 0.2, (n, slots))
    v = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta) + 0.01], -1)
    mask = np.arange(slots)[None] < rng.integers(3, slots + 1, n)[:, None]
    return v.astype(np.float32), mask


def test_particles_sorted_by_pt_and_truncated_to_the_hardest():
    v, mask = toy_padded()
    batch = pipeline_batch(v, mask, num_particles=4)  # toy particles are in random pT order
    pt = np.hypot(v[..., 0], v[..., 1])
    for i in range(len(v)):
        hardest = np.sort(pt[i][mask[i]])[::-1][:4]
        got = np.hypot(batch["vectors"][i, :, 0], batch["vectors"][i, :, 1])[batch["mask"][i]]
        np.testing.assert_allclose(got, hardest * 500 / np.hypot(*v[i][mask[i]].sum(0)[:2]), rtol=1e-5)
    assert np.all(batch["features"][~batch["mask"]] == 0) and np.all(batch["vectors"][~batch["mask"]] == 0)


def test_nonfinite_and_nonphysical_values_are_repaired_or_dropped_and_counted():
    v, mask = toy_padded(n=4)
    v[0, 0, 2] = np.nan          # non-finite four-vector: particle dropped
    v[1, 1, :2] = 0.0            # pT = 0: dropped
    v[2, 0, 3] = 0.5 * np.linalg.norm(v[2, 0, :3])  # E < |p|: raised
    mask[3] = False              # empty jet: dropped
    mask[3, 0] = False
    n = mask.sum()
    d0 = np.zeros(n, np.float32)
    d0[-1] = np.inf              # non-finite impact parameter: zeroed
    report = DataReport()
    batch = pipeline_batch(v, mask, "full", extra={"part_d0val": d0}, report=report)
    assert report.counts == {"particles_nonfinite_dropped": 1, "particles_nonpositive_pt_dropped": 1,
                             "particles_energy_raised_to_momentum": 1, "jets_empty_dropped": 1,
                             "values_nonfinite_zeroed": 1}
    assert len(batch["label"]) == 3
    assert batch["mask"].sum() == mask.sum() - 2
    assert all(np.all(np.isfinite(x)) for x in batch.values())
    e, p = batch["vectors"][..., 3], np.linalg.norm(batch["vectors"][..., :3], axis=-1)
    assert np.all(e[batch["mask"]] >= p[batch["mask"]] * (1 - 1e-6))
    assert "jets_empty_dropped: 1" in str(report) and report.as_dict()["counts"]["jets_empty_dropped"] == 1


def test_particle_id_classes_and_pid_channels():
    v, mask = toy_padded(n=1, slots=8)
    mask[:] = True
    kinds = [("isPhoton", 0), ("isChargedHadron", -1), ("isNeutralHadron", 0), ("isChargedHadron", 1),
             ("isElectron", -1), ("isElectron", 1), ("isMuon", -1), ("isMuon", 1)]
    extra = {f"part_{k}": np.array([kind == k for kind, _ in kinds]) for k in (
        "isPhoton", "isElectron", "isMuon", "isChargedHadron", "isNeutralHadron")}
    extra["part_charge"] = np.array([c for _, c in kinds], np.int32)
    batch = pipeline_batch(v, mask, "kinpid", extra=extra)
    pt_rank = np.argsort(-np.hypot(v[0, :, 0], v[0, :, 1]), kind="stable")
    np.testing.assert_array_equal(batch["pid"][0, :8], np.arange(8)[pt_rank])
    names = features.FEATURE_SETS["kinpid"]
    np.testing.assert_array_equal(batch["features"][0, :8, names.index("charge")], extra["part_charge"][pt_rank])
    np.testing.assert_array_equal(batch["features"][0, :8, names.index("isMuon")], extra["part_isMuon"][pt_rank])
    assert features.PID_CLASSES[4:6] == ("e-", "e+")


def test_feature_set_channel_layout():
    assert features.FEATURE_SETS["kin"] == ("pt_log", "e_log", "logptrel", "logerel", "deltaR", "deta", "dphi")
    assert len(features.FEATURE_SETS["kinpid"]) == 13 and len(features.FEATURE_SETS["full"]) == 17
    assert features.FEATURE_SETS["full"][11:15] == ("d0", "d0err", "dz", "dzerr")
    assert features.KINEMATIC_CHANNELS[13] == (0, 1, 2, 3, 4, 11, 12)
    with pytest.raises(KeyError, match="unknown feature set"):
        features.required_particle_columns("kinematics")


def test_impact_parameter_channels_are_transformed_as_the_reference():
    v, mask = toy_padded(n=1, slots=4)
    mask[:] = True
    extra = {"part_d0val": np.array([-3.0, 0.1, 0.5, 2.0], np.float32),
             "part_d0err": np.array([-1.0, 0.2, 3.0, 0.5], np.float32),
             "part_dzval": np.array([1.0, -0.3, 0.0, 7.0], np.float32),
             "part_dzerr": np.array([0.0, 2.0, 0.4, 0.9], np.float32)}
    batch = pipeline_batch(v, mask, "full", extra=extra)
    order = np.argsort(-np.hypot(v[0, :, 0], v[0, :, 1]), kind="stable")
    got = batch["features"][0, :4, 11:15]
    expected = np.stack([np.tanh(extra["part_d0val"]), np.clip(extra["part_d0err"], 0, 1),
                         np.tanh(extra["part_dzval"]), np.clip(extra["part_dzerr"], 0, 1)], -1)[order]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
