"""Objectives as pure functions of arrays: each returns `(loss, metrics)`.

`loss` is a float32 scalar and `metrics` a dict of float32 scalars naming the loss's terms. Inputs of
any float dtype (e.g. bf16 model outputs) are cast to float32 first. Padded slots and degenerate
inputs (zero vectors, jets without real particles, batches without masked particles) give finite
values and finite gradients: masks are applied with `where` before any reduction, and every mean
divides by a count clamped to at least 1.

Formulas: docs/formulas.md §4.7 (NT-Xent), §5 (SupCon), §6.3 (masked particle modelling), §7.3 (CLIP-VAE).
VICReg, SimSiam, MoCo's InfoNCE, masked-token MPM and JEPA's latent regression follow the papers and code cited in their docstrings.
"""
import jax
import jax.numpy as jnp

_NORM_EPS = 1e-12
"""Floor of the L2 norm when projections are normalised (PyTorch `F.normalize`'s eps): zero stays zero."""


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _masked_mean(x, mask, axis=None):
    """Mean of `x` over the entries where `mask` is true; 0 where there are none."""
    total = jnp.sum(jnp.where(mask, x, 0.0), axis=axis)
    return total / jnp.maximum(jnp.sum(mask, axis=axis), 1)


def _cross_entropy_terms(logits, labels, label_smoothing):
    """Per-example cross-entropy against the smoothed target (1 - eps) one_hot + eps / K, and correctness."""
    logits = _f32(logits)
    n_classes = logits.shape[-1]
    log_p = jax.nn.log_softmax(logits, axis=-1)
    target = (1.0 - label_smoothing) * jax.nn.one_hot(labels, n_classes) + label_smoothing / n_classes
    ce = -jnp.sum(target * log_p, axis=-1)
    correct = jnp.argmax(logits, axis=-1) == labels
    return ce, correct


def cross_entropy(logits, labels, label_smoothing=0.0):
    """Softmax cross-entropy, mean over all examples.

    logits (..., K), labels (...) int in [0, K); with label smoothing eps the target is
    (1 - eps) one_hot + eps / K (PyTorch's and optax's convention).
    Metrics: `cross_entropy`, `accuracy` (argmax of the logits equals the label).
    """
    ce, correct = _cross_entropy_terms(logits, labels, label_smoothing)
    loss = jnp.mean(ce)
    return loss, {"cross_entropy": loss, "accuracy": jnp.mean(correct.astype(jnp.float32))}


def _l2_normalise(z):
    return z / jnp.sqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), _NORM_EPS ** 2))


def supcon(z_views, labels=None, temperature=0.07, base_temperature=0.07):
    """Supervised contrastive loss (Khosla et al.; docs/formulas.md §5), mode "all".

    z_views (B, V, d): V >= 1 views of each of B jets, L2-normalised here (a zero vector stays zero).
    labels (B,) int, or None for the self-supervised case (positives = the other views of the same
    jet: NT-Xent/SimCLR, which needs V >= 2).
    Every one of the A = B*V vectors is an anchor a with positives P(a) = {p != a : y_p = y_a} and
    contrast set {b != a}:
        l_a = -(temperature / base_temperature) * mean_{p in P(a)} log softmax_{b != a}(z_a.z_b / T)[p]
    and the loss is the mean of l_a over all A anchors. As in the reference (SupContrast), an anchor
    without any positive (a jet alone in its class with V = 1) gets l_a = 0 and still counts in the
    mean, so the loss scale does not depend on how many such anchors a batch happens to hold.
    Metrics: `contrastive` (the loss), `top1_positive` (fraction of anchors whose most similar other
    vector is a positive), `positives_per_anchor`.
    """
    n_jets, n_views = z_views.shape[:2]
    if labels is None and n_views < 2:
        raise ValueError(f"supcon without labels needs at least 2 views per jet, got z_views of shape "
                         f"{z_views.shape}: pass labels or stack augmented views on axis 1")
    if n_jets * n_views < 2:
        raise ValueError(f"supcon needs at least 2 vectors to contrast, got z_views of shape {z_views.shape}")
    if labels is not None and jnp.shape(labels) != (n_jets,):
        raise ValueError(f"supcon: labels of shape {jnp.shape(labels)} for z_views of shape {z_views.shape}; "
                         f"expected ({n_jets},), one label per jet")
    ids = jnp.arange(n_jets) if labels is None else jnp.asarray(labels)
    # view-major contrast set: view 0 of every jet, then view 1, ... (order does not change the loss)
    z = _l2_normalise(_f32(z_views)).transpose(1, 0, 2).reshape(n_jets * n_views, -1)
    ids = jnp.tile(ids, n_views)
    sim = jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST) / temperature
    is_self = jnp.eye(len(z), dtype=bool)
    sim_others = jnp.where(is_self, -jnp.inf, sim)  # the contrast set {b != a}
    log_prob = sim - jax.nn.logsumexp(sim_others, axis=1, keepdims=True)
    positive = (ids[:, None] == ids[None, :]) & ~is_self
    per_anchor = -(temperature / base_temperature) * _masked_mean(log_prob, positive, axis=1)
    loss = jnp.mean(per_anchor)
    nearest = jnp.argmax(sim_others, axis=1)
    top1 = jnp.take_along_axis(positive, nearest[:, None], axis=1)[:, 0]
    return loss, {
        "contrastive": loss,
        "top1_positive": jnp.mean(top1.astype(jnp.float32)),
        "positives_per_anchor": jnp.mean(jnp.sum(positive, axis=1).astype(jnp.float32)),
    }


def nt_xent(z1, z2, temperature=0.1):
    """NT-Xent (SimCLR / JetCLR; docs/formulas.md §4.7) of two views z1, z2 (B, d) of the same B jets.

    For each of the 2B projections a, with positive partner p(a) (the other view of its jet):
    l_a = -log[exp(s_a,p(a) / T) / sum_{b != a} exp(s_ab / T)], s = cosine similarity; mean over a.
    Identical to `supcon(stack([z1, z2], 1), None, temperature, base_temperature=temperature)`.
    """
    return supcon(jnp.stack([z1, z2], axis=1), None, temperature=temperature, base_temperature=temperature)


def masked_particle(pred, target, masked, pid_logits=None, pid_target=None, loss="l1", pid_weight=0.3,
                    label_smoothing=0.1, feature_names=None):
    """Masked-particle-modelling loss (docs/formulas.md §6.3): reconstruct the masked real particles.

    pred, target (B, P, F): predicted and true (standardised) features; masked (B, P) bool marks the
    masked *real* particles (padding already excluded). For each feature f, the L1 (`loss="l1"`) or
    squared (`loss="mse"`) error is averaged over all masked particles of the batch; the
    reconstruction loss is the sum of these F terms. With pid_logits (B, P, K) and pid_target (B, P)
    int, a particle-ID cross-entropy with label smoothing on the same particles is added with weight
    `pid_weight`. A batch without masked particles gives 0.
    Metrics: `reco`, `reco_<name>` per feature (names from `feature_names`, default f0, f1, ...),
    `masked_particles`, and with IDs `pid_cross_entropy`, `pid_accuracy`; `total` is the loss.
    """
    if loss not in ("l1", "mse"):
        raise ValueError(f"masked_particle: unknown loss {loss!r}, use 'l1' or 'mse'")
    if (pid_logits is None) != (pid_target is None):
        raise ValueError("masked_particle: pass both pid_logits and pid_target, or neither")
    n_features = pred.shape[-1]
    names = [f"f{i}" for i in range(n_features)] if feature_names is None else list(feature_names)
    if len(names) != n_features:
        raise ValueError(f"masked_particle: {len(names)} feature_names for {n_features} predicted features")
    # zero every unmasked slot first, so that nothing there (even NaN) reaches values or gradients
    diff = jnp.where(masked[..., None], _f32(pred) - _f32(target), 0.0)
    error = jnp.abs(diff) if loss == "l1" else diff * diff
    per_feature = _masked_mean(error, masked[..., None], axis=(0, 1))
    reco = jnp.sum(per_feature)
    metrics = {"reco": reco, **{f"reco_{n}": per_feature[i] for i, n in enumerate(names)},
               "masked_particles": jnp.sum(masked).astype(jnp.float32)}
    total = reco
    if pid_logits is not None:
        logits = jnp.where(masked[..., None], _f32(pid_logits), 0.0)
        ce, correct = _cross_entropy_terms(logits, pid_target, label_smoothing)
        pid_ce = _masked_mean(ce, masked)
        metrics["pid_cross_entropy"] = pid_ce
        metrics["pid_accuracy"] = _masked_mean(correct.astype(jnp.float32), masked)
        total = total + pid_weight * pid_ce
    metrics["total"] = total
    return total, metrics


def kl_divergence(mu, logvar):
    """Per-jet KL(N(mu, exp(logvar)) || N(0, 1)) averaged over latent dimensions (the reference's
    convention, docs/formulas.md §7.3): -0.5 mean_c(1 + logvar - mu^2 - exp(logvar)). Shape (B,).
    Also CLIP-VAE's anomaly score."""
    mu, logvar = _f32(mu), _f32(logvar)
    return -0.5 * jnp.mean(1.0 + logvar - mu * mu - jnp.exp(logvar), axis=-1)


def chamfer_reconstruction(recon, target, mask, r0=0.1):
    """Per-jet pT-weighted symmetric Chamfer distance of CLIP-VAE (docs/formulas.md §7.3). Shape (B,).

    recon, target (B, P, 3) hold (10 pT/pT_jet, deta, dphi); mask (B, P) marks real particles of the
    target, and the same slots of the reconstruction are compared (the reference decodes one output
    per input slot). With d(a, k) = (pT_a - pT^_k)^2 + pT_a^2 [(eta_a - eta^_k)^2 + (phi_a - phi^_k)^2] / r0^2
    (angles weighted by the *true* particle's pT^2), for a jet with n real particles:
        L = 1/(2n) [sum_k min_a d(a, k) + sum_a min_k d(a, k)],  a, k over real slots only.
    A jet without real particles gives 0.
    """
    mask = jnp.asarray(mask, bool)
    x = jnp.where(mask[..., None], _f32(target), 0.0)[:, :, None, :]
    y = jnp.where(mask[..., None], _f32(recon), 0.0)[:, None, :, :]
    angular = jnp.sum((x[..., 1:3] - y[..., 1:3]) ** 2, axis=-1) / r0 ** 2
    dist = (x[..., 0] - y[..., 0]) ** 2 + x[..., 0] ** 2 * angular  # (B, P_target, P_recon)
    dist = jnp.where(mask[:, :, None] & mask[:, None, :], dist, jnp.inf)
    nearest_true = jnp.where(mask, jnp.min(dist, axis=1), 0.0)  # each reconstructed particle
    nearest_recon = jnp.where(mask, jnp.min(dist, axis=2), 0.0)  # each true particle
    n_real = jnp.maximum(jnp.sum(mask, axis=1), 1)
    return 0.5 * jnp.sum(nearest_true + nearest_recon, axis=1) / n_real


def vae(recon, target, mask, mu, logvar, beta=0.08, clip_fraction=0.75, r0=0.1):
    """CLIP-VAE objective (docs/formulas.md §7.3): mean_batch(L_reco) + beta * mean_S(L_KL).

    L_reco is `chamfer_reconstruction(recon, target, mask, r0)` and L_KL `kl_divergence(mu, logvar)`,
    both per jet. S holds the max(1, int(clip_fraction * B)) jets with the smallest L_reco (the
    reference's "clipped" KL, chosen without gradient; clip_fraction = 1 is the plain mean).
    Jets without real particles have L_reco = 0 (the reference never sees them: it requires > 1 particle).
    Metrics: `reco`, `kl` (mean over the batch), `kl_kept` (mean over S), `total`.
    """
    if not 0.0 < clip_fraction <= 1.0:
        raise ValueError(f"vae: clip_fraction must be in (0, 1], got {clip_fraction}")
    reco = chamfer_reconstruction(recon, target, mask, r0)
    kl = kl_divergence(mu, logvar)
    n_kept = max(1, int(clip_fraction * reco.shape[0]))
    kept = jnp.argsort(jax.lax.stop_gradient(reco))[:n_kept]
    kl_kept = jnp.mean(kl[kept])
    reco_mean = jnp.mean(reco)
    total = reco_mean + beta * kl_kept
    return total, {"reco": reco_mean, "kl": jnp.mean(kl), "kl_kept": kl_kept, "total": total}


def _unbiased_variance(x):
    """Per-dimension variance across the batch (axis 0), with Bessel's correction as torch's `var`."""
    centred = x - jnp.mean(x, axis=0)
    return jnp.sum(centred * centred, axis=0) / (x.shape[0] - 1)


def _off_diagonal_covariance_penalty(x):
    """Sum of the squared off-diagonal entries of the (d, d) batch covariance of x (B, d), divided by d."""
    centred = x - jnp.mean(x, axis=0)
    cov = jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST) / (x.shape[0] - 1)
    off_diagonal = jnp.where(jnp.eye(x.shape[1], dtype=bool), 0.0, cov)
    return jnp.sum(off_diagonal * off_diagonal) / x.shape[1]


def vicreg(z1, z2, invariance=25.0, variance=25.0, covariance=1.0, gamma=1.0, eps=1e-4):
    """VICReg (Bardes, Ponce, LeCun 2022) of the embeddings z1, z2 (B, d) of two views of the same B jets.

    As the authors' code (facebookresearch/vicreg), with batch statistics over the B jets (variance with
    Bessel's correction, so B >= 2):
      invariance term  mean_{b, j} (z1_bj - z2_bj)^2
      variance term    mean over the 2 views and the d dimensions of max(0, gamma - sqrt(var_j + eps))
      covariance term  sum over the 2 views of sum_{i != j} cov_ij^2 / d
    loss = invariance * I + variance * V + covariance * C (set a weight to 0 to ablate its term).
    Metrics: the unweighted terms `invariance`, `variance`, `covariance`; `std`, the per-dimension
    standard deviation across the batch averaged over dimensions and views (-> 0 when the embeddings
    collapse; without gradient); `total` (the loss).
    """
    if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
        raise ValueError(f"vicreg needs two (B, d) embeddings of the same shape with B >= 2, got {z1.shape} "
                         f"and {z2.shape}")
    z1, z2 = _f32(z1), _f32(z2)
    invariance_term = jnp.mean((z1 - z2) ** 2)
    var1, var2 = _unbiased_variance(z1), _unbiased_variance(z2)
    variance_term = 0.5 * (jnp.mean(jax.nn.relu(gamma - jnp.sqrt(var1 + eps)))
                           + jnp.mean(jax.nn.relu(gamma - jnp.sqrt(var2 + eps))))
    covariance_term = _off_diagonal_covariance_penalty(z1) + _off_diagonal_covariance_penalty(z2)
    total = invariance * invariance_term + variance * variance_term + covariance * covariance_term
    std = 0.5 * (jnp.mean(jnp.sqrt(var1)) + jnp.mean(jnp.sqrt(var2)))
    return total, {"invariance": invariance_term, "variance": variance_term, "covariance": covariance_term,
                   "std": jax.lax.stop_gradient(std), "total": total}


def normalised_std(z):
    """Per-dimension std across the batch of the L2-normalised rows of z, averaged over dimensions
    (SimSiam's collapse indicator: 0 for a collapsed output, about 1/sqrt(d) for a spread-out one)."""
    return jnp.mean(jnp.std(_l2_normalise(jax.lax.stop_gradient(z)), axis=0))


def simsiam(p1, p2, z1, z2, stop_gradient=True):
    """SimSiam (Chen & He 2021): loss = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2, D(p, z) = -mean_b cos(p_b, z_b).

    z1, z2 (B, d): projector outputs of two views of the same jets; p1, p2 (B, d): predictor outputs on
    them. The stop-gradient sg is applied here, so the targets z get no gradient from this loss;
    `stop_gradient=False` is the paper's ablation (which collapses). Loss in [-1, 1].
    Metrics: `negative_cosine` (the loss), `std` (per-dimension std of z / |z| across the batch,
    averaged over dimensions and the two views: 0 when collapsed, ~1/sqrt(d) otherwise).
    """
    target1, target2 = (jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2)) if stop_gradient else (z1, z2)

    def negative_cosine(p, z):
        return -jnp.mean(jnp.sum(_l2_normalise(_f32(p)) * _l2_normalise(_f32(z)), axis=-1))

    loss = 0.5 * negative_cosine(p1, target2) + 0.5 * negative_cosine(p2, target1)
    std = 0.5 * (normalised_std(_f32(z1)) + normalised_std(_f32(z2)))
    return loss, {"negative_cosine": loss, "std": std}


def infonce(query, keys_positive, queue=None, temperature=0.2):
    """MoCo's InfoNCE for queries (B, d) whose positive keys are keys_positive (B, d), row for row.

    Both are L2-normalised here; keys (and the queue) are constants: no gradient reaches them, as in MoCo,
    where they come from the momentum encoder.
      queue (K, d) given (MoCo v2): logits of query b are [q_b.k_b, q_b.queue_1, ..., q_b.queue_K] / T,
        the positive first; the queue holds negative keys of earlier batches (see `momentum.enqueue`).
      queue None (MoCo v3): logits are the B x B matrix q_a.k_b / T, the positives on the diagonal, the
        other keys of the batch the negatives.
    loss = mean_b cross-entropy(logits_b, positive). One direction only: MoCo v3 symmetrises at the call,
    infonce(q1, k2) + infonce(q2, k1) (its extra constant factor 2T is left to the learning rate).
    Metrics: `infonce` (the loss), `top1_positive` (fraction of queries whose highest logit is the positive).
    """
    if query.ndim != 2 or query.shape != keys_positive.shape:
        raise ValueError(f"infonce: query {query.shape} and keys_positive {keys_positive.shape} must both be "
                         "(B, d), one positive key per query")
    if queue is not None and (queue.ndim != 2 or queue.shape[1] != query.shape[1]):
        raise ValueError(f"infonce: queue of shape {queue.shape} for queries of shape {query.shape}; expected "
                         f"(K, {query.shape[1]})")
    q = _l2_normalise(_f32(query))
    k = _l2_normalise(jax.lax.stop_gradient(_f32(keys_positive)))
    if queue is None:
        logits = jnp.matmul(q, k.T, precision=jax.lax.Precision.HIGHEST) / temperature
        positive = jnp.arange(q.shape[0])
    else:
        negatives = _l2_normalise(jax.lax.stop_gradient(_f32(queue)))
        logits = jnp.concatenate([jnp.sum(q * k, axis=-1, keepdims=True),
                                  jnp.matmul(q, negatives.T, precision=jax.lax.Precision.HIGHEST)], axis=1)
        logits = logits / temperature
        positive = jnp.zeros(q.shape[0], jnp.int32)
    loss, metrics = cross_entropy(logits, positive)
    return loss, {"infonce": loss, "top1_positive": metrics["accuracy"]}


def masked_token_cross_entropy(logits, token_ids, masked):
    """MPM with discrete targets (Heinrich et al., "Masked Particle Modeling on Sets"): cross-entropy over
    the codebook at the masked particles.

    logits (B, P, K) over K codes, token_ids (B, P) int (each particle's code from a frozen tokenizer,
    e.g. `vq.vq_quantise`), masked (B, P) bool marking the masked *real* particles. The loss is the mean
    over all masked particles of the batch; a batch without masked particles gives 0.
    Metrics: `token_cross_entropy` (the loss), `token_accuracy`, `masked_particles`.
    """
    masked = jnp.asarray(masked, bool)
    # zero the logits of unmasked slots first, so that nothing there (even NaN) reaches values or gradients
    ce, correct = _cross_entropy_terms(jnp.where(masked[..., None], _f32(logits), 0.0), token_ids, 0.0)
    loss = _masked_mean(ce, masked)
    return loss, {"token_cross_entropy": loss, "token_accuracy": _masked_mean(correct.astype(jnp.float32), masked),
                  "masked_particles": jnp.sum(masked).astype(jnp.float32)}


def _huber(diff, delta):
    """Elementwise Huber loss of `diff`: 0.5 diff^2 within `delta`, delta (|diff| - 0.5 delta) beyond (torch's
    `huber_loss`; smooth L1 with threshold beta is this divided by beta)."""
    size = jnp.abs(diff)
    return jnp.where(size < delta, 0.5 * diff * diff, delta * (size - 0.5 * delta))


def layer_normalised(x, eps=1e-5):
    """`x` standardised over its last axis: LayerNorm without scale or offset (torch's `F.layer_norm` with its
    eps), how I-JEPA normalises its targets."""
    x = _f32(x)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=-1, keepdims=True) + eps)


def _masked_std(x, mask):
    """Per-dimension std of the rows (..., d) of `x` where `mask` (...) is true, averaged over the d dimensions."""
    mean = _masked_mean(x, mask[..., None], axis=tuple(range(mask.ndim)))
    return jnp.mean(jnp.sqrt(_masked_mean((x - mean) ** 2, mask[..., None], axis=tuple(range(mask.ndim)))))


def latent_regression(pred, target, masked, loss="smooth_l1", beta=1.0):
    """JEPA's loss (Assran et al., I-JEPA, 2023): the predictor's outputs regress the target encoder's
    representations of the masked particles.

    pred, target (B, P, d): predictions and the target encoder's particle tokens; masked (B, P) bool marks
    the masked *real* particles. The targets get a stop-gradient and are `layer_normalised` here; the error
    is smooth L1 with threshold `beta` (`loss="smooth_l1"`, torch's `smooth_l1_loss`, what I-JEPA's code
    uses) or squared (`loss="l2"`, the paper's text), averaged over the masked particles and the d
    dimensions. A batch without masked particles gives 0.
    Metrics: `latent_loss` (the loss), the collapse monitors `target_std` and `prediction_std` (per-dimension
    std across the masked particles of the normalised targets and of the predictions, averaged over
    dimensions: 0 when every particle gets the same representation), `masked_particles`.
    """
    if loss not in ("smooth_l1", "l2"):
        raise ValueError(f"latent_regression: unknown loss {loss!r}, use 'smooth_l1' or 'l2'")
    if loss == "smooth_l1" and not beta > 0:
        raise ValueError(f"latent_regression: smooth L1 needs beta > 0, got {beta}")
    masked = jnp.asarray(masked, bool)
    target = layer_normalised(jax.lax.stop_gradient(target))
    # zero every unmasked slot first, so that nothing there (even NaN) reaches values or gradients
    diff = jnp.where(masked[..., None], _f32(pred) - target, 0.0)
    error = _huber(diff, beta) / beta if loss == "smooth_l1" else diff * diff
    value = _masked_mean(error, jnp.broadcast_to(masked[..., None], error.shape))
    pred = jax.lax.stop_gradient(jnp.where(masked[..., None], _f32(pred), 0.0))
    return value, {"latent_loss": value, "target_std": _masked_std(jnp.where(masked[..., None], target, 0.0), masked),
                   "prediction_std": _masked_std(pred, masked), "masked_particles": jnp.sum(masked).astype(jnp.float32)}


def regression(pred, target, loss="mse", delta=1.0):
    """A regression head's loss on standardised targets: pred, target (B,); the mean squared error
    (`loss="mse"`) or the Huber loss with threshold `delta` (`loss="huber"`: quadratic within delta, linear
    beyond, torch's `huber_loss`). Metrics: the loss under its name and `rmse` (of the standardised target)."""
    if loss not in ("mse", "huber") or not delta > 0:
        raise ValueError(f"regression: loss {loss!r} must be 'mse' or 'huber' with delta > 0 (got {delta})")
    diff = _f32(pred) - _f32(target)
    value = jnp.mean(diff * diff if loss == "mse" else _huber(diff, delta))
    return value, {loss: value, "rmse": jnp.sqrt(jnp.mean(diff * diff))}
