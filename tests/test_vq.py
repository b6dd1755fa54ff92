"""Vector quantisation (jetjax.vq) against loop-based numpy references: nearest code, straight-through
gradient, VQ-VAE losses and their gradients, usage and perplexity, EMA codebook updates, dead-code restarts,
with padded slots (even NaN) ignored everywhere."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jetjax import vq
from test_losses import RTOL, assert_finite_value_and_grad


def vq_inputs(rng, n_jets=4, n_slots=6, dim=3, num_codes=10, n_real=(6, 3, 0, 1)):
    """Encoder outputs with NaN in padded slots, a codebook, and the mask of real particles."""
    mask = np.arange(n_slots)[None, :] < np.array(n_real)[:, None]
    z_e = rng.normal(size=(n_jets, n_slots, dim)).astype(np.float32)
    z_e[~mask] = np.nan
    return z_e, rng.normal(size=(num_codes, dim)).astype(np.float32), mask


def real_slots(mask):
    return [(j, i) for j in range(mask.shape[0]) for i in range(mask.shape[1]) if mask[j, i]]


# ---------------------------------------------------------------- naive references (float64, loops)

def nearest_code_loop(z, codebook):
    distances = [sum((a - b) ** 2 for a, b in zip(z, code)) for code in codebook]
    return min(range(len(codebook)), key=distances.__getitem__)


def squared_error_loop(u, v):
    return sum((a - b) ** 2 for a, b in zip(u, v)) / len(u)


def counts_loop(codes, mask, num_codes):
    counts = [0] * num_codes
    for j, i in real_slots(mask):
        counts[codes[j, i]] += 1
    return counts


def usage_loop(codes, mask, num_codes):
    counts = counts_loop(codes, mask, num_codes)
    n = sum(counts)
    entropy = -sum(c / n * math.log(c / n) for c in counts if c > 0) if n else 0.0
    return sum(c > 0 for c in counts) / num_codes, math.exp(entropy)


def ema_step_loop(codebook, counts, sums, z_e, codes, mask, decay, epsilon):
    num_codes, dim = codebook.shape
    batch_counts = counts_loop(codes, mask, num_codes)
    batch_sums = [[0.0] * dim for _ in range(num_codes)]
    for j, i in real_slots(mask):
        for c in range(dim):
            batch_sums[codes[j, i]][c] += z_e[j, i, c]
    counts = [decay * counts[k] + (1 - decay) * batch_counts[k] for k in range(num_codes)]
    sums = [[decay * sums[k][c] + (1 - decay) * batch_sums[k][c] for c in range(dim)] for k in range(num_codes)]
    total = sum(counts)
    smoothed = [(counts[k] + epsilon) / (total + num_codes * epsilon) * total for k in range(num_codes)]
    codebook = [[sums[k][c] / smoothed[k] for c in range(dim)] for k in range(num_codes)]
    return np.array(codebook), np.array(counts), np.array(sums), batch_counts


# ---------------------------------------------------------------- quantisation

def test_nearest_code_matches_loop():
    z_e, codebook, _ = vq_inputs(np.random.default_rng(0), n_real=(6, 6, 6, 6))
    codes = np.asarray(vq.nearest_code(z_e, codebook))
    assert codes.dtype == np.int32
    expected = [[nearest_code_loop(z.astype(np.float64), codebook.astype(np.float64)) for z in jet] for jet in z_e]
    np.testing.assert_array_equal(codes, expected)


def test_quantised_value_is_the_code_and_its_gradient_is_straight_through():
    z_e, codebook, _ = vq_inputs(np.random.default_rng(1), n_jets=2, n_slots=3, n_real=(3, 3))
    z_q, codes = vq.vq_quantise(z_e, codebook)
    np.testing.assert_allclose(z_q, codebook[np.asarray(codes)], rtol=1e-6, atol=1e-7)  # z_e + (e - z_e)
    jacobian = jax.jacobian(lambda z: vq.vq_quantise(z, codebook)[0])(z_e)
    np.testing.assert_array_equal(np.asarray(jacobian).reshape(z_e.size, z_e.size), np.eye(z_e.size))
    to_codebook = jax.grad(lambda c: jnp.sum(vq.vq_quantise(z_e, c)[0]))(codebook)
    assert not np.any(to_codebook)


# ---------------------------------------------------------------- losses and statistics

def test_vq_loss_matches_loop_and_ignores_padded_slots():
    z_e, codebook, mask = vq_inputs(np.random.default_rng(2))
    codes = vq.nearest_code(np.where(mask[..., None], z_e, 0.0), codebook)
    (loss, metrics), (grad_z, grad_codebook) = jax.value_and_grad(
        lambda z, c: vq.vq_loss(z, c, codes, mask, beta=0.25), argnums=(0, 1), has_aux=True)(z_e, codebook)
    codes = np.asarray(codes)
    selected = real_slots(mask)
    z64, c64 = z_e.astype(np.float64), codebook.astype(np.float64)
    mse = sum(squared_error_loop(z64[j, i], c64[codes[j, i]]) for j, i in selected) / len(selected)
    # the two terms have the same value; they differ in what they move
    np.testing.assert_allclose(metrics["codebook"], mse, rtol=RTOL)
    np.testing.assert_allclose(metrics["commitment"], mse, rtol=RTOL)
    np.testing.assert_allclose(loss, 1.25 * mse, rtol=RTOL)
    expected_grad_z = np.zeros_like(z64)
    expected_grad_codebook = np.zeros_like(c64)
    for j, i in selected:
        difference = 2 * (z64[j, i] - c64[codes[j, i]]) / (z64.shape[-1] * len(selected))
        expected_grad_z[j, i] += 0.25 * difference  # commitment only: sg(e)
        expected_grad_codebook[codes[j, i]] -= difference  # codebook term only: sg(z_e)
    np.testing.assert_allclose(grad_z, expected_grad_z, rtol=RTOL, atol=1e-7)
    np.testing.assert_allclose(grad_codebook, expected_grad_codebook, rtol=RTOL, atol=1e-7)
    usage, perplexity = usage_loop(codes, mask, len(codebook))
    np.testing.assert_allclose(metrics["usage"], usage, rtol=RTOL)
    np.testing.assert_allclose(metrics["perplexity"], perplexity, rtol=RTOL)


def test_usage_and_perplexity_of_known_assignments():
    mask = np.array([[True, True, True, True, False, False]])
    codes = np.array([[2, 2, 5, 5, 7, 7]])  # code 7 only in padded slots: unused
    usage, perplexity = vq.codebook_usage(codes, mask, 8)
    np.testing.assert_allclose([usage, perplexity], [2 / 8, 2.0], rtol=RTOL)
    usage, perplexity = vq.codebook_usage(np.arange(8)[None], np.ones((1, 8), bool), 8)
    np.testing.assert_allclose([usage, perplexity], [1.0, 8.0], rtol=RTOL)


def test_vq_loss_without_real_particles_is_zero_with_finite_gradients():
    z_e, codebook, mask = vq_inputs(np.random.default_rng(3))
    none = np.zeros_like(mask)
    codes = vq.nearest_code(z_e, codebook)
    value, grads = assert_finite_value_and_grad(lambda z, c: vq.vq_loss(z, c, codes, none)[0], z_e, codebook)
    assert float(value) == 0.0 and not any(np.any(g) for g in grads)
    _, metrics = vq.vq_loss(z_e, codebook, codes, none)
    assert float(metrics["usage"]) == 0.0 and float(metrics["perplexity"]) == 1.0


# ---------------------------------------------------------------- EMA codebook and dead codes

def test_ema_codebook_update_matches_loop_over_several_steps():
    rng = np.random.default_rng(4)
    _, codebook, _ = vq_inputs(rng)
    state = vq.init_ema_codebook(codebook)
    reference = (codebook.astype(np.float64), np.ones(len(codebook)), codebook.astype(np.float64))
    steps_unused = np.zeros(len(codebook), int)
    update = jax.jit(vq.ema_codebook_update)
    for step in range(4):
        z_e, _, mask = vq_inputs(rng, n_real=rng.integers(0, 7, 4))
        codes = vq.nearest_code(np.where(mask[..., None], z_e, 0.0), state.codebook)
        state = update(state, z_e, codes, mask, 0.9, 1e-3)
        *reference, batch_counts = ema_step_loop(*reference, z_e.astype(np.float64), np.asarray(codes), mask,
                                                 0.9, 1e-3)
        steps_unused = np.where(np.array(batch_counts) > 0, 0, steps_unused + 1)
        for got, expected in zip(state[:3], reference):
            np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-7)
        np.testing.assert_array_equal(state.steps_unused, steps_unused)
    assert state.steps_unused.max() > 0  # some code went unused


def test_ema_codebook_update_on_an_empty_batch_keeps_the_codes_finite():
    z_e, codebook, mask = vq_inputs(np.random.default_rng(5))
    state = vq.init_ema_codebook(codebook)
    none = np.zeros_like(mask)
    for _ in range(3):
        state = vq.ema_codebook_update(state, z_e, vq.nearest_code(z_e, state.codebook), none)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in state)
    np.testing.assert_allclose(state.codebook, codebook, rtol=1e-3)  # sums and counts decay together
    np.testing.assert_array_equal(state.steps_unused, 3)


@pytest.mark.parametrize("n_real", [(6, 3, 0, 1), (2, 0, 0, 0), (0, 0, 0, 0)])
def test_dead_codes_restart_at_distinct_real_encoder_outputs(n_real):
    rng = np.random.default_rng(6)
    z_e, codebook, mask = vq_inputs(rng, n_real=n_real)
    state = vq.init_ema_codebook(codebook)._replace(
        counts=jnp.asarray(rng.uniform(1, 5, len(codebook)), jnp.float32),
        steps_unused=jnp.array([0, 9, 3, 10, 12, 0, 10, 1, 11, 2], jnp.int32))
    new, restarted = jax.jit(vq.reinit_dead_codes)(jax.random.PRNGKey(0), state, z_e, mask, 10)
    restarted = np.asarray(restarted)
    dead = np.flatnonzero(np.asarray(state.steps_unused) >= 10)
    assert restarted.sum() == min(len(dead), mask.sum())
    assert set(np.flatnonzero(restarted)) <= set(dead)
    real_outputs = {tuple(row) for row in z_e[mask]}
    restarted_codes = [tuple(row) for row in np.asarray(new.codebook)[restarted]]
    assert set(restarted_codes) <= real_outputs and len(set(restarted_codes)) == len(restarted_codes)
    np.testing.assert_array_equal(np.asarray(new.codebook)[~restarted], codebook[~restarted])
    np.testing.assert_array_equal(new.sums, new.codebook)
    np.testing.assert_array_equal(np.asarray(new.counts)[restarted], 1.0)
    np.testing.assert_array_equal(np.asarray(new.counts)[~restarted], np.asarray(state.counts)[~restarted])
    np.testing.assert_array_equal(np.asarray(new.steps_unused)[restarted], 0)
    np.testing.assert_array_equal(np.asarray(new.steps_unused)[~restarted], np.asarray(state.steps_unused)[~restarted])
