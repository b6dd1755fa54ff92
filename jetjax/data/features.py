"""Jets -> padded model inputs: sanitising, pT ordering, rescaling to jet pT = 500 GeV, features, padding.

The standardised kinematic features are computed by ONE function, `particle_kinematics`, that uses the
namespace of its input arrays: the numpy pipeline calls it on flat (jagged) particle arrays, the JAX
augmentations call `kinematic_features` on padded (B, P, 4) arrays after moving particles.

Conventions (docs/formulas.md §1.2-1.4):
- deta = sign(jet_eta) (eta - jet_eta) with pseudorapidities, dphi = phi - jet_phi wrapped to [-pi, pi),
  both about the axis of the `jet` four-vector; deltaR = sqrt(deta^2 + dphi^2).
- logptrel = ln(pT / jet pT), logerel = ln(E / jet E) with the `jet` four-vector's pT and E.
- The batch's `jet` is the stored jet four-vector (jet_pt, jet_eta, jet_phi, jet_energy) rescaled to
  pT = 500 GeV, as the reference uses the stored jet_pt / jet_energy; files without jet columns (the
  JetClass v1 npy sample) use the sum of the constituents. Every particle is scaled by the same factor,
  so logptrel, logerel, deta, dphi and deltaR do not change, and pt_log / e_log see jets at one scale.
Standardisation is applied to real particles only; padded slots are exactly zero.
"""
import dataclasses

import numpy as np

from jetjax import physics
from jetjax.data.chunks import PARTICLE_VECTOR_COLUMNS, TARGET

JET_PT_GEV = 500.0
"""Every jet is rescaled to this pT."""

KINEMATIC_NAMES = ("pt_log", "e_log", "logptrel", "logerel", "deltaR", "deta", "dphi")
STANDARDISATION = {"pt_log": (1.7, 0.7, -5.0, 5.0), "e_log": (2.0, 0.7, -5.0, 5.0),
                   "logptrel": (-4.7, 0.7, -5.0, 5.0), "logerel": (-4.7, 0.7, -5.0, 5.0),
                   "deltaR": (0.2, 4.0, -5.0, 5.0), "d0err": (0.0, 1.0, 0.0, 1.0), "dzerr": (0.0, 1.0, 0.0, 1.0)}
"""name -> (center, scale, clip_min, clip_max): x' = clip((x - center) scale); other channels are raw."""

_PID_NAMES = ("charge", "isChargedHadron", "isNeutralHadron", "isPhoton", "isElectron", "isMuon")
FEATURE_SETS = {
    "kin": KINEMATIC_NAMES,
    "kinpid": KINEMATIC_NAMES[:5] + _PID_NAMES + KINEMATIC_NAMES[5:],
    "full": KINEMATIC_NAMES[:5] + _PID_NAMES + ("d0", "d0err", "dz", "dzerr") + KINEMATIC_NAMES[5:],
}
"""Channel order of each feature set (the reference's pf_features order)."""

KINEMATIC_CHANNELS = {len(names): tuple(names.index(k) for k in KINEMATIC_NAMES) for names in FEATURE_SETS.values()}
"""Number of channels C -> positions of the KINEMATIC_NAMES channels in that feature set."""

PID_CLASSES = ("photon", "hadron-", "neutral hadron", "hadron+", "e-", "e+", "mu-", "mu+")
"""The 8-class particle ID of masked-particle modelling (docs/formulas.md §6.3), index = class."""


def standardise(x, name):
    center, scale, low, high = STANDARDISATION[name]
    return x.__array_namespace__().clip((x - center) * scale, low, high)


def particle_kinematics(vectors, jet):
    """Standardised kinematic channels (..., 7) in KINEMATIC_NAMES order, from particle four-vectors
    (..., 4) and the four-vector of each particle's jet (broadcastable to `vectors`)."""
    xp = vectors.__array_namespace__()
    tiny = 1e-20
    pt, energy = physics.pt(vectors), vectors[..., 3]
    jet_eta, jet_phi = physics.pseudorapidity(jet), physics.phi(jet)
    deta = xp.copysign(1.0, jet_eta) * (physics.pseudorapidity(vectors) - jet_eta)
    dphi = physics.wrap_phi(physics.phi(vectors) - jet_phi)
    log_pt, log_e = xp.log(xp.maximum(pt, tiny)), xp.log(xp.maximum(energy, tiny))
    channels = (standardise(log_pt, "pt_log"), standardise(log_e, "e_log"),
                standardise(log_pt - xp.log(physics.pt(jet)), "logptrel"),
                standardise(log_e - xp.log(jet[..., 3]), "logerel"),
                standardise(xp.sqrt(deta ** 2 + dphi ** 2), "deltaR"), deta, dphi)
    return xp.stack([xp.broadcast_to(c, pt.shape) for c in channels], axis=-1)


def kinematic_features(vectors, mask, jet):
    """Kinematic channels (B, P, 7) of padded jets: vectors (B, P, 4), mask (B, P), jet (B, 4); padded
    slots are zero. Works on numpy and jax arrays."""
    xp = vectors.__array_namespace__()
    return xp.where(mask[..., None], particle_kinematics(vectors, jet[..., None, :]), 0.0)


def particle_id(charge, is_photon, is_electron, is_muon):
    """8-class particle ID (PID_CLASSES) from the charge and flags; hadrons by charge sign (a particle
    with no flag counts as a hadron)."""
    positive = (charge > 0).astype(np.int32)
    hadron = np.where(charge < 0, 1, np.where(charge > 0, 3, 2))
    return np.select([is_photon, is_electron, is_muon], [0, 4 + positive, 6 + positive], hadron).astype(np.int32)


def identity_channels(particles):
    """The raw PID channels (N, 6) of kinpid/full: charge and the five type flags."""
    return np.stack([particles["part_charge"]] + [particles[f"part_{n}"] for n in _PID_NAMES[1:]],
                    axis=-1).astype(np.float32)


def impact_parameter_channels(particles):
    """(N, 4): tanh(d0val), clip(d0err, 0, 1), tanh(dzval), clip(dzerr, 0, 1)."""
    return np.stack([np.tanh(particles["part_d0val"]), standardise(particles["part_d0err"], "d0err"),
                     np.tanh(particles["part_dzval"]), standardise(particles["part_dzerr"], "dzerr")], axis=-1)


def particle_channels(feature_set, vectors, jet_of_particle, particles):
    """Flat (N, C) features of `feature_set` for particles with rescaled `vectors` (N, 4)."""
    kinematic = particle_kinematics(vectors, jet_of_particle)
    if feature_set == "kin":
        return kinematic
    parts = [kinematic[:, :5], identity_channels(particles)]
    if feature_set == "full":
        parts.append(impact_parameter_channels(particles))
    return np.concatenate(parts + [kinematic[:, 5:]], axis=-1)


KIN_TARGET_ONLY_COLUMNS = ("part_charge", "part_isPhoton", "part_isElectron", "part_isMuon")
"""What the `kin` set reads beyond the four-vectors: the masked-particle `pid` target only (which a model with
`kin` inputs never predicts), so files without them may give them as zero (chunks.ColumnMap, benchmarks.py)."""


def required_particle_columns(feature_set):
    """Particle columns a feature set reads (the 4-vectors always; PID flags also build the `pid` target)."""
    if feature_set not in FEATURE_SETS:
        raise KeyError(f"unknown feature set {feature_set!r}; choose one of {sorted(FEATURE_SETS)}")
    columns = PARTICLE_VECTOR_COLUMNS + KIN_TARGET_ONLY_COLUMNS
    if feature_set != "kin":
        columns += ("part_isChargedHadron", "part_isNeutralHadron")
    if feature_set == "full":
        columns += ("part_d0val", "part_d0err", "part_dzval", "part_dzerr")
    return columns


def _particle_jet_index(counts):
    return np.repeat(np.arange(len(counts)), counts)


def _drop_particles(chunk, keep, report, reason):
    dropped = int(np.count_nonzero(~keep))
    if dropped:
        report.count(reason, dropped)
        chunk = chunk.filter_particles(keep)
    return chunk


def sanitise(chunk, report):
    """Repair or drop what the model must never see, counting every change in `report`:
    non-finite four-vector components -> particle dropped; non-finite other values -> 0;
    pT <= 0 -> particle dropped; E < |p| -> E raised to |p| (massless). Returns a new chunk (the
    input's arrays, possibly read-only views of the file's buffers, are never written)."""
    vectors = chunk.particle_vectors()
    chunk = _drop_particles(chunk, np.all(np.isfinite(vectors), axis=1), report, "particles_nonfinite_dropped")
    chunk = _drop_particles(chunk, physics.pt(chunk.particle_vectors()) > 0, report,
                            "particles_nonpositive_pt_dropped")
    particles = dict(chunk.particles)
    for name, values in chunk.particles.items():
        if name not in PARTICLE_VECTOR_COLUMNS and values.dtype.kind == "f":
            bad = ~np.isfinite(values)
            if bad.any():
                report.count("values_nonfinite_zeroed", int(bad.sum()))
                particles[name] = np.where(bad, 0, values).astype(values.dtype)
    vectors = chunk.particle_vectors()
    momentum = np.sqrt(np.sum(vectors[:, :3].astype(np.float64) ** 2, axis=1)).astype(vectors.dtype)
    low = vectors[:, 3] < momentum
    if low.any():
        report.count("particles_energy_raised_to_momentum", int(low.sum()))
        particles["part_energy"] = np.where(low, momentum, vectors[:, 3])
    return dataclasses.replace(chunk, particles=particles)


def jet_vectors(chunk):
    """(n, 4) jet four-vectors: from the stored jet_pt/eta/phi/energy, else the constituent sum."""
    if all(k in chunk.jets for k in ("jet_pt", "jet_eta", "jet_phi", "jet_energy")):
        pt, eta, phi = (chunk.jets[k].astype(np.float64) for k in ("jet_pt", "jet_eta", "jet_phi"))
        return np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), chunk.jets["jet_energy"]], -1)
    jet_index, vectors = _particle_jet_index(chunk.counts), chunk.particle_vectors()
    return np.stack([np.bincount(jet_index, vectors[:, i], len(chunk.counts)) for i in range(4)], axis=-1)


def pt_order(chunk):
    """Permutation of the flat particles that sorts each jet by decreasing pT (stable; identity when the
    file is already ordered, as JetClass files are)."""
    pt = physics.pt(chunk.particle_vectors())
    jet_index = _particle_jet_index(chunk.counts)
    same_jet = jet_index[1:] == jet_index[:-1]
    if not np.any(same_jet & (pt[1:] > pt[:-1])):
        return None
    return np.lexsort((-pt, jet_index))


def clean(chunk, report):
    """Sanitise (see `sanitise`), drop unusable jets and sort each jet's particles by decreasing pT."""
    chunk = sanitise(chunk, report)
    usable = _usable(chunk, report)
    if not usable.all():
        chunk = chunk.take(np.flatnonzero(usable))
    order = pt_order(chunk)
    return chunk if order is None else chunk.permute_particles(order)


def to_batch(chunk, labels, feature_set, num_particles, report):
    """Padded numpy batch dict (module docstring) of the jets of a `clean` JetChunk with class `labels`:
    the jet four-vector taken before truncation, each jet truncated to its `num_particles` hardest
    particles, rescaled to jet pT = 500 GeV, features of `feature_set`, zero padding."""
    jet = jet_vectors(chunk)  # before truncation: the jet of all its particles
    jet_index = _particle_jet_index(chunk.counts)
    slot = np.arange(len(jet_index)) - chunk.offsets()[jet_index]
    kept = slot < num_particles
    report.count("particles_truncated", int(np.count_nonzero(~kept)))
    chunk, jet_index, slot = chunk.filter_particles(kept), jet_index[kept], slot[kept]
    scale = JET_PT_GEV / physics.pt(jet)
    jet = (jet * scale[:, None]).astype(np.float32)
    vectors = (chunk.particle_vectors() * scale[jet_index, None]).astype(np.float32)
    flat = particle_channels(feature_set, vectors, jet[jet_index], chunk.particles).astype(np.float32)
    pid = particle_id(chunk.particles["part_charge"], chunk.particles["part_isPhoton"],
                      chunk.particles["part_isElectron"], chunk.particles["part_isMuon"])
    n = len(chunk.counts)
    return {"features": _pad(flat, jet_index, slot, n, num_particles),
            "vectors": _pad(vectors, jet_index, slot, n, num_particles),
            "mask": _pad(np.ones(len(slot), bool), jet_index, slot, n, num_particles),
            "pid": _pad(pid, jet_index, slot, n, num_particles),
            "label": np.asarray(labels, np.int32), "jet": jet,
            TARGET: np.asarray(chunk.jets.get(TARGET, np.zeros(n)), np.float32)}


def _usable(chunk, report):
    """Boolean per jet: has particles and a finite, positive jet pT and energy (others counted)."""
    jet = jet_vectors(chunk)
    empty = chunk.counts == 0
    bad = ~empty & ~(np.all(np.isfinite(jet), axis=1) & (physics.pt(jet) > 0) & (jet[:, 3] > 0))
    bad_target = ~empty & ~bad & ~np.isfinite(chunk.jets.get(TARGET, 0.0))
    report.count("jets_empty_dropped", int(empty.sum()))
    report.count("jets_bad_kinematics_dropped", int(bad.sum()))
    report.count("jets_bad_target_dropped", int(bad_target.sum()))
    return ~(empty | bad | bad_target)


def _pad(values, jet_index, slot, num_jets, num_particles):
    out = np.zeros((num_jets * num_particles,) + values.shape[1:], values.dtype)
    out[jet_index * num_particles + slot] = values
    return out.reshape((num_jets, num_particles) + values.shape[1:])
