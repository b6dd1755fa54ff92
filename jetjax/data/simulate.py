"""Simulate the study's seven jet classes with Pythia 8 + FastJet, written in the JetClass-II parquet format.

    python -m jetjax.data.simulate --out DIR --jets-per-class N --seed S --workers K [--pt-range 500 1000]

needs the optional extra: `pip install -e ".[sim]"` (pythia8mc, fastjet). Importing jetjax never needs it.

Physics (pp at 13.6 TeV, Pythia 8 defaults for ISR, FSR, multiparton interactions and hadronisation; no
pile-up and no detector simulation):
- X -> bb, X -> qq (q = u, d), X -> tau tau: a scalar resonance (the SM Higgs code 25, ffbar -> X Z with
  Z -> nu nu). Its mass is spread flat-ish over `X_MASS_RANGE` by forcing a Breit-Wigner width far larger
  than the range (`25:doForceWidth`, `25:mMin/mMax`): every event has its own X mass, stored in
  `aux_genpart_mass`. Di-tau jets are labelled from the record by how the two taus decayed (a tau with an
  electron or muon daughter is leptonic); tau_e tau_e, tau_e tau_mu and tau_mu tau_mu are not study classes.
- top: t tbar with every W -> q q' forced to u d (class qqb) or to c s (class bcs); each hadronic top is
  a candidate and the label is read back from the W's daughters.
- QCD: Z (-> nu nu) + jet (q qbar -> Z g, q g -> Z q); the JetClass-II QCD sub-label (161..187) counts the
  b, c and s quarks (at most two each) among the final parton-level quarks with pT > `QCD_PARTON_PT_MIN`
  within Delta R < 0.8 of the jet, as the example file's `aux_genpart` QCD partons show.
- `PhaseSpace:pTHatMin` = `PTHAT_MIN_FRACTION` x the lower jet pT: the hard-process pT is the pT of the
  boosted object; the margin keeps the jet spectrum near the threshold (the jet loses pT out of cone).
  Di-tau events use pTHatMin = pT_min (see `CHANNELS`).
- Unstable particles with c tau0 > `TAU0_MAX_MM` (K0S, Lambda, ...) are kept stable, as in LHC samples;
  b and c hadrons decay, so their products come from displaced vertices.
Jets: anti-kT R = 0.8 on the visible final-state particles (no neutrinos) with |eta| < 2.5; jet |eta| < 2
and pT_min <= pT < pT_max. A signal jet is kept only if all its decay products (the quarks, the taus'
visible momenta, the top's b q q') lie within Delta R(eta, phi) < 0.8 of the jet axis.

Columns (dtypes exactly those of the real JetClass-II parquet, `PARQUET_SCHEMA`):
- `part_*`: the jet constituents sorted by decreasing pT; deta = sign(jet_eta) (eta - jet_eta), dphi
  wrapped; PID flags from the PDG id (charged/neutral hadron = any other charged/neutral particle).
  d0 and dz are the straight-line impact parameters of the particle's production vertex and momentum with
  respect to the beam line / origin, in mm: d0 = (y px - x py) / pT, dz = z - (x px + y py) pz / pT^2.
  They are smeared with a Gaussian of the resolution model `impact_parameter_resolution` (a constant term
  plus a multiple-scattering term 1 / (p sin^1.5 theta), calibrated roughly to the medians of the example
  file's errors) which is also stored as d0err, dzerr. Neutral particles have d0 = dz = errors = 0, as in
  JetClass-II. Magnetic-field curvature is neglected.
- `jet_*`: the constituent four-vector sum; `jet_sdmass`: soft drop (z_cut = 0.1, beta = 0) on a
  Cambridge/Aachen reclustering of the constituents, implemented here by declustering (FastJet's python
  wheel carries no fastjet-contrib); `jet_tau1..4`: normalised N-subjettiness (beta = 1, R0 = 0.8) with
  exclusive-kT axes, distances in rapidity-azimuth.
- `genjet_*`, `genpart_*`: without a detector the generator-level jet is the same jet: same constituents
  with unsmeared production vertex (x, y, z in mm, t in mm/c) and PDG id.
- `aux_genpart_*`: the generator record of the jet's origin as in JetClass-II: X (isResX) or the top
  (isResX) and its W (isResY); the resonance decay products (isResDecayProd: quarks, taus, the top's b q q');
  the taus' direct daughters (isTauDecayProd); for QCD the quarks that define the sub-label (isQcdParton).

Layout (what `readers` discovers): `OUT/{train,val,test}/{Res2P,Res34P,QCD}_NNNN.parquet`, the X -> bb/qq/
tau tau classes in Res2P files, top in Res34P, QCD in QCD, rows shuffled within a file. Each class is split
80/10/10 (`SPLIT_FRACTIONS`, at least one jet per split) into files of at most `JETS_PER_CLASS_PER_FILE`
jets per class, numbered continuously over train, val, test like the real dataset. Each file is one unit
of work with its own seeds (from --seed, the sample and the file number), so it is reproducible whatever
the number of workers; it is written to a temporary name and renamed when complete, and a rerun writes
only the files still missing (`simulation.json` in OUT records the settings and guards against mixing).
"""
import argparse
import functools
import json
import math
import multiprocessing
import os
import queue
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from jetjax import physics

SQRT_S_GEV = 13600.0
JET_R = 0.8
PARTICLE_ABS_ETA_MAX = 2.5
JET_ABS_ETA_MAX = 2.0
PTHAT_MIN_FRACTION = 0.85
X_MASS_RANGE = (50.0, 200.0)
X_FORCED_WIDTH = 1000.0
TAU0_MAX_MM = 10.0
SOFT_DROP_ZCUT = 0.1
RECLUSTER_R = 1000.0
"""Radius of the C/A and kT reclusterings: large enough that all constituents merge."""
QCD_PARTON_PT_MIN = 10.0
JETS_PER_CLASS_PER_FILE = 500
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
MAX_EVENTS_PER_JET = 500
"""A channel that needs more events than this per requested jet stops with an error (unreachable cuts)."""

CLASS_LABELS = {"bb": 0, "qq": 3, "tauhtaue": 12, "tauhtaum": 13, "tauhtauh": 14, "qqb": 70, "bcs": 127}
"""JetClass-II `jet_label` of each signal class; QCD jets get one of `QCD_LABELS`."""
QCD_LABELS = range(161, 188)
CLASSES = tuple(CLASS_LABELS) + ("QCD",)
SAMPLES = {"Res2P": ("bb", "qq", "tauhtaue", "tauhtaum", "tauhtauh"), "Res34P": ("qqb", "bcs"), "QCD": ("QCD",)}
"""File prefix -> the classes its files hold (the JetClass-II file groups)."""

_HZ = ("HiggsSM:ffbar2HZ = on", "23:onMode = off", "23:onIfAny = 12 14 16", "25:onMode = off",
       f"25:mWidth = {X_FORCED_WIDTH}", "25:doForceWidth = on",
       f"25:mMin = {X_MASS_RANGE[0]}", f"25:mMax = {X_MASS_RANGE[1]}")
_TTBAR = ("Top:gg2ttbar = on", "Top:qqbar2ttbar = on", "24:onMode = off")
_ZJET = ("WeakBosonAndParton:qqbar2gmZg = on", "WeakBosonAndParton:qg2gmZq = on", "WeakZ0:gmZmode = 2",
         "23:onMode = off", "23:onIfAny = 12 14 16")
CHANNELS = {
    "X_bb": (_HZ + ("25:onIfAny = 5",), ("bb",), PTHAT_MIN_FRACTION),
    "X_qq": (_HZ + ("25:onIfAny = 1 2",), ("qq",), PTHAT_MIN_FRACTION),
    "X_tautau": (_HZ + ("25:onIfAny = 15",), ("tauhtaue", "tauhtaum", "tauhtauh"), 1.0),
    "top_qqb": (_TTBAR + ("24:onIfMatch = 1 2",), ("qqb",), PTHAT_MIN_FRACTION),
    "top_bcs": (_TTBAR + ("24:onIfMatch = 3 4",), ("bcs",), PTHAT_MIN_FRACTION),
    "QCD": (_ZJET, ("QCD",), PTHAT_MIN_FRACTION),
}
"""Channel -> (Pythia process settings, the classes its jets can be, pTHatMin / jet pT_min). A di-tau jet
carries only the taus' visible pT, so it rarely passes the jet pT cut unless X's pT (the pTHat) does:
pTHatMin = pT_min halves the CPU time and loses about 3% of the di-tau jets (measured with 0.8 pT_min:
5 of 150 tau_h tau_h jets came from X pT < pT_min, all near the threshold, pushed up by radiation)."""

_F32 = pa.list_(pa.field("item", pa.float32(), nullable=False))
_I32 = pa.list_(pa.field("item", pa.int32(), nullable=False))
_BOOL = pa.list_(pa.field("item", pa.bool_(), nullable=False))
_PART = [("part_px", _F32), ("part_py", _F32), ("part_pz", _F32), ("part_energy", _F32), ("part_deta", _F32),
         ("part_dphi", _F32), ("part_d0val", _F32), ("part_d0err", _F32), ("part_dzval", _F32),
         ("part_dzerr", _F32), ("part_charge", _I32), ("part_isElectron", _BOOL), ("part_isMuon", _BOOL),
         ("part_isPhoton", _BOOL), ("part_isChargedHadron", _BOOL), ("part_isNeutralHadron", _BOOL)]
_JET = [(f"jet_{k}", pa.float32()) for k in ("pt", "eta", "phi", "energy", "sdmass")] + [
    ("jet_nparticles", pa.int32())] + [(f"jet_tau{n}", pa.float32()) for n in range(1, 5)] + [
    ("jet_label", pa.int32())]
_GENPART = [(f"genpart_{k}", _F32) for k in ("px", "py", "pz", "energy", "jet_deta", "jet_dphi", "x", "y", "z",
                                               "t")] + [("genpart_pid", _I32)]
_GENJET = [(f"genjet_{k}", pa.float32()) for k in ("pt", "eta", "phi", "energy", "sdmass")] + [
    ("genjet_nparticles", pa.int32())]
AUX_FLAGS = ("isResX", "isResY", "isResDecayProd", "isTauDecayProd", "isQcdParton")
_AUX = [(f"aux_genpart_{k}", _F32) for k in ("pt", "eta", "phi", "mass")] + [("aux_genpart_pid", _I32)] + [
    (f"aux_genpart_{k}", _BOOL) for k in AUX_FLAGS]
PARQUET_SCHEMA = pa.schema([pa.field(n, t, nullable=False) for n, t in _PART + _JET + _GENPART + _GENJET + _AUX])
"""Columns and dtypes of the JetClass-II parquet files, in their order."""


def _import_generators():
    """Import pythia8mc and fastjet, or fail with what to install."""
    try:
        import fastjet
        import pythia8mc
    except ImportError as err:
        raise ImportError(f"jetjax.data.simulate needs Pythia 8 and FastJet ({err}); install the extra with "
                          "`pip install -e \".[sim]\"` (or `pip install \"jetjax[sim]\"`)") from err
    return pythia8mc, fastjet


# ----------------------------------------------------------------------------------------------------------
# Planning: which files, which seeds


@dataclass(frozen=True)
class FileTask:
    path: Path
    sample: str
    classes: tuple
    jets_per_class: int
    seed: int
    pt_range: tuple


def split_sizes(jets_per_class):
    """Jets per class in train/val/test: `SPLIT_FRACTIONS`, with at least one jet in val and test."""
    if jets_per_class < len(SPLIT_FRACTIONS):
        raise ValueError(f"--jets-per-class must be at least {len(SPLIT_FRACTIONS)} (one jet per split), "
                         f"got {jets_per_class}")
    val = max(1, round(SPLIT_FRACTIONS["val"] * jets_per_class))
    test = max(1, round(SPLIT_FRACTIONS["test"] * jets_per_class))
    return {"train": jets_per_class - val - test, "val": val, "test": test}


def plan_files(out, jets_per_class, seed, pt_range, classes=CLASSES):
    """All files of a simulation, numbered per sample continuously over train, val, test."""
    unknown = sorted(set(classes) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown classes {unknown}; choose among {list(CLASSES)}")
    tasks = []
    for sample, sample_classes in SAMPLES.items():
        wanted = tuple(c for c in sample_classes if c in classes)
        if not wanted:
            continue
        index = 0
        for split, n in split_sizes(jets_per_class).items():
            n_files = math.ceil(n / JETS_PER_CLASS_PER_FILE)
            for n_file in np.array_split(np.arange(n), n_files):
                tasks.append(FileTask(Path(out) / split / f"{sample}_{index:04d}.parquet", sample, wanted,
                                      len(n_file), seed, tuple(pt_range)))
                index += 1
    return tasks


def _file_seed_sequence(task, *extra):
    """Seeds of one file: a function of --seed, the sample, the file number (and a channel number)."""
    index = int(task.path.stem.rsplit("_", 1)[1])
    return np.random.SeedSequence([task.seed, list(SAMPLES).index(task.sample), index, *extra])


# ----------------------------------------------------------------------------------------------------------
# Generator record -> candidates (decay products that must lie in the jet, aux record, label)


@dataclass
class Candidate:
    prongs: list   # (eta, phi) of every decay product that must lie within the jet
    aux: list      # (pythia particle, aux flag name) pairs for the aux_genpart_* columns
    label: int = None   # None: not a study class


def _bottom_copy(event, i):
    return event[event[i].iBotCopyId()]


def _daughters(event, particle):
    return [event[j] for j in particle.daughterList()]


def _is_neutrino(particle):
    return particle.idAbs() in (12, 14, 16)


def _visible_tau(event, tau):
    """Decay mode ("e", "mu" or "h"), visible four-vector and daughters of a tau's decaying copy."""
    daughters = _daughters(event, tau)
    ids = {d.idAbs() for d in daughters}
    mode = "e" if 11 in ids else "mu" if 13 in ids else "h"
    v = np.sum([[d.px(), d.py(), d.pz(), d.e()] for d in daughters if not _is_neutrino(d)], axis=0)
    return mode, v, daughters


TAU_PAIR_LABELS = {("e", "h"): CLASS_LABELS["tauhtaue"], ("h", "mu"): CLASS_LABELS["tauhtaum"],
                   ("h", "h"): CLASS_LABELS["tauhtauh"]}


def resonance_candidates(event):
    """The X of an ffbar -> X Z event: its two quarks, or its two taus labelled by their decays."""
    i_x = next(i for i in range(event.size()) if event[i].id() == 25)
    x = _bottom_copy(event, i_x)
    products = _daughters(event, x)
    aux = [(x, "isResX")] + [(p, "isResDecayProd") for p in products]
    if products[0].idAbs() != 15:
        label = CLASS_LABELS["bb"] if products[0].idAbs() == 5 else CLASS_LABELS["qq"]
        return [Candidate([(p.eta(), p.phi()) for p in products], aux, label)]
    modes, prongs, tau_daughters = [], [], []
    for tau in products:
        mode, visible, daughters = _visible_tau(event, _bottom_copy(event, tau.index()))
        modes.append(mode)
        prongs.append((float(physics.pseudorapidity(visible)), float(physics.phi(visible))))
        tau_daughters += [(d, "isTauDecayProd") for d in daughters]
    return [Candidate(prongs, aux + tau_daughters, TAU_PAIR_LABELS.get(tuple(sorted(modes))))]


TOP_FLAVOUR_LABELS = {(1, 2, 5): CLASS_LABELS["qqb"], (3, 4, 5): CLASS_LABELS["bcs"]}
"""Sorted |PDG id| of a top's three quarks -> label (t -> s W, d W or W -> c d, u s: not a study class)."""


def top_candidates(event):
    """Each top of a t tbar event: its down-type quark and the W's q q', labelled by their flavours."""
    tops = sorted({event[i].iBotCopyId() for i in range(event.size()) if event[i].idAbs() == 6})
    candidates = []
    for i_top in tops:
        top = event[i_top]
        w = _bottom_copy(event, next(d.index() for d in _daughters(event, top) if d.idAbs() == 24))
        products = [d for d in _daughters(event, top) if d.isQuark()] + _daughters(event, w)
        label = TOP_FLAVOUR_LABELS.get(tuple(sorted(p.idAbs() for p in products)))
        aux = [(top, "isResX"), (w, "isResY")] + [(p, "isResDecayProd") for p in products]
        candidates.append(Candidate([(p.eta(), p.phi()) for p in products], aux, label))
    return candidates


def qcd_label(quark_ids):
    """JetClass-II QCD sub-label from the quark flavours in the jet: 161 (bbccss) ... 187 (light)."""
    counts = Counter(abs(q) for q in quark_ids)
    nb, nc, ns = (min(counts[f], 2) for f in (5, 4, 3))
    return QCD_LABELS[0] + 9 * (2 - nb) + 3 * (2 - nc) + (2 - ns)


def qcd_candidate(final_quarks, jet_eta, jet_phi):
    """A QCD jet: its final parton-level quarks with pT > QCD_PARTON_PT_MIN within the jet."""
    inside = [q for q in final_quarks
              if _delta_r_eta(q.eta(), q.phi(), jet_eta, jet_phi) < JET_R and q.pT() > QCD_PARTON_PT_MIN]
    return Candidate([], [(q, "isQcdParton") for q in inside], qcd_label([q.id() for q in inside]))


def _delta_r_eta(eta1, phi1, eta2, phi2):
    """Delta R in pseudorapidity-azimuth, used to match decay products to jets."""
    return math.hypot(eta1 - eta2, float(physics.wrap_phi(phi1 - phi2)))


# ----------------------------------------------------------------------------------------------------------
# Particles, jets and their columns


def visible_final_particles(event):
    """(n, 10) array: px, py, pz, E, pid, charge, x, y, z, t of the visible final-state particles, |eta| < 2.5."""
    rows = [(p.px(), p.py(), p.pz(), p.e(), p.id(), p.charge(), p.xProd(), p.yProd(), p.zProd(), p.tProd())
            for p in event if p.isFinal() and p.isVisible() and abs(p.eta()) < PARTICLE_ABS_ETA_MAX]
    return np.array(rows, dtype=np.float64).reshape(-1, 10)


def _pseudojets(fastjet, vectors):
    jets = []
    for i, (px, py, pz, e) in enumerate(vectors):
        p = fastjet.PseudoJet(float(px), float(py), float(pz), float(e))
        p.set_user_index(i)
        jets.append(p)
    return jets


def soft_drop_mass(fastjet, constituents, z_cut=SOFT_DROP_ZCUT):
    """Soft-drop (beta = 0) mass: decluster the C/A tree, dropping the softer branch while z < z_cut."""
    sequence = fastjet.ClusterSequence(constituents, fastjet.JetDefinition(fastjet.cambridge_algorithm,
                                                                           RECLUSTER_R))
    jet = sequence.exclusive_jets(1)[0]
    while True:
        branch1, branch2 = fastjet.PseudoJet(), fastjet.PseudoJet()
        if not jet.has_parents(branch1, branch2):
            break
        if min(branch1.pt(), branch2.pt()) > z_cut * (branch1.pt() + branch2.pt()):
            break
        jet = branch1 if branch1.pt() >= branch2.pt() else branch2
    return math.sqrt(max(jet.m2(), 0.0))


def n_subjettiness(fastjet, constituents, vectors, n_max=4):
    """tau_1..tau_n_max, beta = 1, normalised by sum(pT) R0, with exclusive-kT axes (0 for <= N particles)."""
    sequence = fastjet.ClusterSequence(constituents, fastjet.JetDefinition(fastjet.kt_algorithm, RECLUSTER_R))
    pt, y, phi = physics.pt(vectors), physics.rapidity(vectors), physics.phi(vectors)
    taus = []
    for n in range(1, n_max + 1):
        if len(constituents) <= n:
            taus.append(0.0)
            continue
        axes = np.array([[a.px(), a.py(), a.pz(), a.E()] for a in sequence.exclusive_jets(n)])
        dr = physics.delta_r(y[:, None], phi[:, None], physics.rapidity(axes)[None], physics.phi(axes)[None])
        taus.append(float((pt * dr.min(axis=1)).sum() / (pt.sum() * JET_R)))
    return taus


def impact_parameter_resolution(vectors):
    """Resolution (mm) of d0 and dz: constant term (+) multiple scattering 1 / (p sin^1.5 theta); dz / sin theta.

    sigma_d0 = 0.011 (+) 0.11 / (p sin^1.5 theta), sigma_dz = [0.030 (+) 0.14 / (p sin^1.5 theta)] / sin theta
    (p in GeV), tuned by eye to the medians of d0err/dzerr versus pT and eta in the JetClass-II example file.
    """
    p = np.linalg.norm(vectors[:, :3], axis=1)
    sin_theta = physics.pt(vectors) / p
    scattering = 1.0 / (p * sin_theta ** 1.5)
    return np.hypot(0.011, 0.11 * scattering), np.hypot(0.030, 0.14 * scattering) / sin_theta


def impact_parameters(vectors, vertices):
    """Straight-line transverse (signed) and longitudinal impact parameters (mm) w.r.t. the beam line / origin."""
    px, py, pz = vectors[:, 0], vectors[:, 1], vectors[:, 2]
    x, y, z = vertices[:, 0], vertices[:, 1], vertices[:, 2]
    pt2 = px ** 2 + py ** 2
    return (y * px - x * py) / np.sqrt(pt2), z - (x * px + y * py) * pz / pt2


def pid_flags(pid, charge):
    """The five JetClass-II particle-type flags from the PDG id and the charge."""
    electron, muon, photon = np.abs(pid) == 11, np.abs(pid) == 13, pid == 22
    lepton = electron | muon
    return {"part_isElectron": electron, "part_isMuon": muon, "part_isPhoton": photon,
            "part_isChargedHadron": (charge != 0) & ~lepton, "part_isNeutralHadron": (charge == 0) & ~photon}


def jet_columns(fastjet, particles, rng):
    """One jet's row (all columns but the label and aux) from its constituents' (n, 10) particle array."""
    particles = particles[np.argsort(-physics.pt(particles[:, :4]), kind="stable")]
    vectors, pid, charge = particles[:, :4], particles[:, 4].astype(np.int32), particles[:, 5].astype(np.int32)
    jet = vectors.sum(axis=0)
    jet_eta, jet_phi = float(physics.pseudorapidity(jet)), float(physics.phi(jet))
    deta = (1.0 if jet_eta >= 0 else -1.0) * (physics.pseudorapidity(vectors) - jet_eta)
    dphi = physics.wrap_phi(physics.phi(vectors) - jet_phi)
    constituents = _pseudojets(fastjet, vectors)
    sdmass = soft_drop_mass(fastjet, constituents)
    charged = charge != 0
    d0, dz = impact_parameters(vectors[charged], particles[charged, 6:9])
    d0err, dzerr = impact_parameter_resolution(vectors[charged])
    ip = {k: np.zeros(len(vectors)) for k in ("part_d0val", "part_d0err", "part_dzval", "part_dzerr")}
    ip["part_d0val"][charged] = d0 + d0err * rng.standard_normal(len(d0))
    ip["part_dzval"][charged] = dz + dzerr * rng.standard_normal(len(dz))
    ip["part_d0err"][charged], ip["part_dzerr"][charged] = d0err, dzerr
    kinematics = {"pt": float(physics.pt(jet)), "eta": jet_eta, "phi": jet_phi, "energy": float(jet[3]),
                  "sdmass": sdmass, "nparticles": len(vectors)}
    row = {"part_px": vectors[:, 0], "part_py": vectors[:, 1], "part_pz": vectors[:, 2],
           "part_energy": vectors[:, 3], "part_deta": deta, "part_dphi": dphi, **ip, "part_charge": charge,
           **pid_flags(pid, charge),
           **{f"jet_{k}": v for k, v in kinematics.items()},
           **{f"jet_tau{n}": t for n, t in enumerate(n_subjettiness(fastjet, constituents, vectors), 1)},
           "genpart_px": vectors[:, 0], "genpart_py": vectors[:, 1], "genpart_pz": vectors[:, 2],
           "genpart_energy": vectors[:, 3], "genpart_jet_deta": deta, "genpart_jet_dphi": dphi,
           **{f"genpart_{k}": particles[:, 6 + i] for i, k in enumerate("xyzt")}, "genpart_pid": pid,
           **{f"genjet_{k}": v for k, v in kinematics.items()}}
    return row


def aux_columns(aux):
    """The `aux_genpart_*` lists of one jet from ((pt, eta, phi, mass, pid), flag name) pairs."""
    columns = {f"aux_genpart_{k}": [p[i] for p, _ in aux] for i, k in enumerate(("pt", "eta", "phi", "mass",
                                                                                  "pid"))}
    for flag in AUX_FLAGS:
        columns[f"aux_genpart_{flag}"] = [f == flag for _, f in aux]
    return columns


def _aux_values(particle):
    return (particle.pT(), particle.eta(), particle.phi(), particle.m(), particle.id())


def to_table(rows):
    """Rows (dicts of scalars and per-particle arrays) -> a pyarrow table with `PARQUET_SCHEMA`."""
    arrays = []
    for field in PARQUET_SCHEMA:
        values = [row[field.name] for row in rows]
        if pa.types.is_list(field.type):
            item = field.type.value_type.to_pandas_dtype()
            offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32)
            flat = np.concatenate([np.asarray(v, dtype=item) for v in values]) if rows else np.zeros(0, item)
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=field.type.value_type),
                                                   type=field.type))
        else:
            arrays.append(pa.array(np.asarray(values, dtype=field.type.to_pandas_dtype()), type=field.type))
    return pa.Table.from_arrays(arrays, schema=PARQUET_SCHEMA)


# ----------------------------------------------------------------------------------------------------------
# Generation


def make_pythia(pythia8mc, channel, pt_range, seed):
    """A Pythia instance for one channel at 13.6 TeV, seeded, quiet."""
    pythia = pythia8mc.Pythia("", False)
    process, _, pthat_fraction = CHANNELS[channel]
    settings = (f"Beams:eCM = {SQRT_S_GEV}", f"PhaseSpace:pTHatMin = {pthat_fraction * pt_range[0]}",
                "ParticleDecays:limitTau0 = on", f"ParticleDecays:tau0Max = {TAU0_MAX_MM}",
                "Random:setSeed = on", f"Random:seed = {seed}", "Next:numberCount = 0",
                "Print:quiet = on") + process
    for setting in settings:
        if not pythia.readString(setting):
            raise RuntimeError(f"Pythia rejected the setting {setting!r} (pythia8mc version?)")
    if not pythia.init():
        raise RuntimeError(f"Pythia initialisation failed for channel {channel}")
    return pythia


def selected_jets(fastjet, particles, pt_range):
    """Anti-kT R=0.8 jets with pT in [pt_min, pt_max) and |eta| < 2, as (cluster sequence, jets)."""
    sequence = fastjet.ClusterSequence(_pseudojets(fastjet, particles[:, :4]),
                                       fastjet.JetDefinition(fastjet.antikt_algorithm, JET_R))
    jets = [j for j in fastjet.sorted_by_pt(sequence.inclusive_jets(pt_range[0]))
            if j.pt() < pt_range[1] and abs(j.eta()) < JET_ABS_ETA_MAX]
    return sequence, jets


def event_candidates(channel, event, jets):
    """(jet, candidate) pairs of one event: signal jets containing all decay products, or each QCD jet."""
    if channel == "QCD":
        quarks = [p for p in event if p.isQuark() and p.isFinalPartonLevel()]
        return [(j, qcd_candidate(quarks, j.eta(), j.phi_std())) for j in jets], 0
    candidates = top_candidates(event) if channel.startswith("top") else resonance_candidates(event)
    pairs = []
    for candidate in candidates:
        jet = next((j for j in jets if all(_delta_r_eta(eta, phi, j.eta(), j.phi_std()) < JET_R
                                           for eta, phi in candidate.prongs)), None)
        if jet is not None:
            pairs.append((jet, candidate))
    return pairs, len(candidates) - len(pairs)


def simulate_channel(pythia8mc, fastjet, channel, wanted, pt_range, seed, rng, on_jet):
    """Generate until every class in `wanted` (class -> number) has its jets; returns rows and counters.

    `on_jet(1)` is called for each jet kept (progress reporting).
    """
    pythia = make_pythia(pythia8mc, channel, pt_range, seed)
    label_class = {label: c for c, label in CLASS_LABELS.items()}
    rows, stats = [], Counter()
    kept = Counter()
    while any(kept[c] < n for c, n in wanted.items()):
        if stats["events"] > MAX_EVENTS_PER_JET * (sum(wanted.values()) + 1):
            raise RuntimeError(f"channel {channel}: only {dict(kept)} of {wanted} jets after {stats['events']} "
                               f"events; is the jet pT range {pt_range} GeV reachable?")
        stats["events"] += 1
        if not pythia.next():
            stats["failed_events"] += 1
            continue
        particles = visible_final_particles(pythia.event)
        sequence, jets = selected_jets(fastjet, particles, pt_range)  # the jets need their sequence alive
        if not jets:
            stats["no_jet_in_range"] += 1
            continue
        pairs, outside = event_candidates(channel, pythia.event, jets)
        stats["decay_products_outside_jet"] += outside
        for jet, candidate in pairs:
            name = "QCD" if channel == "QCD" else label_class.get(candidate.label)
            if name is None:
                stats["not_a_study_class"] += 1
                continue
            stats[f"produced_{name}"] += 1
            if kept[name] >= wanted.get(name, 0):
                stats["class_full"] += 1
                continue
            kept[name] += 1
            members = particles[[c.user_index() for c in jet.constituents()]]
            row = jet_columns(fastjet, members, rng)
            row["jet_label"] = candidate.label
            row.update(aux_columns([(_aux_values(p), flag) for p, flag in candidate.aux]))
            rows.append(row)
            on_jet(1)
    stats.update({f"kept_{c}": n for c, n in kept.items()})
    return rows, stats


def simulate_file(task, on_jet=None):
    """Generate one file (all its classes), write it to a temporary name and rename; returns its counters.

    `on_jet(1)` is called for each jet kept: a progress bar's update, or a queue's put from a worker.
    """
    on_jet = on_jet or (lambda n: None)
    pythia8mc, fastjet = _import_generators()
    rng = np.random.default_rng(_file_seed_sequence(task))
    rows, stats, seconds = [], Counter(), Counter()
    for channel_index, (channel, (_, channel_classes, _)) in enumerate(CHANNELS.items()):
        wanted = {c: task.jets_per_class for c in channel_classes if c in task.classes}
        if not wanted:
            continue
        seed = int(_file_seed_sequence(task, channel_index).generate_state(1)[0] % 900_000_000) + 1
        start = time.process_time()
        channel_rows, channel_stats = simulate_channel(pythia8mc, fastjet, channel, wanted, task.pt_range,
                                                       seed, rng, on_jet)
        seconds[channel] += time.process_time() - start
        rows += channel_rows
        stats.update({f"{channel}/{k}": v for k, v in channel_stats.items()})
    rows = [rows[i] for i in rng.permutation(len(rows))]
    task.path.parent.mkdir(parents=True, exist_ok=True)
    for stale in task.path.parent.glob(f"{task.path.name}.tmp*"):  # left by an interrupted run
        stale.unlink()
    temporary = task.path.with_name(f"{task.path.name}.tmp{os.getpid()}")
    pq.write_table(to_table(rows), temporary)
    os.replace(temporary, task.path)
    return {"file": str(task.path), "jets": len(rows), "stats": dict(stats), "cpu_seconds": dict(seconds)}


def _check_manifest(out, settings):
    """Record the settings in OUT/simulation.json; refuse to continue a simulation made with other settings."""
    manifest = Path(out) / "simulation.json"
    if manifest.exists():
        previous = json.loads(manifest.read_text())
        if previous != settings:
            raise ValueError(f"{manifest} records a simulation with other settings ({previous}, now {settings}); "
                             "use another --out or the same settings to continue it")
    else:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(settings, indent=1))


def simulate(out, jets_per_class, seed=0, workers=1, pt_range=(500.0, 1000.0), classes=CLASSES, progress=True):
    """Simulate `jets_per_class` jets of each class into OUT (see the module docstring); skips existing files.

    Returns a summary: files written and skipped, and per channel the generator counters summed over the
    written files (events, jets kept/produced per class, rejections by reason) and CPU seconds.
    """
    _import_generators()
    pt_range = tuple(float(x) for x in pt_range)
    if not 0 < pt_range[0] < pt_range[1]:
        raise ValueError(f"--pt-range must be two increasing positive numbers, got {pt_range}")
    tasks = plan_files(out, jets_per_class, seed, pt_range, classes)
    _check_manifest(out, {"jets_per_class": jets_per_class, "seed": seed, "pt_range": list(pt_range),
                          "classes": sorted(set(classes)), "jets_per_class_per_file": JETS_PER_CLASS_PER_FILE,
                          "x_mass_range": list(X_MASS_RANGE)})
    missing = [t for t in tasks if not t.path.exists()]
    with tqdm(total=sum(t.jets_per_class * len(t.classes) for t in missing), unit="jet", disable=not progress,
              desc="simulating") as bar:
        if workers > 1 and len(missing) > 1:
            results = _simulate_in_pool(missing, min(workers, len(missing)), bar)
        else:
            results = [simulate_file(task, bar.update) for task in missing]
    stats, seconds = Counter(), Counter()
    for result in results:
        stats.update(result["stats"])
        seconds.update(result["cpu_seconds"])
    return {"written": len(missing), "skipped": len(tasks) - len(missing), "stats": dict(stats),
            "cpu_seconds": dict(seconds)}


def _simulate_in_pool(tasks, workers, bar):
    """simulate_file over worker processes (spawned: safe after JAX started threads), updating the bar per jet."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(workers) as pool:
        jets_done = manager.Queue()
        results = pool.map_async(functools.partial(simulate_file, on_jet=jets_done.put), tasks, chunksize=1)
        while not (results.ready() and jets_done.empty()):
            try:
                bar.update(jets_done.get(timeout=0.2))
            except queue.Empty:
                pass
        return results.get()


def generation_speed(summary):
    """Jets per CPU second (one core) per class: jets produced in the class / CPU time of its channel."""
    speed = {}
    for channel, (_, channel_classes, _) in CHANNELS.items():
        for c in channel_classes:
            produced = summary["stats"].get(f"{channel}/produced_{c}", 0)
            if produced:
                speed[c] = produced / summary["cpu_seconds"][channel]
    return speed


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m jetjax.data.simulate", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (train/, val/, test/ are made inside)")
    parser.add_argument("--jets-per-class", type=int, required=True, help="jets of each class over all splits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (one file each)")
    parser.add_argument("--pt-range", type=float, nargs=2, default=(500.0, 1000.0), metavar=("MIN", "MAX"),
                        help="jet pT range in GeV")
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), choices=CLASSES)
    args = parser.parse_args(argv)
    summary = simulate(args.out, args.jets_per_class, args.seed, args.workers, args.pt_range, args.classes)
    print(json.dumps(summary, indent=1))
    print("jets per CPU second per class:", {c: round(s, 2) for c, s in generation_speed(summary).items()})


if __name__ == "__main__":
    main()
