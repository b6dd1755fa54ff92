"""Pythia 8 + FastJet simulation in the JetClass-II format: layout, schema, labels, physics columns, seeds."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import shared_path
from jetjax import physics

pytest.importorskip("pythia8mc", reason="the simulation needs the optional extra: pip install -e '.[sim]'")
pytest.importorskip("fastjet", reason="the simulation needs the optional extra: pip install -e '.[sim]'")
from jetjax.data import simulate as sim  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
JETS_PER_CLASS = 10
PER_SPLIT = {"train": 8, "val": 1, "test": 1}
STUDY_LABELS = {0, 3, 12, 13, 14, 70, 127} | set(range(161, 188))


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A small simulation of every class (10 jets each), its summary and all its jets as one table."""
    out = tmp_path_factory.mktemp("sim")
    summary = sim.simulate(out, JETS_PER_CLASS, seed=3, workers=1, progress=False)
    files = sorted(out.glob("*/*.parquet"))
    rows = [dict(row, split=f.parent.name, file=f.name) for f in files for row in pq.read_table(f).to_pylist()]
    return out, summary, files, rows


def _vectors(row, prefix="part_"):
    return np.stack([np.asarray(row[f"{prefix}{k}"], np.float64) for k in ("px", "py", "pz", "energy")], -1)


def test_layout_classes_and_labels(simulated):
    out, summary, files, rows = simulated
    assert [f.relative_to(out).as_posix() for f in files] == sorted(
        f"{split}/{sample}_{i:04d}.parquet" for i, split in enumerate(("train", "val", "test"))
        for sample in ("Res2P", "Res34P", "QCD"))
    assert summary == {**summary, "written": 9, "skipped": 0}
    labels = [r["jet_label"] for r in rows]
    assert set(labels) <= STUDY_LABELS
    for split, n in PER_SPLIT.items():
        split_labels = [r["jet_label"] for r in rows if r["split"] == split]
        for label in (0, 3, 12, 13, 14, 70, 127):
            assert split_labels.count(label) == n, (split, label)
        assert sum(label >= 161 for label in split_labels) == n
    samples = {0: "Res2P", 3: "Res2P", 12: "Res2P", 13: "Res2P", 14: "Res2P", 70: "Res34P", 127: "Res34P"}
    assert all(r["file"].startswith(samples.get(r["jet_label"], "QCD")) for r in rows)


def test_schema_equals_the_jetclass2_example(simulated):
    example = pq.read_schema(shared_path("data", "jetclass2_example", "JetClassII_example.parquet"))
    assert sim.PARQUET_SCHEMA.equals(example, check_metadata=False)
    for f in simulated[2]:
        assert pq.read_schema(f).equals(example, check_metadata=False), f


def test_jet_kinematics_and_cuts_follow_the_constituents(simulated):
    for row in simulated[3]:
        v = _vectors(row)
        jet = v.sum(0)
        assert row["jet_nparticles"] == len(v) == row["genjet_nparticles"]
        np.testing.assert_allclose([row["jet_pt"], row["jet_energy"]], [physics.pt(jet), jet[3]], rtol=1e-5)
        assert row["jet_eta"] == pytest.approx(physics.pseudorapidity(jet), abs=1e-5)
        assert row["jet_phi"] == pytest.approx(physics.phi(jet), abs=1e-5)
        assert 500 <= row["jet_pt"] < 1000 and abs(row["jet_eta"]) < 2
        assert np.all(np.abs(physics.pseudorapidity(v)) < 2.5)
        assert np.all(np.diff(physics.pt(v)) <= 1e-3), "constituents sorted by decreasing pT"
        sign = 1 if row["jet_eta"] >= 0 else -1
        np.testing.assert_allclose(row["part_deta"], sign * (physics.pseudorapidity(v) - row["jet_eta"]), atol=1e-4)
        np.testing.assert_allclose(row["part_dphi"], physics.wrap_phi(physics.phi(v) - row["jet_phi"]), atol=1e-4)
        for k in ("pt", "eta", "phi", "energy", "sdmass"):
            assert row[f"genjet_{k}"] == row[f"jet_{k}"]
        assert row["genpart_px"] == row["part_px"] and row["genpart_jet_dphi"] == row["part_dphi"]


def _naive_soft_drop_mass(v, z_cut=0.1):
    """Cambridge/Aachen by repeated merging of the closest pair in (y, phi), then soft-drop declustering."""
    nodes = [(p, None) for p in v]
    active = list(range(len(v)))
    while len(active) > 1:
        p = np.array([nodes[i][0] for i in active])
        y, phi = physics.rapidity(p), physics.phi(p)
        dr = physics.delta_r(y[:, None], phi[:, None], y[None], phi[None]) + np.diag(np.full(len(p), np.inf))
        a, b = np.unravel_index(np.argmin(dr), dr.shape)
        nodes.append((p[a] + p[b], (active[a], active[b])))
        active = [i for k, i in enumerate(active) if k not in (a, b)] + [len(nodes) - 1]
    node = nodes[active[0]]
    while node[1] is not None:
        (p1, _), (p2, _) = nodes[node[1][0]], nodes[node[1][1]]
        pt1, pt2 = physics.pt(p1), physics.pt(p2)
        if min(pt1, pt2) > z_cut * (pt1 + pt2):
            break
        node = nodes[node[1][0]] if pt1 >= pt2 else nodes[node[1][1]]
    return np.sqrt(max(physics.mass2(node[0]), 0.0))


def test_soft_drop_mass_and_tau1_match_naive_references(simulated):
    for row in simulated[3][::3]:
        v = _vectors(row)
        # abs: a jet groomed to one particle has its mass from float32 components (rounding ~0.1 GeV)
        assert row["jet_sdmass"] == pytest.approx(_naive_soft_drop_mass(v), rel=1e-3, abs=0.5)
        pt, y, phi = physics.pt(v), physics.rapidity(v), physics.phi(v)
        jet = v.sum(0)
        tau1 = (pt * physics.delta_r(y, phi, physics.rapidity(jet), physics.phi(jet))).sum() / (pt.sum() * 0.8)
        assert row["jet_tau1"] == pytest.approx(tau1, rel=1e-3)
        assert row["jet_sdmass"] <= np.sqrt(max(physics.mass2(jet), 0)) + 1e-2
        assert 0 <= row["jet_tau4"] <= row["jet_tau1"]


def test_particle_identity_and_impact_parameters(simulated):
    pulls = []
    for row in simulated[3]:
        charge = np.asarray(row["part_charge"])
        flags = np.stack([row[f"part_is{k}"] for k in ("Electron", "Muon", "Photon", "ChargedHadron",
                                                       "NeutralHadron")], -1)
        assert np.all(flags.sum(-1) == 1)
        np.testing.assert_array_equal(charge != 0, flags[:, 0] | flags[:, 1] | flags[:, 3])
        pid = np.abs(row["genpart_pid"])
        np.testing.assert_array_equal(flags[:, 0], pid == 11)
        np.testing.assert_array_equal(flags[:, 2], pid == 22)
        charged = charge != 0
        for k in ("d0val", "d0err", "dzval", "dzerr"):
            assert np.all(np.asarray(row[f"part_{k}"])[~charged] == 0)
        assert np.all(np.asarray(row["part_d0err"])[charged] > 0)
        v, x, y = _vectors(row)[charged], np.asarray(row["genpart_x"])[charged], np.asarray(row["genpart_y"])[charged]
        d0_true = (y * v[:, 0] - x * v[:, 1]) / physics.pt(v)
        pulls.append((np.asarray(row["part_d0val"])[charged] - d0_true) / np.asarray(row["part_d0err"])[charged])
    pulls = np.concatenate(pulls)
    assert len(pulls) > 1000
    assert abs(pulls.mean()) < 0.1 and abs(pulls.std() - 1) < 0.1


def _inside_jet(row, mask):
    eta, phi = np.asarray(row["aux_genpart_eta"])[mask], np.asarray(row["aux_genpart_phi"])[mask]
    return np.all(np.hypot(eta - row["jet_eta"], physics.wrap_phi(phi - row["jet_phi"])) < 0.8)


def test_generator_record_matches_the_label(simulated):
    names = json.loads(shared_path("data", "jetclass2_example", "jetclass2_label_names_188.json").read_text())
    for row in simulated[3]:
        label, pid = row["jet_label"], np.abs(row["aux_genpart_pid"])
        products = np.asarray(row["aux_genpart_isResDecayProd"])
        tau_daughters = pid[np.asarray(row["aux_genpart_isTauDecayProd"])]
        if label >= 161:
            assert all(row["aux_genpart_isQcdParton"])
            counts = {f: min(int((pid == code).sum()), 2) for f, code in (("b", 5), ("c", 4), ("s", 3))}
            assert names[label] == "label_QCD_" + ("".join(f * n for f, n in counts.items()) or "light")
            continue
        resonance = pid[np.asarray(row["aux_genpart_isResX"])]
        if label in (70, 127):
            assert list(resonance) == [6] and list(pid[np.asarray(row["aux_genpart_isResY"])]) == [24]
            assert sorted(pid[products]) == ([1, 2, 5] if label == 70 else [3, 4, 5])
        elif label in (0, 3):
            assert list(resonance) == [25] and set(pid[products]) <= ({5} if label == 0 else {1, 2})
        else:
            assert list(resonance) == [25] and list(pid[products]) == [15, 15]
            leptons = sorted(int(p) for p in tau_daughters if p in (11, 13))
            assert leptons == {12: [11], 13: [13], 14: []}[label]
        if label not in (12, 13, 14):  # taus: their visible momenta are matched, not the taus'
            assert _inside_jet(row, products)
        assert 50 <= row["aux_genpart_mass"][0] <= 200 or label in (70, 127)


def test_same_seed_same_bytes_whatever_the_workers_and_resume_writes_only_missing_files(tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    sim.main(["--out", str(a), "--jets-per-class", "3", "--seed", "5", "--classes", "qqb"])
    assert "jets per CPU second" in capsys.readouterr().out
    sim.simulate(b, 3, seed=5, workers=2, classes=("qqb",), progress=False)
    files = sorted(p.relative_to(a) for p in a.glob("*/*.parquet"))
    assert len(files) == 3
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    sim.simulate(c, 3, seed=6, classes=("qqb",), progress=False)
    assert not pq.read_table(c / files[0]).equals(pq.read_table(a / files[0]))
    removed = a / files[1]
    removed.unlink()
    removed.with_name(removed.name + ".tmp999").write_bytes(b"half a file from an interrupted run")
    kept_time = (a / files[0]).stat().st_mtime_ns
    summary = sim.simulate(a, 3, seed=5, classes=("qqb",), progress=False)
    assert (summary["written"], summary["skipped"]) == (1, 2)
    assert removed.read_bytes() == (b / files[1]).read_bytes()
    assert (a / files[0]).stat().st_mtime_ns == kept_time
    assert not list(a.glob("*/*.tmp*"))
    with pytest.raises(ValueError, match="simulation.json"):
        sim.simulate(a, 3, seed=6, classes=("qqb",), progress=False)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown classes"):
        sim.plan_files("x", 10, 0, (500, 1000), classes=("Hbb",))
    with pytest.raises(ValueError, match="jets-per-class"):
        sim.plan_files("x", 2, 0, (500, 1000))


def test_file_plan_splits_and_numbering():
    tasks = sim.plan_files("o", 1500, 0, (500, 1000), classes=("bb", "QCD"))
    names = {(t.path.parent.name, t.path.name, t.jets_per_class) for t in tasks}
    assert {(s, n) for s, n, _ in names} == {
        ("train", "Res2P_0000.parquet"), ("train", "Res2P_0001.parquet"), ("train", "Res2P_0002.parquet"),
        ("val", "Res2P_0003.parquet"), ("test", "Res2P_0004.parquet"),
        ("train", "QCD_0000.parquet"), ("train", "QCD_0001.parquet"), ("train", "QCD_0002.parquet"),
        ("val", "QCD_0003.parquet"), ("test", "QCD_0004.parquet")}
    for sample in ("Res2P", "QCD"):
        assert sum(t.jets_per_class for t in tasks if t.sample == sample) == 1500
    assert {t.classes for t in tasks} == {("bb",), ("QCD",)}


def test_qcd_sub_label_names():
    names = json.loads(shared_path("data", "jetclass2_example", "jetclass2_label_names_188.json").read_text())
    assert names[sim.qcd_label([5, -5, 4, 3, -3, 3])] == "label_QCD_bbcss"
    assert names[sim.qcd_label([-4])] == "label_QCD_c"
    assert names[sim.qcd_label([1, 2, 21])] == "label_QCD_light"
    assert names[sim.qcd_label([5, 3, 3])] == "label_QCD_bss"


def test_importing_jetjax_does_not_need_the_generators(monkeypatch):
    code = ("import sys, jetjax, jetjax.data, jetjax.data.simulate; "
            "assert not {'pythia8mc', 'fastjet'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    monkeypatch.setitem(sys.modules, "pythia8mc", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[sim\]"'):
        sim.simulate("unused", 10)


def _study_sim_config():
    spec = importlib.util.spec_from_file_location("study_sim", PROJECT / "configs" / "study_sim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_readers_and_pipeline_load_the_files_with_the_study_config(simulated):
    from jetjax.data import chunks, classes, pipeline, readers

    out = simulated[0]
    config = _study_sim_config()
    assert (config.mode, config.data.format) == ("study", "parquet")
    scheme = classes.get_scheme(config.data.scheme)
    for split, n in PER_SPLIT.items():
        groups = readers.discover_files(out, split)
        assert set(groups) == {"Res2P", "Res34P", "QCD"}
        for group, paths in groups.items():
            for path in paths:
                for chunk in readers.read_chunks(path, chunks.PARTICLE_VECTOR_COLUMNS):
                    index = scheme.class_index(chunk.raw_label)
                    assert np.all(index >= 0) and {scheme.classes[i].file_group for i in index} == {group}
        report = chunks.DataReport()
        batches = list(pipeline.test_batches(out, feature_set="full", split=split, scheme=config.data.scheme,
                                             batch_size=16, report=report))
        labels = np.concatenate([b["label"] for b in batches])
        expected = [2 * n if c.name == "qqb_bcs" else n for c in scheme.classes]
        np.testing.assert_array_equal(np.bincount(labels, minlength=scheme.num_classes), expected)
        assert all(np.isfinite(b["features"]).all() for b in batches)
        assert not report.excluded_labels
