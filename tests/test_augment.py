"""Physics augmentations: symmetries kept, four-momentum conserved, masks and P respected, seeded."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jetjax import augment, physics
from conftest import toy_jets as make_batch


def pt_of(batch):
    return np.asarray(physics.pt(batch["vectors"]))


@pytest.mark.parametrize("fn", [augment.rotate, augment.translate], ids=["rotate", "translate"])
def test_rotation_and_translation_keep_every_pt(fn):
    batch = make_batch()
    out = fn(jax.random.key(0), batch)
    m = np.asarray(batch["mask"])
    np.testing.assert_allclose(pt_of(out)[m], pt_of(batch)[m], rtol=1e-5)
    assert not np.allclose(np.asarray(out["vectors"])[m], np.asarray(batch["vectors"])[m], atol=1e-3)


def test_collinear_split_conserves_jet_four_momentum_and_stays_within_p():
    batch = make_batch()
    out = augment.collinear_split(jax.random.key(1), augment.collinear_split(jax.random.key(2), batch))
    np.testing.assert_allclose(np.asarray(out["vectors"]).sum(1), np.asarray(batch["vectors"]).sum(1),
                               rtol=1e-5, atol=1e-3)
    n_before, n_after = np.asarray(batch["mask"]).sum(1), np.asarray(out["mask"]).sum(1)
    assert out["mask"].shape == batch["mask"].shape
    assert np.all(n_after >= n_before) and np.all(n_after <= batch["mask"].shape[1])
    assert n_after[1] > n_before[1]  # a 20-particle jet in 32 slots gains particles
    # real particles stay contiguous; padded slots stay exactly zero
    m = np.asarray(out["mask"])
    assert np.all(m == (np.arange(m.shape[1])[None] < n_after[:, None]))
    assert np.all(np.asarray(out["vectors"])[~m] == 0) and np.all(np.asarray(out["features"])[~m] == 0)


@pytest.mark.parametrize("fn", [augment.translate, augment.smear, augment.noise_and_smear],
                         ids=["translate", "smear", "noise_and_smear"])
def test_only_real_particles_move(fn):
    batch = make_batch()
    out = fn(jax.random.key(3), batch)
    m = np.asarray(batch["mask"])
    assert np.all(np.asarray(out["vectors"])[~m] == 0)
    assert np.all(np.asarray(out["features"])[~m] == 0)
    np.testing.assert_array_equal(np.asarray(out["mask"]), m)


def test_particles_smeared_out_of_acceptance_revert():
    """Strong soft smearing throws soft particles to |eta| >> 5, where float32 rapidity is infinite: they
    revert, so every feature and every pair feature of the view stays finite."""
    batch = make_batch(lengths=(32, 32, 32, 32, 32))
    out = augment.smear(jax.random.key(5), batch, strength=20.0)
    m = np.asarray(batch["mask"])
    eta = np.asarray(physics.pseudorapidity(out["vectors"]))[m]
    assert np.all(np.abs(eta) < augment.MAX_ETA)
    assert np.any(np.asarray(out["vectors"])[m] == np.asarray(batch["vectors"])[m])  # some reverted
    v = out["vectors"]
    pairs = np.asarray(physics.pair_features(v[:, :, None], v[:, None, :]))[m[:, :, None] & m[:, None, :]]
    assert np.all(np.isfinite(pairs)) and np.all(np.isfinite(np.asarray(out["features"])))


def test_soft_particles_move_more_under_smearing():
    batch = make_batch(lengths=(32,) * 5)
    before, after = augment.to_polar(batch), augment.to_polar(augment.smear(jax.random.key(4), batch))
    shift = np.hypot(np.asarray(after[1] - before[1]), np.asarray(after[2] - before[2]))
    pt = np.asarray(before[0])
    assert shift[pt < 2].mean() > 5 * shift[pt > 20].mean()


def test_same_key_same_views_different_key_different_views():
    batch = make_batch()
    a = augment.jetclr_views(jax.random.key(5), batch)
    b = augment.jetclr_views(jax.random.key(5), batch)
    c = augment.jetclr_views(jax.random.key(6), batch)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[1]["vectors"], c[1]["vectors"])


def test_non_physical_particles_revert_to_original():
    batch = make_batch()
    bad = batch["vectors"].at[0, 0].set(jnp.array([jnp.nan, 1.0, 1.0, 1.0]))
    out = augment.with_vectors(batch, bad, batch)
    np.testing.assert_array_equal(np.asarray(out["vectors"][0, 0]), np.asarray(batch["vectors"][0, 0]))


def test_recomputed_features_equal_original_when_nothing_moves():
    batch = make_batch()
    out = augment.with_vectors(batch, batch["vectors"], batch)
    np.testing.assert_allclose(np.asarray(out["features"]), np.asarray(batch["features"]), atol=1e-4)


def test_supcon_validation_views_keep_every_particle():
    batch = make_batch()
    v1, v2 = augment.supcon_views(jax.random.key(7), batch, train=False)
    np.testing.assert_array_equal(np.asarray(v1["mask"]), np.asarray(batch["mask"]))
    t1, _ = augment.supcon_views(jax.random.key(7), batch, train=True)
    assert np.asarray(t1["mask"]).sum() < np.asarray(batch["mask"]).sum()
