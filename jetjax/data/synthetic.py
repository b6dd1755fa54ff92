"""Fast numpy generator of labelled toy jets, written in the JetClass-II parquet format (tests, quickstart).

    python -m jetjax.data.synthetic --out DIR --jets-per-group 30000 --seed 0

Not a physics simulation (that is `simulate.py`, Pythia 8): a vectorised parton-shower caricature whose
classes differ the way real ones do, so a small model learns them well but not perfectly:
- prongs: X -> 2 prongs (mass m_X ~ U(50, 200) GeV, momentum share z, opening angle m / (pT sqrt(z(1 - z)))),
  top -> b + W(-> 2 prongs) (m = 173, m_W = 80.4), X -> YY -> 4 prongs, QCD: one parton plus a soft or
  collinear emission (log-uniform z and angle), so its mass spectrum falls and overlaps the signals;
- multiplicity: gluon > quark prongs; a hadronic tau gives 1 or 3 charged hadrons plus a few photons;
- a leptonic tau gives an electron or muon carrying most of its prong's pT (flagged 90% of the time);
- displacement: tracks from b (and c, tau) decays get impact parameters ~ Exp(scale) on top of the
  resolution of `simulate.impact_parameter_resolution` (also stored as the errors); light tracks are prompt;
- soft underlying particles fill the cone; particles outside Delta R = 0.8 of the axis are removed.
Labels (JetClass-II `jet_label`): Res2P files hold bb 0, qq 3, tau_h tau_e 12, tau_h tau_mu 13,
tau_h tau_h 14 and the excluded X -> cc 1, X -> gg 9; Res34P files hold qqb 70, bcs 127 and the excluded
X -> YY -> bbbb 15, qqc 71; QCD files hold 161..187 (sub-label from the b/c/s content of the prongs).
Columns: exactly the real file's names and dtypes (`simulate.PARQUET_SCHEMA`). jet_* are the constituent
sum; jet_sdmass is the constituent mass (no grooming); jet_tau1..4 are N-subjettiness ratios with the N
hardest constituents as axes; genpart_* copy the particles with production vertices and times 0;
aux_genpart_* hold the resonance (isResX) and its prongs (isResDecayProd) or the QCD partons (isQcdParton).
Layout: OUT/{train,val,test}/{Res2P,Res34P,QCD}_NNNN.parquet, numbered continuously over the splits.
"""
import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jetjax import physics
from jetjax.data.simulate import PARQUET_SCHEMA, impact_parameter_resolution

GROUP_LABELS = {
    "Res2P": {0: 0.2, 3: 0.2, 12: 0.15, 13: 0.15, 14: 0.15, 1: 0.075, 9: 0.075},
    "Res34P": {70: 0.4, 127: 0.4, 15: 0.1, 71: 0.1},
    "QCD": None,
}
"""Label mix of each file group (QCD: sub-labels drawn from the prongs' flavours)."""
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
JET_R = 0.8
PT_RANGE = (500.0, 1000.0)
X_MASS_RANGE = (50.0, 200.0)
TOP_MASS, W_MASS = 173.0, 80.4
PION_MASS, NEUTRAL_HADRON_MASS = 0.1396, 0.4976

# prong flavours
LIGHT, CHARM, BOTTOM, GLUON, TAU_HAD, TAU_E, TAU_MU = range(7)
MEAN_MULTIPLICITY = np.array([12.0, 13.0, 15.0, 20.0, 1.5, 1.5, 1.5])
"""Poisson mean of particles per prong (hadronic/leptonic tau: extra photons only)."""
DISPLACEMENT_MM = np.array([0.0, 0.12, 0.25, 0.0, 0.08, 0.08, 0.08])
"""Mean |impact parameter| of tracks from the prong's decay."""
DISPLACED_FRACTION = 0.7
"""Fraction of a heavy-flavour prong's tracks that come from its displaced decay."""
LEPTON_SHARE = 0.7
"""Mean pT share of the lepton in a leptonic-tau prong."""
LEPTON_ID_EFFICIENCY = 0.9
"""Probability that a leptonic tau's lepton carries its flag (else it looks like a charged hadron)."""
UNDERLYING_MEAN, UNDERLYING_PT_GEV = 4.0, 1.0
SPECIES_P = np.array([0.62, 0.25, 0.122, 0.004, 0.004])
"""Hadronisation species probabilities: charged hadron, photon, neutral hadron, electron, muon."""
CHARGED_HADRON, PHOTON, NEUTRAL_HADRON, ELECTRON, MUON = range(5)
PDG = np.array([211, 22, 130, 11, 13])

SIGNAL_PRONGS = {0: (BOTTOM, BOTTOM), 3: (LIGHT, LIGHT), 1: (CHARM, CHARM), 9: (GLUON, GLUON),
                 12: (TAU_HAD, TAU_E), 13: (TAU_HAD, TAU_MU), 14: (TAU_HAD, TAU_HAD),
                 70: (BOTTOM, LIGHT, LIGHT), 127: (BOTTOM, CHARM, LIGHT), 71: (LIGHT, LIGHT, CHARM),
                 15: (BOTTOM, BOTTOM, BOTTOM, BOTTOM)}
QCD_FIRST = 161


def two_body(rng, pt, mass, z_floor=0.1):
    """Split objects (pT, mass) into two prongs: momentum shares (z, 1 - z) and their (d_eta, d_phi) offsets
    from the parent axis (pT-weighted centroid on the axis), opening angle m / (pT sqrt(z (1 - z)))."""
    c = (mass / (0.75 * pt)) ** 2
    z_low = np.where(4 * c < 1, np.maximum(z_floor, 0.5 * (1 - np.sqrt(np.clip(1 - 4 * c, 0, 1)))), 0.5)
    z = rng.uniform(z_low, 1 - z_low)
    opening = mass / (pt * np.sqrt(z * (1 - z)))
    alpha = rng.uniform(0, 2 * np.pi, pt.shape)
    direction = np.stack([np.cos(alpha), np.sin(alpha)], -1)
    return z, (1 - z)[:, None] * opening[:, None] * direction, -z[:, None] * opening[:, None] * direction


def prong_layout(rng, labels, pt):
    """Per jet: up to 4 prongs as (share, d_eta, d_phi, flavour), flavour -1 for an absent prong."""
    n = len(labels)
    share, offset = np.zeros((n, 4)), np.zeros((n, 4, 2))
    flavour = np.full((n, 4), -1)
    mass = rng.uniform(*X_MASS_RANGE, n)
    z, a, b = two_body(rng, pt, mass)
    nprong = np.array([len(SIGNAL_PRONGS.get(int(l), (0, 0))) for l in labels])
    two = nprong == 2
    share[two, 0], share[two, 1], offset[two, 0], offset[two, 1] = z[two], 1 - z[two], a[two], b[two]
    three = nprong == 3
    zt, ab, aw = two_body(rng, pt, np.full(n, TOP_MASS))
    zw, a1, a2 = two_body(rng, (1 - zt) * pt, np.full(n, W_MASS))
    share[three, :3] = np.stack([zt, (1 - zt) * zw, (1 - zt) * (1 - zw)], -1)[three]
    offset[three, :3] = np.stack([ab, aw + a1, aw + a2], 1)[three]
    four = nprong == 4
    zy, y1, y2 = two_body(rng, pt, mass)
    z1, a11, a12 = two_body(rng, zy * pt, mass / 3)
    z2, a21, a22 = two_body(rng, (1 - zy) * pt, mass / 3)
    share[four] = np.stack([zy * z1, zy * (1 - z1), (1 - zy) * z2, (1 - zy) * (1 - z2)], -1)[four]
    offset[four] = np.stack([y1 + a11, y1 + a12, y2 + a21, y2 + a22], 1)[four]
    for label, prongs in SIGNAL_PRONGS.items():
        rows = labels == label
        flavour[rows, :len(prongs)] = prongs
    qcd = labels >= QCD_FIRST
    zq = np.exp(rng.uniform(np.log(0.02), np.log(0.5), n))
    angle = np.exp(rng.uniform(np.log(0.02), np.log(0.6), n))
    alpha = rng.uniform(0, 2 * np.pi, n)
    direction = np.stack([np.cos(alpha), np.sin(alpha)], -1) * angle[:, None]
    share[qcd, 0], share[qcd, 1] = 1 - zq[qcd], zq[qcd]
    offset[qcd, 0], offset[qcd, 1] = (zq[:, None] * direction)[qcd], (-(1 - zq)[:, None] * direction)[qcd]
    flavour[qcd, :2] = qcd_flavours(labels[qcd])
    return share, offset, flavour


def qcd_flavours(labels):
    """Flavours of the two prongs of QCD jets from their sub-label (161 + 9 (2 - nb) + 3 (2 - nc) + (2 - ns));
    prongs not taken by a b or c are gluons (first) or light quarks."""
    k = labels - QCD_FIRST
    nb, nc = 2 - k // 9, 2 - (k // 3) % 3
    first = np.where(nb >= 1, BOTTOM, np.where(nc >= 1, CHARM, GLUON))
    second = np.where(nb == 2, BOTTOM, np.where((nc >= 1) & (nb >= 1) | (nc == 2), CHARM, LIGHT))
    return np.stack([first, second], -1)


def qcd_labels(rng, n):
    """QCD sub-labels with mostly light jets: nb, nc, ns drawn independently."""
    nb = rng.choice(3, n, p=[0.9, 0.07, 0.03])
    nc = rng.choice(3, n, p=[0.85, 0.1, 0.05])
    ns = rng.choice(3, n, p=[0.7, 0.2, 0.1])
    return QCD_FIRST + 9 * (2 - nb) + 3 * (2 - nc) + (2 - ns)


def fragment(rng, prong_pt, flavour):
    """Flat particles of all prongs: (prong index, pT, species, charge, is-from-displaced-decay)."""
    counts = rng.poisson(MEAN_MULTIPLICITY[flavour]) + 1
    tau = flavour >= TAU_HAD
    prong = np.repeat(np.arange(len(flavour)), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    leading = np.zeros(len(prong), bool)
    leading[first] = True
    weight = rng.exponential(1.0, len(prong)) ** 2.5
    species = rng.choice(5, len(prong), p=SPECIES_P)
    f = flavour[prong]
    species = np.where(tau[prong], PHOTON, species)
    identified = rng.uniform(size=len(flavour)) < LEPTON_ID_EFFICIENCY
    species[first[(flavour == TAU_E) & identified]] = ELECTRON
    species[first[(flavour == TAU_MU) & identified]] = MUON
    species[first[(flavour >= TAU_E) & ~identified]] = CHARGED_HADRON
    three_prong = tau & (flavour == TAU_HAD) & (rng.uniform(size=len(flavour)) < 0.3)
    species[first[flavour == TAU_HAD]] = CHARGED_HADRON
    extra = first[three_prong][:, None] + np.array([1, 2])
    extra = extra[(extra < (first + counts)[three_prong][:, None]).all(1)]
    species[extra.ravel()] = CHARGED_HADRON
    weight = np.where(leading & tau[prong], (LEPTON_SHARE / (1 - LEPTON_SHARE)) * np.bincount(
        prong, weights=np.where(leading, 0.0, weight), minlength=len(flavour))[prong] + 1e-3, weight)
    share = weight / np.bincount(prong, weights=weight)[prong]
    pt = share * prong_pt[prong]
    charge = np.where(np.isin(species, (CHARGED_HADRON, ELECTRON, MUON)), rng.choice([-1, 1], len(prong)), 0)
    displaced = (DISPLACEMENT_MM[f] > 0) & (rng.uniform(size=len(prong)) < np.where(tau[prong], 1.0,
                                                                                   DISPLACED_FRACTION))
    return prong, pt, species, charge, displaced & (charge != 0)


def generate_jets(rng, labels):
    """Columns of the JetClass-II schema (dict name -> per-jet values or per-jet lists) for jets of
    `labels`, particles sorted by decreasing pT."""
    n = len(labels)
    jet_pt = rng.uniform(*PT_RANGE, n)
    jet_eta, jet_phi = rng.uniform(-2.0, 2.0, n), rng.uniform(-np.pi, np.pi, n)
    share, offset, flavour = prong_layout(rng, labels, jet_pt)
    has = flavour >= 0
    prong_jet = np.nonzero(has)[0]
    p_index, p_pt, species, charge, displaced = fragment(rng, (share * jet_pt[:, None])[has], flavour[has])
    jet_of = prong_jet[p_index]
    f = flavour[has][p_index]
    narrow = np.where(f >= TAU_HAD, 0.02, 0.25)
    sigma = narrow / np.sqrt(1 + p_pt / 2.0)
    deta = offset[has][p_index, 0] + sigma * rng.standard_normal(len(p_pt))
    dphi = offset[has][p_index, 1] + sigma * rng.standard_normal(len(p_pt))
    # underlying soft particles, uniform in the cone
    n_soft = rng.poisson(UNDERLYING_MEAN, n)
    soft_jet = np.repeat(np.arange(n), n_soft)
    r, a = JET_R * np.sqrt(rng.uniform(size=len(soft_jet))), rng.uniform(0, 2 * np.pi, len(soft_jet))
    soft_species = rng.choice(3, len(soft_jet), p=[0.6, 0.3, 0.1])
    jet_of = np.concatenate([jet_of, soft_jet])
    p_pt = np.concatenate([p_pt, rng.exponential(UNDERLYING_PT_GEV, len(soft_jet)) + 0.1])
    deta, dphi = np.concatenate([deta, r * np.cos(a)]), np.concatenate([dphi, r * np.sin(a)])
    species = np.concatenate([species, soft_species])
    charge = np.concatenate([charge, np.where(soft_species == 0, rng.choice([-1, 1], len(soft_jet)), 0)])
    displaced = np.concatenate([displaced, np.zeros(len(soft_jet), bool)])
    d0_scale = np.concatenate([DISPLACEMENT_MM[f], np.zeros(len(soft_jet))])

    inside = np.hypot(deta, dphi) < JET_R
    jet_of, p_pt, deta, dphi, species, charge, displaced, d0_scale = (
        x[inside] for x in (jet_of, p_pt, deta, dphi, species, charge, displaced, d0_scale))
    order = np.lexsort((-p_pt, jet_of))
    jet_of, p_pt, deta, dphi, species, charge, displaced, d0_scale = (
        x[order] for x in (jet_of, p_pt, deta, dphi, species, charge, displaced, d0_scale))

    eta, phi = jet_eta[jet_of] + deta, physics.wrap_phi(jet_phi[jet_of] + dphi)
    mass = np.select([species == CHARGED_HADRON, species == NEUTRAL_HADRON], [PION_MASS, NEUTRAL_HADRON_MASS], 0.0)
    vectors = np.stack([p_pt * np.cos(phi), p_pt * np.sin(phi), p_pt * np.sinh(eta),
                        np.sqrt((p_pt * np.cosh(eta)) ** 2 + mass ** 2)], -1)
    counts = np.bincount(jet_of, minlength=n)
    particles = particle_columns(rng, vectors, species, charge, displaced, d0_scale)
    jets = jet_level_columns(vectors, counts, jet_of, labels)
    particles["part_deta"] = np.where(jets["jet_eta"][jet_of] >= 0, 1.0, -1.0) * (
        physics.pseudorapidity(vectors) - jets["jet_eta"][jet_of])
    particles["part_dphi"] = physics.wrap_phi(physics.phi(vectors) - jets["jet_phi"][jet_of])
    aux = aux_entries(labels, share, offset, flavour, jet_pt, jet_eta, jet_phi)
    return particles, counts, jets, aux


def particle_columns(rng, vectors, species, charge, displaced, d0_scale):
    """part_* flat columns: impact parameters (displacement + resolution smearing) and PID flags."""
    charged = charge != 0
    d0err, dzerr = (np.where(charged, e, 0.0) for e in impact_parameter_resolution(vectors))
    sign = rng.choice([-1.0, 1.0], len(species))
    d0_true = np.where(displaced, sign * rng.exponential(np.maximum(d0_scale, 1e-9)), 0.0)
    dz_true = np.where(displaced, rng.choice([-1.0, 1.0], len(species)) * rng.exponential(
        1.2 * np.maximum(d0_scale, 1e-9)), 0.0)
    return {"part_px": vectors[:, 0], "part_py": vectors[:, 1], "part_pz": vectors[:, 2],
            "part_energy": vectors[:, 3],
            "part_d0val": np.where(charged, d0_true + d0err * rng.standard_normal(len(species)), 0.0),
            "part_d0err": d0err,
            "part_dzval": np.where(charged, dz_true + dzerr * rng.standard_normal(len(species)), 0.0),
            "part_dzerr": dzerr, "part_charge": charge,
            "part_isElectron": species == ELECTRON, "part_isMuon": species == MUON,
            "part_isPhoton": species == PHOTON, "part_isChargedHadron": species == CHARGED_HADRON,
            "part_isNeutralHadron": species == NEUTRAL_HADRON,
            "genpart_pid": PDG[species] * np.select([species == CHARGED_HADRON, charged], [charge, -charge], 1)}


def jet_level_columns(vectors, counts, jet_of, labels):
    """jet_*: constituent-sum kinematics, constituent mass, multiplicity, N-subjettiness, label."""
    total = np.zeros((len(counts), 4))
    np.add.at(total, jet_of, vectors)
    eta, phi = physics.pseudorapidity(vectors), physics.phi(vectors)
    pt = physics.pt(vectors)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    taus, distance = [], np.full(len(pt), np.inf)
    for k in range(4):  # tau_N: distance to the nearest of the N hardest particles (a jet's last if fewer)
        axis = np.minimum(starts + k, starts + counts - 1)[jet_of]
        distance = np.minimum(distance, np.hypot(eta - eta[axis], physics.wrap_phi(phi - phi[axis])))
        taus.append(np.bincount(jet_of, weights=pt * distance, minlength=len(counts)))
    norm = np.bincount(jet_of, weights=pt, minlength=len(counts)) * JET_R
    return {"jet_pt": physics.pt(total), "jet_eta": physics.pseudorapidity(total), "jet_phi": physics.phi(total),
            "jet_energy": total[:, 3], "jet_sdmass": np.sqrt(np.maximum(physics.mass2(total), 0.0)),
            "jet_nparticles": counts, **{f"jet_tau{n}": t / norm for n, t in enumerate(taus, 1)},
            "jet_label": labels}


PRONG_PDG = np.array([1, 4, 5, 21, 15, 15, 15])


def aux_entries(labels, share, offset, flavour, jet_pt, jet_eta, jet_phi):
    """aux_genpart_* flat columns and per-jet counts: signal jets list the resonance (isResX) then its
    prongs (isResDecayProd); QCD jets list their partons (isQcdParton)."""
    n = len(labels)
    qcd = labels >= QCD_FIRST
    has = flavour >= 0
    x_mass = np.where(np.isin(labels, (70, 127, 71)), TOP_MASS, 0.0)
    rows = [(np.nonzero(~qcd)[0], jet_pt[~qcd], jet_eta[~qcd], jet_phi[~qcd], x_mass[~qcd],
             np.where(x_mass[~qcd] > 0, 6, 25), "isResX")]
    jet, k = np.nonzero(has)
    prong_flag = np.where(qcd[jet], "isQcdParton", "isResDecayProd")
    rows.append((jet, share[jet, k] * jet_pt[jet], jet_eta[jet] + offset[jet, k, 0],
                 physics.wrap_phi(jet_phi[jet] + offset[jet, k, 1]), np.zeros(len(jet)),
                 PRONG_PDG[flavour[jet, k]], prong_flag))
    jet_index = np.concatenate([r[0] for r in rows])
    order = np.argsort(jet_index, kind="stable")
    columns = {f"aux_genpart_{name}": np.concatenate([r[i] for r in rows])[order]
               for i, name in enumerate(("pt", "eta", "phi", "mass", "pid"), 1)}
    flags = np.concatenate([np.broadcast_to(r[6], len(r[0])) for r in rows])[order]
    for flag in ("isResX", "isResY", "isResDecayProd", "isTauDecayProd", "isQcdParton"):
        columns[f"aux_genpart_{flag}"] = flags == flag
    return columns, np.bincount(jet_index, minlength=n)


def to_table(particles, counts, jets, aux):
    """A pyarrow table with exactly `simulate.PARQUET_SCHEMA` from flat particle/aux columns and counts."""
    aux_columns, aux_counts = aux
    genpart = {"genpart_" + k: particles["part_" + k] for k in ("px", "py", "pz", "energy")}
    genpart.update(genpart_jet_deta=particles["part_deta"], genpart_jet_dphi=particles["part_dphi"],
                   genpart_pid=particles["genpart_pid"],
                   **{f"genpart_{k}": np.zeros(len(particles["part_px"])) for k in "xyzt"})
    genjet = {"gen" + k: jets[k] for k in ("jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_sdmass",
                                           "jet_nparticles")}
    flat = {**particles, **genpart}
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    aux_offsets = pa.array(np.concatenate([[0], np.cumsum(aux_counts)]).astype(np.int32))
    arrays = []
    for field in PARQUET_SCHEMA:
        if pa.types.is_list(field.type):
            values, offs = (aux_columns[field.name], aux_offsets) if field.name.startswith("aux_") else (
                flat[field.name], offsets)
            item = pa.array(np.asarray(values, dtype=field.type.value_type.to_pandas_dtype()))
            arrays.append(pa.ListArray.from_arrays(offs, item, type=field.type))
        else:
            value = {**jets, **genjet}[field.name]
            arrays.append(pa.array(np.asarray(value, dtype=field.type.to_pandas_dtype()), type=field.type))
    return pa.Table.from_arrays(arrays, schema=PARQUET_SCHEMA)


def group_labels(rng, group, n):
    """Raw labels of `n` jets of a file group, in the mix of GROUP_LABELS."""
    mix = GROUP_LABELS[group]
    if mix is None:
        return qcd_labels(rng, n)
    return rng.choice(list(mix), n, p=np.array(list(mix.values())) / sum(mix.values()))


def write_dataset(out, jets_per_group, seed=0, jets_per_file=10000):
    """Write OUT/{train,val,test}/{Res2P,Res34P,QCD}_NNNN.parquet: per group `jets_per_group` jets split
    80/10/10 into files of at most `jets_per_file` jets, numbered continuously over train, val, test.
    Each file has its own seed (from `seed`, the group and the file number). Returns the written paths."""
    out = Path(out)
    paths = []
    for g, group in enumerate(GROUP_LABELS):
        index = 0
        sizes = {s: max(1, int(round(f * jets_per_group))) for s, f in SPLIT_FRACTIONS.items()}
        for split, size in sizes.items():
            (out / split).mkdir(parents=True, exist_ok=True)
            for start in range(0, size, jets_per_file):
                rng = np.random.default_rng((seed, g, index))
                n = min(jets_per_file, size - start)
                path = out / split / f"{group}_{index:04d}.parquet"
                pq.write_table(to_table(*generate_jets(rng, group_labels(rng, group, n))), path,
                               compression="zstd", use_dictionary=False)  # as the real files
                paths.append(path)
                index += 1
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--jets-per-group", type=int, default=30000)
    parser.add_argument("--jets-per-file", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_dataset(args.out, args.jets_per_group, args.seed, args.jets_per_file)
    print(f"wrote {len(paths)} files under {args.out}")


if __name__ == "__main__":
    main()
