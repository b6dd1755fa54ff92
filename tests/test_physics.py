"""physics.py against direct scalar formulas, on numpy and jax arrays alike."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jetjax import physics


def random_particles(rng, n):
    p3 = rng.normal(size=(n, 3)) * [30.0, 30.0, 80.0]
    mass = rng.uniform(0.5, 2.0, size=(n, 1))  # m^2 well above float32 rounding of E^2
    return np.concatenate([p3, np.sqrt((p3 ** 2).sum(-1, keepdims=True) + mass ** 2)], -1)


def pair_features_by_loop(v):
    """ln kT, ln z, ln dR, ln m^2 for every pair, one pair at a time with the math module."""
    def kin(p):
        pt = math.hypot(p[0], p[1])
        return pt, 0.5 * math.log((p[3] + p[2]) / (p[3] - p[2])), math.atan2(p[1], p[0])

    out = np.zeros((len(v), len(v), 4))
    for i, a in enumerate(v):
        for j, b in enumerate(v):
            (pti, yi, phii), (ptj, yj, phij) = kin(a), kin(b)
            dphi = (phii - phij + math.pi) % (2 * math.pi) - math.pi
            dr = math.sqrt((yi - yj) ** 2 + dphi ** 2)
            s = a + b
            m2 = s[3] ** 2 - s[0] ** 2 - s[1] ** 2 - s[2] ** 2
            ptmin = min(pti, ptj)
            out[i, j] = [math.log(max(x, 1e-8)) for x in (ptmin * dr, ptmin / (pti + ptj), dr, m2)]
    return out


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_pair_features_equal_scalar_formulas(xp):
    v = random_particles(np.random.default_rng(0), 9)
    v_ = xp.asarray(v)
    got = np.asarray(physics.pair_features(v_[:, None], v_[None, :]))
    # jax computes in float32: ln m^2 of a particle with itself (4 m^2 << E^2) inherits the float32
    # rounding of E^2 - |p|^2, about 1e-7 E^2 / m^2 ~ 1e-3 here.
    atol = 1e-9 if xp is np else 2e-3
    np.testing.assert_allclose(got, pair_features_by_loop(v), rtol=1e-9, atol=atol)
    np.testing.assert_allclose(got, np.swapaxes(got, 0, 1), rtol=1e-6)


def test_zero_padding_gives_finite_clamped_features():
    v = np.zeros((3, 4))
    u = physics.pair_features(v[:, None], v[None, :])
    assert np.all(np.isfinite(u))
    np.testing.assert_allclose(u[..., [0, 1, 2, 3]], math.log(1e-8))


def test_wrap_phi_range_and_rapidity():
    d = np.linspace(-20, 20, 1001)
    w = physics.wrap_phi(d)
    assert np.all((w >= -math.pi) & (w < math.pi))
    np.testing.assert_allclose(np.cos(w), np.cos(d), atol=1e-12)
    v = random_particles(np.random.default_rng(1), 50)
    np.testing.assert_allclose(physics.rapidity(v), 0.5 * np.log((v[:, 3] + v[:, 2]) / (v[:, 3] - v[:, 2])))
    np.testing.assert_allclose(physics.pseudorapidity(v), np.arctanh(v[:, 2] / np.linalg.norm(v[:, :3], axis=-1)))


def massless(pt, y, phi):
    return np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(y), pt * np.cosh(y)], -1)


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_massless_pair_mass_is_the_float64_mass_of_massless_particles(xp):
    rng = np.random.default_rng(5)
    pt, y, phi = rng.exponential(20, 40) + 0.5, rng.normal(0, 1, 40), rng.uniform(-np.pi, np.pi, 40)
    dy = 10.0 ** rng.uniform(-4, -2, 20)
    y[20:], phi[20:] = y[:20] + dy, phi[:20]  # near-collinear partners
    v = massless(pt, y, phi)
    expected = physics.mass2(v[:, None] + v[None, :])  # float64: exact enough for every pair but the closest
    kin = physics.pair_kinematics(xp.asarray(v, xp.float32 if xp is jnp else np.float64))
    got = np.asarray(physics.massless_pair_mass2(kin[:, None], kin[None, :]), np.float64)
    far = expected > 1e-4 * (v[:, None, 3] + v[None, :, 3]) ** 2
    np.testing.assert_allclose(got[far], expected[far], rtol=1e-9 if xp is np else 2e-3)
    assert np.all(got >= 0) and np.all(np.diag(got) == 0)
    np.testing.assert_array_equal(got, got.T)
    # near-collinear pairs: 2 pT_i pT_j (cosh dy - 1) as its series in dy, float64 (float32 keeps dy to ~1e-7)
    close = 2 * pt[:20] * pt[20:] * (dy ** 2 / 2 + dy ** 4 / 24 + dy ** 6 / 720)
    np.testing.assert_allclose(np.diagonal(got[:20, 20:]), close, rtol=1e-9 if xp is np else 1e-2)


def test_stable_ln_m2_is_not_moved_by_one_rounding_step_where_the_reference_is():
    # photon pairs at dR 1e-3 ... 1e-2: the reference's E^2 - |p|^2 cancels to a few float32 roundings of E^2
    rng = np.random.default_rng(6)
    pt, y, phi = rng.exponential(20, 30) + 1.0, rng.normal(0, 1, 30), rng.uniform(-np.pi, np.pi, 30)
    v = np.concatenate([massless(pt, y, phi), massless(pt, y + 10.0 ** rng.uniform(-3, -2, 30), phi)])
    v = v.astype(np.float32)
    moved = np.nextafter(v, (np.inf * rng.choice([-1.0, 1.0], v.shape)).astype(np.float32))
    assert moved.dtype == np.float32 and np.all(moved != v)
    change = {}
    for pair_mass in physics.PAIR_MASSES:
        a, b = (np.asarray(physics.pair_features(jnp.asarray(x)[:, None], jnp.asarray(x)[None, :],
                                                 pair_mass=pair_mass))[..., 3] for x in (v, moved))
        change[pair_mass] = np.max(np.abs(a - b))
    assert change["reference"] > 0.1 and change["stable"] < 1e-2, change
    with pytest.raises(ValueError, match="model.pair_mass"):
        physics.pair_features(v[:, None], v[None, :], pair_mass="exact")


def test_jitted_reference_pair_mass_rounds_as_op_by_op_float32(xla_optimisations):
    """The reference ln m^2 under jit equals numpy's float32 evaluation (each square rounded, then summed in
    weaver's order) up to the last bits of the logarithm, even for photon pairs where m^2 is rounding noise:
    XLA contracts squares and additions into fused multiply-adds unless physics.mass2 keeps them apart, which
    moved a third of these features, by up to ~10."""
    rng = np.random.default_rng(7)
    pt, y, phi = rng.exponential(20, 40) + 1.0, rng.normal(0, 1, 40), rng.uniform(-np.pi, np.pi, 40)
    v = np.concatenate([massless(pt, y, phi), massless(pt, y + 10.0 ** rng.uniform(-4, -2, 40), phi)])
    v = v.astype(np.float32)
    op_by_op = physics.pair_features(v[:, None], v[None, :])[..., 3]
    jitted = np.asarray(jax.jit(lambda v: physics.pair_features(v[:, None], v[None, :]))(v))[..., 3]
    m2 = physics.mass2(v[:, None] + v[None, :])
    assert np.mean(np.abs(m2) < 1e-6 * (v[:, None, 3] + v[None, :, 3]) ** 2) > 0.01  # rounding noise compared
    np.testing.assert_allclose(jitted, op_by_op, rtol=0, atol=1e-5)
