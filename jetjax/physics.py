"""Four-vector helpers shared by the data pipeline (numpy) and the model (jax.numpy).

Vectors are channel-last arrays `(..., 4)` holding (px, py, pz, E) in GeV. Every function uses the
namespace of its input array (numpy or jax.numpy), so the data pipeline and the model compute the
same quantities with the same code. Epsilon clamps follow the ParT reference (weaver-core v0.4.17,
docs/formulas.md §2.5) so that padded (all-zero) particles give finite values.
"""
import math

import numpy as np

EPS = 1e-8
"""Clamp applied before every logarithm of the pair features (the reference's `eps`)."""


def _xp(x):
    return x.__array_namespace__()


def pt(v):
    """Transverse momentum sqrt(px^2 + py^2), unclamped as in the reference."""
    xp = _xp(v)
    return xp.sqrt(v[..., 0] ** 2 + v[..., 1] ** 2)


def rapidity(v):
    """Rapidity 0.5 ln((E + pz) / (E - pz)), written as the reference does to stay finite at E = pz."""
    xp = _xp(v)
    pz, e = v[..., 2], v[..., 3]
    return 0.5 * xp.log(1 + 2 * pz / xp.maximum(e - pz, 1e-20))


def pseudorapidity(v):
    """Pseudorapidity asinh(pz / pT) (finite for pT = 0)."""
    xp = _xp(v)
    return xp.arcsinh(v[..., 2] / xp.maximum(pt(v), 1e-20))


def phi(v):
    """Azimuthal angle atan2(py, px) in [-pi, pi]."""
    xp = _xp(v)
    return xp.arctan2(v[..., 1], v[..., 0])


def wrap_phi(dphi):
    """Wrap an angle difference into [-pi, pi) with a floored modulo (the reference's delta_phi)."""
    return (dphi + math.pi) % (2 * math.pi) - math.pi


def delta_r(y1, phi1, y2, phi2):
    """Angular distance sqrt(dy^2 + dphi^2) with the azimuthal difference wrapped."""
    xp = _xp(y1)
    return xp.sqrt((y1 - y2) ** 2 + wrap_phi(phi1 - phi2) ** 2)


def mass2(v):
    """Invariant mass squared E^2 - |p|^2 (may be slightly negative from rounding).

    Summed in the reference's order, E^2 - ((px^2 + py^2) + pz^2), each square rounded on its own as PyTorch
    rounds it: for (nearly) massless particles the result is rounding noise that the ln m^2 pair feature sees,
    so the rounding matters for fidelity. Under jit XLA would contract a square and the next addition into one
    fused multiply-add (one rounding instead of two, on CPU and GPU alike, where it chooses to); an
    optimisation barrier after the squares keeps jitted jetjax equal to its op-by-op run and to weaver.
    """
    squares = v ** 2
    if _xp(v) is not np:
        import jax  # only for jax arrays: the numpy data pipeline does not import jax

        squares = jax.lax.optimization_barrier(squares)
    return squares[..., 3] - ((squares[..., 0] + squares[..., 1]) + squares[..., 2])


def massless_pair_mass2(kin_i, kin_j):
    """m^2 of the pair taken as massless particles at their pT, rapidity and azimuth (`pair_kinematics`):
    2 pT_i pT_j (cosh dy - cos dphi), written 2 pT_i pT_j (2 sinh^2(dy / 2) + 2 sin^2(dphi / 2)) so that no term
    cancels: >= 0 and accurate to a few float32 roundings of dy and dphi for every pair, exactly 0 for a
    particle with itself. E^2 - |p|^2 of the summed four-vector (`mass2`) is instead rounding noise where the
    pair is (nearly) massless (a photon with itself, near-collinear photons), which ln m^2 amplifies."""
    xp = _xp(kin_i)
    half_dy, half_dphi = (xp.abs(kin_i[..., k] - kin_j[..., k]) / 2 for k in (1, 2))  # abs: exactly symmetric
    return 4 * (kin_i[..., 0] * kin_j[..., 0]) * (xp.sinh(half_dy) ** 2 + xp.sin(half_dphi) ** 2)


PAIR_MASSES = ("reference", "stable")
"""model.pair_mass: the ParT reference's m^2 = (p_i + p_j)^2 (bit-faithful to weaver), or `massless_pair_mass2`."""


def pair_kinematics(v):
    """(..., 3) pT, rapidity, phi of each particle: what the pair features need of each member of a pair."""
    xp = _xp(v)
    return xp.stack([pt(v), rapidity(v), phi(v)], axis=-1)


def pair_features(v_i, v_j, kin_i=None, kin_j=None, pair_mass="reference"):
    """ParT pairwise interaction features of particle pairs (i, j), elementwise over broadcast shapes.

    Args:
      v_i, v_j: (..., 4) four-vectors (px, py, pz, E) of the two particles of each pair; all pairs of one
        jet's particles v (P, 4) are `pair_features(v[:, None], v[None, :])`.
      kin_i, kin_j: optionally `pair_kinematics` of v_i and v_j, computed once per particle by the caller.
      pair_mass: 'reference' m^2 = (p_i + p_j)^2 as E^2 - |p|^2; 'stable' `massless_pair_mass2`.
    Returns:
      (..., 4) array [ln kT, ln z, ln dR, ln m^2], symmetric under i <-> j: dR is the rapidity-azimuth
      distance, kT = min(pT_i, pT_j) dR, z = min(pT_i, pT_j) / (pT_i + pT_j), m^2 as `pair_mass` says;
      each clamped at EPS before the log.
    """
    xp = _xp(v_i)
    kin_i = pair_kinematics(v_i) if kin_i is None else kin_i
    kin_j = pair_kinematics(v_j) if kin_j is None else kin_j
    pt_i, pt_j = kin_i[..., 0], kin_j[..., 0]
    dr = delta_r(kin_i[..., 1], kin_i[..., 2], kin_j[..., 1], kin_j[..., 2])
    pt_min = xp.minimum(pt_i, pt_j)
    kt = pt_min * dr
    z = pt_min / xp.maximum(pt_i + pt_j, EPS)
    if pair_mass not in PAIR_MASSES:
        raise ValueError(f"model.pair_mass must be one of {PAIR_MASSES}, got {pair_mass!r}")
    m2 = mass2(v_i + v_j) if pair_mass == "reference" else massless_pair_mass2(kin_i, kin_j)
    return xp.stack([xp.log(xp.maximum(x, EPS)) for x in (kt, z, dr, m2)], axis=-1)
