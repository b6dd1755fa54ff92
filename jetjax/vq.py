"""Vector quantisation for a particle tokenizer (VQ-VAE, van den Oord et al. 2017): pure functions of
arrays and keys, on encoder outputs z_e (B, P, d) of padded jets with their mask (B, P) of real particles.

  vq_quantise          nearest code of every slot, with the straight-through estimator
  vq_loss              codebook + commitment losses, codebook usage and perplexity (real particles only)
  EmaCodebook          codebook trained by exponential moving averages instead of gradients
                       (`init_ema_codebook`, `ema_codebook_update`)
  reinit_dead_codes    codes unused for a while restart at random encoder outputs of the batch

Padded slots get a code too (whatever their content), but never count in a loss, a statistic or an update.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jetjax.momentum import ema_update


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def nearest_code(z_e, codebook):
    """Index (int32, shape z_e.shape[:-1]) of the code (row of codebook (K, d)) closest to each z_e (..., d)
    in Euclidean distance; ties go to the lowest index."""
    z_e, codebook = _f32(z_e), _f32(codebook)
    cross = jnp.einsum("...d,kd->...k", z_e, codebook, precision=jax.lax.Precision.HIGHEST)
    # |z - e|^2 without the |z|^2 term, which is the same for every code
    return jnp.argmin(jnp.sum(codebook * codebook, axis=-1) - 2.0 * cross, axis=-1).astype(jnp.int32)


def vq_quantise(z_e, codebook):
    """(z_q, codes): the nearest code of each encoder output, and z_q = z_e + sg(codebook[codes] - z_e).

    z_q has the value of the code but the straight-through gradient: d z_q / d z_e is the identity and
    no gradient reaches the codebook through z_q (it learns from `vq_loss` or `ema_codebook_update`)."""
    codes = nearest_code(z_e, codebook)
    z_e = _f32(z_e)
    return z_e + jax.lax.stop_gradient(_f32(codebook)[codes] - z_e), codes


def code_counts(codes, mask, num_codes):
    """(num_codes,) float32: how many real particles (mask true) each code holds."""
    return jax.ops.segment_sum(jnp.asarray(mask, jnp.float32).reshape(-1), codes.reshape(-1), num_codes)


def codebook_usage(codes, mask, num_codes):
    """(usage, perplexity) of the codes of the real particles: usage is the fraction of the num_codes codes
    used at least once; perplexity exp(-sum_k p_k log p_k), p_k the fraction of real particles with code k
    (1 = one code for all, num_codes = uniform). Without real particles: usage 0, perplexity 1."""
    counts = code_counts(codes, mask, num_codes)
    p = counts / jnp.maximum(jnp.sum(counts), 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.mean((counts > 0).astype(jnp.float32)), jnp.exp(entropy)


def vq_loss(z_e, codebook, codes, mask, beta=0.25):
    """VQ-VAE's codebook and commitment losses: loss = |sg(z_e) - e|^2 + beta |z_e - sg(e)|^2, e = codebook[codes].

    z_e (B, P, d), codebook (K, d), codes (B, P) from `vq_quantise`, mask (B, P) of real particles.
    |.|^2 is the squared error averaged over the d dimensions (Sonnet's and vqtorch's mean squared error),
    then over the real particles of the batch (0 without any). The first term moves the codes, the second
    the encoder; with an EMA codebook (not differentiated) the first term adds no gradient.
    Metrics: `codebook`, `commitment` (the two terms unweighted), `usage`, `perplexity` (`codebook_usage`),
    `total` (the loss).
    """
    mask = jnp.asarray(mask, bool)
    z_e, code_vectors = _f32(z_e), _f32(codebook)[codes]
    # zero padded slots first, so that nothing there (even NaN) reaches values or gradients
    to_code = jnp.where(mask[..., None], jax.lax.stop_gradient(z_e) - code_vectors, 0.0)
    to_encoder = jnp.where(mask[..., None], z_e - jax.lax.stop_gradient(code_vectors), 0.0)
    n_real = jnp.maximum(jnp.sum(mask), 1)
    codebook_term = jnp.sum(jnp.mean(to_code * to_code, axis=-1)) / n_real
    commitment_term = jnp.sum(jnp.mean(to_encoder * to_encoder, axis=-1)) / n_real
    usage, perplexity = codebook_usage(codes, mask, codebook.shape[0])
    total = codebook_term + beta * commitment_term
    return total, {"codebook": codebook_term, "commitment": commitment_term, "usage": usage,
                   "perplexity": perplexity, "total": total}


class EmaCodebook(NamedTuple):
    """A codebook learnt by moving averages: a pytree of arrays, to carry in the training state."""
    codebook: jax.Array
    """(K, d) the codes: Laplace-smoothed `sums / counts`."""
    counts: jax.Array
    """(K,) moving average of the number of real particles assigned to each code per step."""
    sums: jax.Array
    """(K, d) moving average of the sum of their encoder outputs."""
    steps_unused: jax.Array
    """(K,) int32 consecutive updates in which the code held no real particle."""


def init_ema_codebook(codebook):
    """Start from the codes `codebook (K, d)`, each counted as one particle sitting on itself."""
    codebook = _f32(codebook)
    return EmaCodebook(codebook, jnp.ones(codebook.shape[0], jnp.float32), codebook,
                       jnp.zeros(codebook.shape[0], jnp.int32))


def ema_codebook_update(state, z_e, codes, mask, decay=0.99, epsilon=1e-5):
    """One EMA step of the codebook on a batch (van den Oord et al. 2017, App. A.1; Laplace smoothing as in
    Sonnet's VectorQuantizerEMA, without its zero-debiasing: the averages start from `init_ema_codebook`).

    With n_k and s_k the number and the sum of the real particles' z_e assigned to code k in this batch:
      counts <- decay counts + (1 - decay) n_k,   sums <- decay sums + (1 - decay) s_k,
      codebook_k = sums_k / N_k  with Laplace smoothing  N_k = (counts_k + epsilon) / (N + K epsilon) N,
    N = sum_k counts_k (smoothing keeps a code whose count decays towards 0 finite). `steps_unused` is
    reset for the codes used in the batch and incremented for the others. No gradient flows.
    """
    num_codes = state.codebook.shape[0]
    mask = jnp.asarray(mask, bool)
    z_e = jax.lax.stop_gradient(jnp.where(mask[..., None], _f32(z_e), 0.0))
    batch_counts = code_counts(codes, mask, num_codes)
    batch_sums = jax.ops.segment_sum(z_e.reshape(-1, z_e.shape[-1]), codes.reshape(-1), num_codes)
    counts = ema_update(state.counts, batch_counts, decay)
    sums = ema_update(state.sums, batch_sums, decay)
    total = jnp.sum(counts)
    smoothed = (counts + epsilon) / (total + num_codes * epsilon) * total
    steps_unused = jnp.where(batch_counts > 0, 0, state.steps_unused + 1).astype(jnp.int32)
    return EmaCodebook(sums / smoothed[:, None], counts, sums, steps_unused)


def reinit_dead_codes(key, state, z_e, mask, max_steps_unused):
    """Restart every code unused for at least `max_steps_unused` updates at a random real encoder output.

    The dead codes receive distinct real particles of the batch z_e (B, P, d), drawn uniformly without
    replacement (with fewer real particles than dead codes, the codes left over wait for a later batch);
    each restarted code counts as one particle sitting on itself (`init_ema_codebook`).
    Returns (state, restarted (K,) bool) so that the caller can log how many codes were restarted.
    """
    mask = jnp.asarray(mask, bool).reshape(-1)
    candidates = jax.lax.stop_gradient(_f32(z_e)).reshape(mask.shape[0], -1)
    num_codes = state.codebook.shape[0]
    draws = min(num_codes, mask.shape[0])
    # uniform scores on real particles, -inf on padding: the top `draws` are a random subset, real ones first
    scores = jnp.where(mask, jax.random.uniform(key, mask.shape), -jnp.inf)
    picked = jax.lax.top_k(scores, draws)[1]
    dead = state.steps_unused >= max_steps_unused
    rank = jnp.cumsum(dead) - 1  # the i-th dead code takes the i-th pick
    restarted = dead & (rank < jnp.minimum(jnp.sum(mask), draws))
    new_codes = candidates[picked[jnp.clip(rank, 0, draws - 1)]]
    codebook = jnp.where(restarted[:, None], new_codes, state.codebook)
    return EmaCodebook(codebook,
                       jnp.where(restarted, 1.0, state.counts),
                       jnp.where(restarted[:, None], new_codes, state.sums),
                       jnp.where(restarted, 0, state.steps_unused).astype(jnp.int32)), restarted
