"""Physics augmentations as pure JAX functions of (key, batch) -> batch (docs/formulas.md §4, study §2.1).

Particles are moved in (pT, eta, phi) about the jet axis and rebuilt as four-vectors that keep each
particle's mass; then every kinematic input feature is recomputed from the new four-vectors with the data
pipeline's own feature code. Angles stay measured from the original jet axis (so a translation is visible
to the network, as in JetCLR, where jets are centred before augmentation), momenta relative to the sum of
the augmented constituents. Identity and impact-parameter channels are carried along (copied to split
daughters). A particle that comes out non-physical (non-finite, pT <= 0, E < |p|, or outside the
detector's acceptance |eta| < MAX_ETA) reverts to its original values, as the study does. Padded slots stay zero and P never changes.
"""
import math

import jax
import jax.numpy as jnp

from jetjax import physics
from jetjax.data.features import KINEMATIC_CHANNELS, kinematic_features

MASS_TOLERANCE = 1e-4
"""E^2 - |p|^2 may fall below zero by this fraction of E^2 (float32 rounding) before a particle counts as
non-physical."""
MAX_ETA = 5.0
"""Acceptance of the calorimeters (forward ones included): soft smearing can throw a soft particle to any
|eta|; beyond ~10, E and |pz| are equal in float32 and its rapidity (a pair feature input) is infinite."""


def to_polar(batch):
    """(pT, eta, phi, m^2) per particle, with eta and phi relative to the jet axis."""
    v, jet = batch["vectors"], batch["jet"]
    deta = physics.pseudorapidity(v) - physics.pseudorapidity(jet)[:, None]
    dphi = physics.wrap_phi(physics.phi(v) - physics.phi(jet)[:, None])
    return physics.pt(v), deta, dphi, jnp.maximum(physics.mass2(v), 0.0)


def from_polar(batch, pt, deta, dphi, m2):
    """Four-vectors from (pT, eta, phi, m^2) relative to the jet axis of `batch`."""
    eta = deta + physics.pseudorapidity(batch["jet"])[:, None]
    phi = dphi + physics.phi(batch["jet"])[:, None]
    v = jnp.stack([pt * jnp.cos(phi), pt * jnp.sin(phi), pt * jnp.sinh(eta),
                   jnp.sqrt((pt * jnp.cosh(eta)) ** 2 + m2)], axis=-1)
    return jnp.where(batch["mask"][..., None], v, 0.0)


def is_physical(v):
    p2 = v[..., 0] ** 2 + v[..., 1] ** 2 + v[..., 2] ** 2
    return (jnp.all(jnp.isfinite(v), axis=-1) & (physics.pt(v) > 0)
            & (v[..., 3] ** 2 - p2 >= -MASS_TOLERANCE * v[..., 3] ** 2)
            & (jnp.abs(physics.pseudorapidity(v)) < MAX_ETA))


def with_vectors(batch, vectors, original):
    """`batch` with new four-vectors (non-physical particles reverted to `original`'s), its jet four-vector
    rebuilt from the constituents and its kinematic features recomputed (angles from the original axis)."""
    mask = batch["mask"]
    keep = is_physical(vectors) | ~mask
    vectors = jnp.where(keep[..., None], vectors, original["vectors"])
    vectors = jnp.where(mask[..., None], vectors, 0.0)
    total = jnp.sum(vectors, axis=1)
    pt_sum, eta0, phi0 = physics.pt(total), physics.pseudorapidity(batch["jet"]), physics.phi(batch["jet"])
    jet = jnp.stack([pt_sum * jnp.cos(phi0), pt_sum * jnp.sin(phi0), pt_sum * jnp.sinh(eta0), total[:, 3]], -1)
    kinematic = kinematic_features(vectors, mask, jet)
    channels = jnp.asarray(KINEMATIC_CHANNELS[batch["features"].shape[-1]])
    features = jnp.asarray(batch["features"]).at[..., channels].set(kinematic)
    return {**batch, "vectors": vectors, "features": jnp.where(mask[..., None], features, 0.0)}


def rotate(key, batch):
    """Rotate every jet by a random angle about its axis in the (eta, phi) plane; pT unchanged (§4.2)."""
    pt, deta, dphi, m2 = to_polar(batch)
    theta = jax.random.uniform(key, (pt.shape[0], 1), maxval=2 * math.pi)
    c, s = jnp.cos(theta), jnp.sin(theta)
    return with_vectors(batch, from_polar(batch, pt, deta * c - dphi * s, deta * s + dphi * c, m2), batch)


def translate(key, batch, width=1.0):
    """Shift all real particles of a jet by (d_eta, d_phi) drawn within `width` x the jet's extent (§4.3)."""
    pt, deta, dphi, m2 = to_polar(batch)
    mask = batch["mask"]
    extent = lambda x: (jnp.max(jnp.where(mask, x, -jnp.inf), 1, keepdims=True),
                        jnp.min(jnp.where(mask, x, jnp.inf), 1, keepdims=True))
    (eta_max, eta_min), (phi_max, phi_min) = extent(deta), extent(dphi)
    k_eta, k_phi = jax.random.split(key)
    r_eta, r_phi = width * (eta_max - eta_min), width * (phi_max - phi_min)
    shift_eta = jax.random.uniform(k_eta, r_eta.shape, minval=-r_eta, maxval=r_eta)
    low, high = jnp.maximum(-r_phi, -math.pi - phi_min), jnp.minimum(r_phi, math.pi - phi_max)
    shift_phi = jax.random.uniform(k_phi, r_phi.shape, minval=low, maxval=high)
    return with_vectors(batch, from_polar(batch, pt, deta + shift_eta, dphi + shift_phi, m2), batch)


def smear(key, batch, strength=0.1, pt_floor=0.1):
    """Soft smearing: angular shifts N(0, strength / max(pT, pt_floor)) per real particle, pT in GeV (§4.4):
    soft particles move, hard ones barely do."""
    pt, deta, dphi, m2 = to_polar(batch)
    sigma = strength / jnp.maximum(pt, pt_floor)
    k_eta, k_phi = jax.random.split(key)
    deta = deta + sigma * jax.random.normal(k_eta, pt.shape)
    dphi = dphi + sigma * jax.random.normal(k_phi, pt.shape)
    return with_vectors(batch, from_polar(batch, pt, deta, dphi, m2), batch)


def random_real_subset(key, mask, count):
    """`count` (B, 1) distinct real particles per jet, uniformly at random, as a (B, P) boolean mask."""
    rank = jnp.argsort(jnp.argsort(jnp.where(mask, jax.random.uniform(key, mask.shape), 2.0), 1), 1)
    return mask & (rank < count)


def split_count(n, capacity):
    """How many particles one collinear split adds to a jet of `n` real particles with room for `capacity`:
    min(capacity - max(n, capacity / 2), n) (numpy or jax arrays)."""
    xp = n.__array_namespace__()
    return xp.minimum(capacity - xp.maximum(n, capacity // 2), n)


def collinear_split(key, batch, capacity=None):
    """Split particles collinearly (§4.5): particle a -> r p_a and (1 - r) p_a, r ~ U(0, 1), the daughter
    written to the next free slot. With n real particles and room for C = min(`capacity`, slots) particles
    (`capacity` default: the slots), `split_count(n, C)` distinct real particles split, so the jet
    four-momentum is unchanged exactly and the jet never exceeds C particles. A batch cut to the slot bucket
    of its split jets (`jetclr_lengths` with the full capacity P) splits as many particles as it would in P
    slots (which ones, and their momentum shares, are random draws over the slots)."""
    mask = batch["mask"]
    slots = mask.shape[1]
    n = jnp.sum(mask, axis=1, keepdims=True)
    n_split = split_count(n, slots if capacity is None else min(capacity, slots))
    k_choose, k_frac = jax.random.split(key)
    chosen = random_real_subset(k_choose, mask, n_split)
    r = jnp.where(chosen, jax.random.uniform(k_frac, mask.shape), 1.0)
    target = jnp.where(chosen, n + jnp.cumsum(chosen, axis=1) - 1, slots)  # slot of each daughter; P = none

    def place(x, daughters):
        return jax.vmap(lambda xi, ti, di: xi.at[ti].set(di, mode="drop"))(x, target, daughters)

    vectors = place(batch["vectors"] * r[..., None], batch["vectors"] * (1 - r)[..., None])
    split = {**batch, "mask": place(mask, mask), "vectors": vectors}
    for key_ in ("features", "pid"):
        if key_ in batch:
            split[key_] = place(batch[key_], batch[key_])
    return with_vectors(split, vectors, split)


def jetclr_views(key, batch, train=True, capacity=None):
    """JetCLR's two views (§4.1): both rotated and translated independently; the second also collinearly
    split twice (each jet up to `capacity` particles, default the P slots) and soft-smeared. Used for
    validation too (the loss needs two views)."""
    keys = jax.random.split(key, 7)
    first = translate(keys[0], rotate(keys[1], batch))
    second = collinear_split(keys[2], collinear_split(keys[3], rotate(keys[4], batch), capacity), capacity)
    second = translate(keys[5], smear(keys[6], second))
    return first, second


def jetclr_lengths(n, capacity):
    """Real particles of each jet in the two JetCLR views (numpy), for jets of `n` particles."""
    once = n + split_count(n, capacity)
    return n, once + split_count(once, capacity)


def supcon_lengths(n, capacity):
    """Real particles of each jet in the two SupCon views: at most the jet's own (dropout only removes)."""
    return n, n


def noise_and_smear(key, batch, angle_sigma=0.005, pt_resolution=0.05):
    """Detector-like resolution: Gaussian angular noise and relative pT smearing of every real particle."""
    pt, deta, dphi, m2 = to_polar(batch)
    k1, k2, k3 = jax.random.split(key, 3)
    deta = deta + angle_sigma * jax.random.normal(k1, pt.shape)
    dphi = dphi + angle_sigma * jax.random.normal(k2, pt.shape)
    pt = pt * (1 + pt_resolution * jax.random.normal(k3, pt.shape))
    return with_vectors(batch, from_polar(batch, pt, deta, dphi, m2), batch)


def drop_particles(key, batch, rate=0.1):
    """Remove each real particle with probability `rate` (the hardest one is always kept)."""
    mask = batch["mask"]
    keep = jax.random.uniform(key, mask.shape) >= rate
    keep = keep | (jnp.arange(mask.shape[1]) == jnp.argmax(jnp.where(mask, physics.pt(batch["vectors"]), -1), 1)[:, None])
    new_mask = mask & keep
    dropped = {**batch, "mask": new_mask}
    return with_vectors(dropped, batch["vectors"], dropped)


def supcon_view(key, batch, train):
    """One SupCon view: noise and smearing, plus (training only) particle dropout and a rotation about the
    jet axis."""
    k1, k2, k3 = jax.random.split(key, 3)
    view = noise_and_smear(k1, batch)
    if train:
        view = rotate(k3, drop_particles(k2, view))
    return view


def supcon_views(key, batch, train=True):
    k1, k2 = jax.random.split(key)
    return supcon_view(k1, batch, train), supcon_view(k2, batch, train)


def vae_target(batch):
    """CLIP-VAE reconstruction target per particle: (10 pT / pT_jet, d_eta, d_phi) about the jet axis (§7.1)."""
    pt, deta, dphi, _ = to_polar(batch)
    target = jnp.stack([10 * pt / physics.pt(batch["jet"])[:, None], deta, dphi], axis=-1)
    return jnp.where(batch["mask"][..., None], target, 0.0)
