"""losses.py against independent numpy references written with explicit loops, plus invariances,
degenerate inputs and finite gradients."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jetjax import losses

RTOL = 1e-5


# ---------------------------------------------------------------- naive references (float64, loops)

def log_softmax_loop(row):
    top = max(row)
    return [v - top - math.log(sum(math.exp(u - top) for u in row)) for v in row]


def cross_entropy_loop(logits, labels, smoothing):
    total = 0.0
    for row, y in zip(logits, labels):
        k = len(row)
        log_p = log_softmax_loop(row)
        total += -sum(((1 - smoothing) * (c == y) + smoothing / k) * log_p[c] for c in range(k))
    return total / len(labels)


def unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v] if norm > 0 else [0.0 for _ in v]


def supcon_loop(z_views, labels, temperature, base_temperature):
    """SupCon 'all' with one explicit loop over anchors and one over the rest of the contrast set."""
    n_jets, n_views, _ = z_views.shape
    vectors, ids = [], []
    for j in range(n_jets):
        for v in range(n_views):
            vectors.append(unit(z_views[j, v]))
            ids.append(j if labels is None else labels[j])
    total = 0.0
    for a in range(len(vectors)):
        sims = {b: sum(p * q for p, q in zip(vectors[a], vectors[b])) / temperature
                for b in range(len(vectors)) if b != a}
        log_denominator = math.log(sum(math.exp(s) for s in sims.values()))
        positives = [b for b in sims if ids[b] == ids[a]]
        if positives:
            mean_log_prob = sum(sims[p] - log_denominator for p in positives) / len(positives)
            total += -(temperature / base_temperature) * mean_log_prob
    return total / len(vectors)


def nt_xent_loop(z1, z2, temperature):
    """docs/formulas.md §4.7 literally: 2N projections, partner a +- N, denominator over b != a."""
    z = [unit(v) for v in np.concatenate([z1, z2])]
    n = len(z1)
    total = 0.0
    for a in range(2 * n):
        partner = a + n if a < n else a - n
        s = [sum(p * q for p, q in zip(z[a], z[b])) / temperature for b in range(2 * n)]
        total += -(s[partner] - math.log(sum(math.exp(s[b]) for b in range(2 * n) if b != a)))
    return total / (2 * n)


def masked_particle_loop(pred, target, masked, pid_logits, pid_target, kind, pid_weight, smoothing):
    n_features = pred.shape[-1]
    selected = [(j, i) for j in range(masked.shape[0]) for i in range(masked.shape[1]) if masked[j, i]]
    if not selected:
        return 0.0
    reco = 0.0
    for f in range(n_features):
        errors = [pred[j, i, f] - target[j, i, f] for j, i in selected]
        reco += sum(abs(e) if kind == "l1" else e * e for e in errors) / len(selected)
    if pid_logits is None:
        return reco
    logits = [pid_logits[j, i] for j, i in selected]
    labels = [pid_target[j, i] for j, i in selected]
    return reco + pid_weight * cross_entropy_loop(logits, labels, smoothing)


def chamfer_loop(recon, target, mask, r0):
    out = []
    for x, y, m in zip(target, recon, mask):
        real = [i for i in range(len(m)) if m[i]]
        if not real:
            out.append(0.0)
            continue

        def d(a, k):
            return ((x[a, 0] - y[k, 0]) ** 2
                    + x[a, 0] ** 2 * ((x[a, 1] - y[k, 1]) ** 2 + (x[a, 2] - y[k, 2]) ** 2) / r0 ** 2)

        to_true = sum(min(d(a, k) for a in real) for k in real)
        to_recon = sum(min(d(a, k) for k in real) for a in real)
        out.append((to_true + to_recon) / (2 * len(real)))
    return np.array(out)


def kl_loop(mu, logvar):
    return np.array([-0.5 * sum(1 + lv - m * m - math.exp(lv) for m, lv in zip(mr, lr)) / len(mr)
                     for mr, lr in zip(mu, logvar)])


def vae_loop(recon, target, mask, mu, logvar, beta, clip_fraction, r0):
    reco = chamfer_loop(recon, target, mask, r0)
    kl = kl_loop(mu, logvar)
    order = sorted(range(len(reco)), key=lambda j: reco[j])
    kept = order[:max(1, int(clip_fraction * len(reco)))]
    return sum(reco) / len(reco) + beta * sum(kl[j] for j in kept) / len(kept)


# ---------------------------------------------------------------- random inputs

def f64(*arrays):
    return [None if a is None else np.asarray(a, np.float64) for a in arrays]


def random_jets(rng, n_jets=5, n_slots=7, n_real=(0, 7, 3, 1, 5)):
    """Chamfer inputs (10 pT_rel, deta, dphi) with padded slots holding non-zero garbage."""
    target = np.stack([rng.uniform(0.1, 5.0, (n_jets, n_slots)), rng.normal(0, 0.3, (n_jets, n_slots)),
                       rng.normal(0, 0.3, (n_jets, n_slots))], -1).astype(np.float32)
    recon = (target + rng.normal(0, 0.2, target.shape)).astype(np.float32)
    mask = np.arange(n_slots)[None, :] < np.array(n_real)[:, None]
    return recon, target, mask


def mpm_inputs(rng, n_jets=4, n_slots=6, n_features=3, n_classes=8):
    real = rng.random((n_jets, n_slots)) < 0.8
    masked = real & (rng.random((n_jets, n_slots)) < 0.5)
    pred = rng.normal(size=(n_jets, n_slots, n_features)).astype(np.float32)
    target = rng.normal(size=(n_jets, n_slots, n_features)).astype(np.float32)
    pid_logits = rng.normal(0, 2, (n_jets, n_slots, n_classes)).astype(np.float32)
    pid_target = rng.integers(0, n_classes, (n_jets, n_slots))
    return pred, target, masked, pid_logits, pid_target


# ---------------------------------------------------------------- equality with the references

@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_loop_and_optax(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (16, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 16)
    loss, metrics = losses.cross_entropy(logits, labels, label_smoothing=smoothing)
    np.testing.assert_allclose(loss, cross_entropy_loop(*f64(logits), labels, smoothing), rtol=RTOL)
    one_hot = optax.smooth_labels(jax.nn.one_hot(labels, 7), smoothing)
    np.testing.assert_allclose(loss, optax.softmax_cross_entropy(logits, one_hot).mean(), rtol=RTOL)
    if smoothing == 0.0:
        np.testing.assert_allclose(
            loss, optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), rtol=RTOL)
    assert metrics["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels))


def test_cross_entropy_perfect_logits_and_smoothing_floor():
    labels = np.array([0, 3, 2, 1])
    perfect = 100.0 * np.eye(4, dtype=np.float32)[labels]
    loss, metrics = losses.cross_entropy(perfect, labels)
    assert float(loss) < 1e-6 and float(metrics["accuracy"]) == 1.0
    # with smoothing eps the minimum over logits is the entropy of the smoothed target, reached at
    # log-probabilities equal to the log of that target
    eps, k = 0.1, 4
    target = (1 - eps) * np.eye(k)[labels] + eps / k
    loss, _ = losses.cross_entropy(np.log(target).astype(np.float32), labels, label_smoothing=eps)
    np.testing.assert_allclose(loss, -(target * np.log(target)).sum(-1).mean(), rtol=RTOL)


@pytest.mark.parametrize("n_views", [1, 2, 3])
def test_supcon_matches_loop_with_label_collisions(n_views):
    rng = np.random.default_rng(n_views)
    z = rng.normal(size=(9, n_views, 5)).astype(np.float32)
    z[4, 0] = 0.0  # a zero projection stays zero after normalisation
    labels = np.array([0, 1, 0, 2, 1, 0, 3, 2, 2])  # label 3 is alone: with one view it has no positive
    loss, metrics = losses.supcon(z, labels, temperature=0.1, base_temperature=0.07)
    np.testing.assert_allclose(loss, supcon_loop(*f64(z), labels, 0.1, 0.07), rtol=RTOL)
    n_same = np.array([(labels == y).sum() for y in labels])
    np.testing.assert_allclose(metrics["positives_per_anchor"], np.mean(n_same * n_views - 1), rtol=RTOL)


@pytest.mark.parametrize("n_views", [2, 4])
def test_supcon_without_labels_matches_loop(n_views):
    z = np.random.default_rng(7).normal(size=(6, n_views, 4)).astype(np.float32)
    loss, _ = losses.supcon(z, None, temperature=0.07)
    np.testing.assert_allclose(loss, supcon_loop(*f64(z), None, 0.07, 0.07), rtol=RTOL)


def test_nt_xent_matches_spec_loop_and_unlabelled_supcon():
    rng = np.random.default_rng(3)
    z1, z2 = rng.normal(size=(2, 8, 6)).astype(np.float32)
    loss, _ = losses.nt_xent(z1, z2, temperature=0.1)
    np.testing.assert_allclose(loss, nt_xent_loop(*f64(z1, z2), 0.1), rtol=RTOL)
    as_supcon, _ = losses.supcon(np.stack([z1, z2], 1), None, temperature=0.1, base_temperature=0.1)
    np.testing.assert_allclose(loss, as_supcon, rtol=1e-6)


def test_supcon_retrieval_metric_on_separable_views():
    # two views that are small perturbations of one direction per jet: nearest other vector = partner
    rng = np.random.default_rng(5)
    base = rng.normal(size=(6, 16))
    z = np.stack([base, base + 0.01 * rng.normal(size=base.shape)], 1).astype(np.float32)
    _, metrics = losses.nt_xent(z[:, 0], z[:, 1])
    assert float(metrics["top1_positive"]) == 1.0


def test_supcon_rejects_unlabelled_single_view_and_misshapen_labels():
    with pytest.raises(ValueError, match="2 views"):
        losses.supcon(np.ones((4, 1, 3), np.float32), None)
    with pytest.raises(ValueError, match="one label per jet"):
        losses.supcon(np.ones((4, 2, 3), np.float32), np.zeros(8, int))


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_masked_particle_matches_loop(kind):
    pred, target, masked, pid_logits, pid_target = mpm_inputs(np.random.default_rng(11))
    loss, metrics = losses.masked_particle(pred, target, masked, pid_logits, pid_target, loss=kind,
                                           feature_names=["pt", "eta", "phi"])
    expected = masked_particle_loop(*f64(pred, target), masked, *f64(pid_logits), pid_target, kind, 0.3, 0.1)
    np.testing.assert_allclose(loss, expected, rtol=RTOL)
    reco_only = masked_particle_loop(*f64(pred, target), masked, None, None, kind, 0.3, 0.1)
    np.testing.assert_allclose(metrics["reco"], reco_only, rtol=RTOL)
    np.testing.assert_allclose(metrics["reco_pt"] + metrics["reco_eta"] + metrics["reco_phi"],
                               metrics["reco"], rtol=RTOL)
    assert float(metrics["masked_particles"]) == masked.sum()
    no_pid, no_pid_metrics = losses.masked_particle(pred, target, masked, loss=kind)
    np.testing.assert_allclose(no_pid, reco_only, rtol=RTOL)
    assert "pid_cross_entropy" not in no_pid_metrics


def test_masked_particle_ignores_unmasked_slots_even_nan():
    pred, target, masked, pid_logits, pid_target = mpm_inputs(np.random.default_rng(12))
    reference, _ = losses.masked_particle(pred, target, masked, pid_logits, pid_target)
    pred, pid_logits = pred.copy(), pid_logits.copy()
    pred[~masked], pid_logits[~masked] = np.nan, np.nan
    loss, _ = losses.masked_particle(pred, target, masked, pid_logits, pid_target)
    np.testing.assert_allclose(loss, reference, rtol=1e-6)
    grads = jax.grad(lambda p, l: losses.masked_particle(p, target, masked, l, pid_target)[0],
                     argnums=(0, 1))(pred, pid_logits)
    assert all(np.isfinite(g).all() for g in grads)
    assert np.all(np.asarray(grads[0])[~masked] == 0)


def test_chamfer_and_kl_match_loops():
    rng = np.random.default_rng(21)
    recon, target, mask = random_jets(rng)
    np.testing.assert_allclose(losses.chamfer_reconstruction(recon, target, mask, r0=0.1),
                               chamfer_loop(*f64(recon, target), mask, 0.1), rtol=RTOL)
    mu, logvar = rng.normal(size=(2, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(losses.kl_divergence(mu, logvar), kl_loop(*f64(mu, logvar)), rtol=RTOL, atol=1e-7)


def test_chamfer_is_zero_for_perfect_reconstruction_and_ignores_padding():
    recon, target, mask = random_jets(np.random.default_rng(22))
    np.testing.assert_allclose(losses.chamfer_reconstruction(target, target, mask), 0.0, atol=1e-7)
    shuffled = recon.copy()
    shuffled[~mask] = np.nan  # whatever a decoder writes into padded slots never counts
    np.testing.assert_allclose(losses.chamfer_reconstruction(shuffled, target, mask),
                               losses.chamfer_reconstruction(recon, target, mask), rtol=1e-6)
    # the distance is a set distance: reordering the reconstructed real particles changes nothing
    order = np.array([2, 0, 1])
    reordered = recon.copy()
    reordered[2, :3] = recon[2, order]
    np.testing.assert_allclose(losses.chamfer_reconstruction(reordered, target, mask)[2],
                               losses.chamfer_reconstruction(recon, target, mask)[2], rtol=1e-6)


@pytest.mark.parametrize("clip_fraction", [0.75, 0.5, 1.0])
def test_vae_matches_loop(clip_fraction):
    rng = np.random.default_rng(31)
    recon, target, mask = random_jets(rng, n_jets=8, n_real=(2, 7, 3, 1, 5, 4, 6, 7))
    mu, logvar = rng.normal(size=(2, 8, 4)).astype(np.float32)
    loss, metrics = losses.vae(recon, target, mask, mu, logvar, beta=0.08, clip_fraction=clip_fraction)
    expected = vae_loop(*f64(recon, target), mask, *f64(mu, logvar), 0.08, clip_fraction, 0.1)
    np.testing.assert_allclose(loss, expected, rtol=RTOL)
    np.testing.assert_allclose(metrics["reco"], chamfer_loop(*f64(recon, target), mask, 0.1).mean(), rtol=RTOL)
    np.testing.assert_allclose(metrics["kl"], kl_loop(*f64(mu, logvar)).mean(), rtol=RTOL)
    if clip_fraction == 1.0:
        np.testing.assert_allclose(metrics["kl_kept"], metrics["kl"], rtol=RTOL)


def test_bf16_inputs_are_computed_in_float32():
    rng = np.random.default_rng(41)
    z = jnp.asarray(rng.normal(size=(6, 2, 8)), jnp.bfloat16)
    loss, _ = losses.supcon(z, np.array([0, 1, 0, 1, 2, 2]))
    expected, _ = losses.supcon(z.astype(jnp.float32), np.array([0, 1, 0, 1, 2, 2]))
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


# ---------------------------------------------------------------- invariance under reordering the batch

def test_every_loss_is_invariant_to_the_order_of_jets():
    rng = np.random.default_rng(51)
    perm = rng.permutation(8)

    logits, labels = rng.normal(size=(8, 5)).astype(np.float32), rng.integers(0, 5, 8)
    z = rng.normal(size=(8, 2, 6)).astype(np.float32)
    pred, target, masked, pid_logits, pid_target = mpm_inputs(rng, n_jets=8)
    recon, ptarget, pmask = random_jets(rng, n_jets=8, n_real=(2, 7, 3, 1, 5, 4, 6, 7))
    mu, logvar = rng.normal(size=(2, 8, 4)).astype(np.float32)

    cases = {
        "cross_entropy": lambda p: losses.cross_entropy(logits[p], labels[p], 0.1),
        "supcon": lambda p: losses.supcon(z[p], labels[p]),
        "nt_xent": lambda p: losses.nt_xent(z[p, 0], z[p, 1]),
        "masked_particle": lambda p: losses.masked_particle(pred[p], target[p], masked[p], pid_logits[p],
                                                            pid_target[p]),
        "vae": lambda p: losses.vae(recon[p], ptarget[p], pmask[p], mu[p], logvar[p]),
    }
    for name, fn in cases.items():
        (a, metrics_a), (b, metrics_b) = fn(np.arange(8)), fn(perm)
        np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=name)
        for key in metrics_a:
            np.testing.assert_allclose(metrics_a[key], metrics_b[key], rtol=1e-6, err_msg=f"{name} {key}")


# ---------------------------------------------------------------- degenerate inputs: finite values and gradients

def assert_finite_value_and_grad(fn, *args):
    value, grads = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))(*args)
    assert np.isfinite(value)
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()
    return value, grads


def test_contrastive_gradients_finite_with_zero_vectors_and_lonely_anchors():
    z = np.random.default_rng(61).normal(size=(4, 1, 3)).astype(np.float32)
    z[1] = 0.0
    # every label distinct and one view: no anchor has a positive -> loss 0, gradients 0
    value, (grad,) = assert_finite_value_and_grad(lambda v: losses.supcon(v, np.arange(4))[0], z)
    assert float(value) == 0.0 and not np.any(grad)
    assert_finite_value_and_grad(lambda v: losses.supcon(v, np.array([0, 0, 1, 1]))[0], z)
    assert_finite_value_and_grad(lambda a, b: losses.nt_xent(a, b)[0], np.zeros((3, 4), np.float32),
                                 np.zeros((3, 4), np.float32))


def test_masked_particle_without_masked_particles_gives_zero():
    pred, target, _, pid_logits, pid_target = mpm_inputs(np.random.default_rng(62))
    none = np.zeros(pred.shape[:2], bool)
    value, grads = assert_finite_value_and_grad(
        lambda p, l: losses.masked_particle(p, target, none, l, pid_target)[0], pred, pid_logits)
    assert float(value) == 0.0 and not any(np.any(g) for g in grads)


def test_vae_gradients_finite_with_empty_jets_and_zero_padding():
    rng = np.random.default_rng(63)
    recon, target, mask = random_jets(rng, n_jets=4, n_real=(0, 0, 3, 1))
    recon[~mask], target[~mask] = 0.0, 0.0
    mu, logvar = rng.normal(size=(2, 4, 4)).astype(np.float32)
    value, (g_recon, _, _) = assert_finite_value_and_grad(
        lambda r, m, lv: losses.vae(r, target, mask, m, lv)[0], recon, mu, logvar)
    assert not np.any(np.asarray(g_recon)[~mask])
    np.testing.assert_allclose(losses.chamfer_reconstruction(recon, target, mask)[:2], 0.0)
    # a batch made only of empty jets reduces to the clipped KL term
    empty = np.zeros_like(mask)
    assert_finite_value_and_grad(lambda r, m, lv: losses.vae(r, target, empty, m, lv)[0], recon, mu, logvar)


def test_cross_entropy_gradients_finite_for_extreme_logits():
    logits = np.array([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]], np.float32)
    assert_finite_value_and_grad(lambda l: losses.cross_entropy(l, np.array([1, 2]), 0.1)[0], logits)
