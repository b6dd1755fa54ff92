"""VICReg, SimSiam, MoCo's InfoNCE (+ its momentum helpers) and masked-token MPM against loop-based numpy
references, degenerate inputs, stop-gradients, and collapse with and without the terms that prevent it."""
import math
from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jetjax import losses, momentum
from test_losses import RTOL, assert_finite_value_and_grad, cross_entropy_loop, f64, mpm_inputs, unit


# ---------------------------------------------------------------- naive references (float64, loops)

def dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def batch_covariance_loop(z):
    n, d = z.shape
    mean = [sum(z[b, j] for b in range(n)) / n for j in range(d)]
    return [[sum((z[b, i] - mean[i]) * (z[b, j] - mean[j]) for b in range(n)) / (n - 1) for j in range(d)]
            for i in range(d)]


def vicreg_loop(z1, z2, w_invariance, w_variance, w_covariance, gamma, eps):
    n, d = z1.shape
    invariance = sum((z1[b, j] - z2[b, j]) ** 2 for b in range(n) for j in range(d)) / (n * d)
    variance = covariance = std = 0.0
    for z in (z1, z2):
        cov = batch_covariance_loop(z)
        variance += 0.5 * sum(max(0.0, gamma - math.sqrt(cov[j][j] + eps)) for j in range(d)) / d
        covariance += sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        std += 0.5 * sum(math.sqrt(cov[j][j]) for j in range(d)) / d
    total = w_invariance * invariance + w_variance * variance + w_covariance * covariance
    return {"invariance": invariance, "variance": variance, "covariance": covariance, "std": std, "total": total}


def std_of_unit_rows_loop(z):
    rows = [unit(v) for v in z]
    n, d = len(rows), len(rows[0])
    stds = []
    for j in range(d):
        mean = sum(r[j] for r in rows) / n
        stds.append(math.sqrt(sum((r[j] - mean) ** 2 for r in rows) / n))
    return sum(stds) / d


def simsiam_loop(p1, p2, z1, z2):
    def d(p, z):
        return -sum(dot(unit(a), unit(b)) for a, b in zip(p, z)) / len(p)
    return 0.5 * d(p1, z2) + 0.5 * d(p2, z1), 0.5 * (std_of_unit_rows_loop(z1) + std_of_unit_rows_loop(z2))


def infonce_loop(query, keys, queue, temperature):
    """Each query's logits written out: [positive, queue...] (v2) or all the batch's keys (v3)."""
    q, k = [unit(v) for v in query], [unit(v) for v in keys]
    negatives = None if queue is None else [unit(v) for v in queue]
    all_logits, positives = [], []
    for b in range(len(q)):
        if negatives is None:
            all_logits.append([dot(q[b], key) / temperature for key in k])
            positives.append(b)
        else:
            all_logits.append([dot(q[b], k[b]) / temperature] + [dot(q[b], n) / temperature for n in negatives])
            positives.append(0)
    top1 = sum(max(range(len(row)), key=row.__getitem__) == p for row, p in zip(all_logits, positives)) / len(q)
    return cross_entropy_loop(all_logits, positives, 0.0), top1


def masked_token_loop(logits, tokens, masked):
    selected = [(j, i) for j in range(masked.shape[0]) for i in range(masked.shape[1]) if masked[j, i]]
    if not selected:
        return 0.0, 0.0
    rows = [logits[j, i] for j, i in selected]
    labels = [tokens[j, i] for j, i in selected]
    accuracy = sum(int(np.argmax(r)) == y for r, y in zip(rows, labels)) / len(selected)
    return cross_entropy_loop(rows, labels, 0.0), accuracy


# ---------------------------------------------------------------- VICReg

@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 0.5, 4.0)])
def test_vicreg_matches_loop(weights):
    rng = np.random.default_rng(1)
    z1 = rng.normal(0, [0.3, 1.0, 2.0, 0.5, 1.5], (7, 5)).astype(np.float32)
    z2 = (z1 + rng.normal(0, 0.4, z1.shape)).astype(np.float32)
    loss, metrics = losses.vicreg(z1, z2, *weights, gamma=1.2, eps=1e-3)
    expected = vicreg_loop(*f64(z1, z2), *weights, 1.2, 1e-3)
    np.testing.assert_allclose(loss, expected["total"], rtol=RTOL)
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=RTOL, err_msg=name)


def test_vicreg_identical_and_collapsed_views():
    z = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    assert_finite_value_and_grad(lambda a, b: losses.vicreg(a, b)[0], z, z)
    assert float(losses.vicreg(z, z)[1]["invariance"]) == 0.0
    # every jet mapped to the same point: zero spread, the hinge at its maximum, finite gradients
    constant = np.ones((6, 4), np.float32)
    _, grads = assert_finite_value_and_grad(lambda a, b: losses.vicreg(a, b)[0], constant, constant)
    _, metrics = losses.vicreg(constant, constant)
    assert float(metrics["std"]) == 0.0
    np.testing.assert_allclose(metrics["variance"], 1.0 - math.sqrt(1e-4), rtol=RTOL)
    assert not any(np.any(g) for g in grads)  # exact collapse is a stationary point (zero deviations)
    # near it, a gradient step spreads the embeddings: the variance term pushes them apart
    nearly = constant + 1e-3 * np.random.default_rng(3).normal(size=constant.shape).astype(np.float32)
    stepped = nearly - 0.1 * jax.grad(lambda a: losses.vicreg(a, a)[0])(nearly)
    assert np.std(stepped, axis=0).mean() > 5 * np.std(nearly, axis=0).mean()


def test_vicreg_rejects_a_single_jet_or_mismatched_views():
    with pytest.raises(ValueError, match="B >= 2"):
        losses.vicreg(np.ones((1, 4), np.float32), np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="same shape"):
        losses.vicreg(np.ones((4, 3), np.float32), np.ones((4, 2), np.float32))


# ---------------------------------------------------------------- SimSiam

def test_simsiam_matches_loop():
    rng = np.random.default_rng(3)
    p1, p2, z1, z2 = rng.normal(size=(4, 8, 6)).astype(np.float32)
    loss, metrics = losses.simsiam(p1, p2, z1, z2)
    expected_loss, expected_std = simsiam_loop(*f64(p1, p2, z1, z2))
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL)
    np.testing.assert_allclose(metrics["std"], expected_std, rtol=RTOL)
    no_stop, _ = losses.simsiam(p1, p2, z1, z2, stop_gradient=False)
    np.testing.assert_allclose(no_stop, loss, rtol=1e-6)  # the stop-gradient changes gradients only


def test_simsiam_stop_gradient_stops_gradients_to_the_targets():
    p1, p2, z1, z2 = np.random.default_rng(4).normal(size=(4, 8, 6)).astype(np.float32)
    grads = jax.grad(lambda *a: losses.simsiam(*a)[0], argnums=(0, 1, 2, 3))(p1, p2, z1, z2)
    assert np.any(grads[0]) and np.any(grads[1])
    assert not np.any(grads[2]) and not np.any(grads[3])
    ablated = jax.grad(lambda *a: losses.simsiam(*a, stop_gradient=False)[0], argnums=(2, 3))(p1, p2, z1, z2)
    assert np.any(ablated[0]) and np.any(ablated[1])


def test_simsiam_std_indicator_and_degenerate_inputs():
    d = 64
    z = np.random.default_rng(5).normal(size=(2, 4096, d)).astype(np.float32)
    _, metrics = losses.simsiam(z[0], z[1], z[0], z[1])
    np.testing.assert_allclose(metrics["std"], 1 / math.sqrt(d), rtol=0.02)  # isotropic: ~1/sqrt(d)
    collapsed = np.tile(z[0, :1], (8, 1))
    _, metrics = losses.simsiam(collapsed, collapsed, collapsed, collapsed)
    assert float(metrics["std"]) < 1e-6
    zeros = np.zeros((8, 6), np.float32)
    assert_finite_value_and_grad(lambda p, q: losses.simsiam(p, q, zeros, zeros)[0], zeros, zeros)
    value, _ = assert_finite_value_and_grad(lambda p, q: losses.simsiam(p, q, p, q)[0], z[0, :8], z[0, :8])
    np.testing.assert_allclose(value, -1.0, rtol=1e-6)  # identical views and predictor = identity


# ---------------------------------------------------------------- MoCo: InfoNCE, momentum update, queue

@pytest.mark.parametrize("with_queue", [False, True])
def test_infonce_matches_loop(with_queue):
    rng = np.random.default_rng(6)
    query = rng.normal(size=(8, 5)).astype(np.float32)
    keys = (query + rng.normal(0, 0.8, query.shape)).astype(np.float32)
    queue = rng.normal(size=(11, 5)).astype(np.float32) if with_queue else None
    loss, metrics = losses.infonce(query, keys, queue, temperature=0.2)
    expected_loss, expected_top1 = infonce_loop(*f64(query, keys, queue), 0.2)
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL)
    np.testing.assert_allclose(metrics["top1_positive"], expected_top1, rtol=RTOL)
    assert 0.0 < expected_top1 < 1.0  # the retrieval metric is exercised, not trivially 0 or 1


@pytest.mark.parametrize("with_queue", [False, True])
def test_infonce_keys_are_constants_and_degenerate_inputs_are_finite(with_queue):
    rng = np.random.default_rng(7)
    query, keys = rng.normal(size=(2, 6, 4)).astype(np.float32)
    queue = rng.normal(size=(9, 4)).astype(np.float32) if with_queue else None
    grads = jax.grad(lambda q, k, n: losses.infonce(q, k, n)[0], argnums=(0, 1, 2))(query, keys, queue)
    assert np.any(grads[0]) and not np.any(grads[1]) and (queue is None or not np.any(grads[2]))
    zeros = np.zeros_like(query)
    assert_finite_value_and_grad(lambda q, k: losses.infonce(q, k, queue)[0], zeros, zeros)
    assert_finite_value_and_grad(lambda q: losses.infonce(q, q, queue)[0], query)


def test_infonce_rejects_misshapen_keys_and_queue():
    with pytest.raises(ValueError, match="one positive key per query"):
        losses.infonce(np.ones((4, 3), np.float32), np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected \(K, 3\)"):
        losses.infonce(np.ones((4, 3), np.float32), np.ones((4, 3), np.float32), np.ones((8, 2), np.float32))


def test_ema_update_is_the_moving_average_of_every_leaf():
    rng = np.random.default_rng(8)
    target = {"dense": {"kernel": rng.normal(size=(3, 2)), "bias": rng.normal(size=2)}, "scale": rng.normal(size=())}
    online = jax.tree.map(lambda x: x + rng.normal(size=np.shape(x)), target)
    target, online = jax.tree.map(lambda x: np.asarray(x, np.float32), (target, online))
    for m in (0.0, 0.99, 1.0):
        updated = momentum.ema_update(target, online, m)
        assert jax.tree.structure(updated) == jax.tree.structure(target)
        for t, o, u in zip(jax.tree.leaves(target), jax.tree.leaves(online), jax.tree.leaves(updated)):
            assert u.dtype == np.float32
            np.testing.assert_allclose(u, m * t.astype(np.float64) + (1 - m) * o, rtol=1e-6, atol=1e-7)


def test_enqueue_keeps_the_newest_keys_in_fifo_order():
    size, width = 7, 2
    queue = np.zeros((size, width), np.float32)
    reference = deque(([0.0] * width for _ in range(size)), maxlen=size)  # appending drops the oldest
    enqueue = jax.jit(momentum.enqueue)
    counter = 1
    for batch in (3, 3, 1, 3, 7):
        keys = np.arange(counter, counter + batch * width, dtype=np.float32).reshape(batch, width)
        counter += batch * width
        queue = enqueue(queue, keys)
        reference.extend(keys.tolist())
        np.testing.assert_array_equal(queue, np.array(reference))
    with pytest.raises(ValueError, match="B <= K"):
        momentum.enqueue(queue, np.ones((size + 1, width), np.float32))


def test_enqueued_keys_carry_no_gradient():
    keys = np.ones((2, 3), np.float32)
    grad = jax.grad(lambda k: jnp.sum(momentum.enqueue(jnp.zeros((4, 3)), k)))(keys)
    assert not np.any(grad)


# ---------------------------------------------------------------- masked-token MPM

def test_masked_token_cross_entropy_matches_loop_and_ignores_unmasked_slots():
    rng = np.random.default_rng(9)
    _, _, masked, logits, tokens = mpm_inputs(rng, n_jets=5, n_slots=8, n_classes=32)
    loss, metrics = losses.masked_token_cross_entropy(logits, tokens, masked)
    expected_loss, expected_accuracy = masked_token_loop(*f64(logits), tokens, masked)
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL)
    np.testing.assert_allclose(metrics["token_accuracy"], expected_accuracy, rtol=RTOL)
    assert float(metrics["masked_particles"]) == masked.sum()
    garbage = logits.copy()
    garbage[~masked] = np.nan
    value, (grad,) = assert_finite_value_and_grad(
        lambda l: losses.masked_token_cross_entropy(l, tokens, masked)[0], garbage)
    np.testing.assert_allclose(value, loss, rtol=1e-6)
    assert not np.any(np.asarray(grad)[~masked])


def test_masked_token_cross_entropy_without_masked_particles_gives_zero():
    _, _, masked, logits, tokens = mpm_inputs(np.random.default_rng(10), n_classes=512)
    none = np.zeros_like(masked)
    value, (grad,) = assert_finite_value_and_grad(
        lambda l: losses.masked_token_cross_entropy(l, tokens, none)[0], logits)
    assert float(value) == 0.0 and not np.any(grad)


# ---------------------------------------------------------------- order of the jets, bf16

def test_new_losses_are_invariant_to_the_order_of_jets():
    rng = np.random.default_rng(11)
    perm = rng.permutation(8)
    a, b, c, d = rng.normal(size=(4, 8, 5)).astype(np.float32)
    queue = rng.normal(size=(6, 5)).astype(np.float32)
    _, _, masked, logits, tokens = mpm_inputs(rng, n_jets=8, n_classes=16)
    cases = {
        "vicreg": lambda p: losses.vicreg(a[p], b[p]),
        "simsiam": lambda p: losses.simsiam(a[p], b[p], c[p], d[p]),
        "infonce": lambda p: losses.infonce(a[p], b[p]),
        "infonce_queue": lambda p: losses.infonce(a[p], b[p], queue),
        "masked_token": lambda p: losses.masked_token_cross_entropy(logits[p], tokens[p], masked[p]),
    }
    for name, fn in cases.items():
        (loss_a, metrics_a), (loss_b, metrics_b) = fn(np.arange(8)), fn(perm)
        np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5, err_msg=name)
        for key in metrics_a:
            np.testing.assert_allclose(metrics_a[key], metrics_b[key], rtol=1e-5, err_msg=f"{name} {key}")


def test_bf16_embeddings_give_float32_losses():
    z = jnp.asarray(np.random.default_rng(12).normal(size=(4, 6, 8)), jnp.bfloat16)
    for loss, _ in (losses.vicreg(z[0], z[1]), losses.simsiam(*z), losses.infonce(z[0], z[1], z[2])):
        assert loss.dtype == jnp.float32


# ---------------------------------------------------------------- collapse: toy two-view training

def mlp_init(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [(jax.random.normal(k, (a, b)) / math.sqrt(a), jnp.zeros(b)) for k, a, b in zip(keys, sizes, sizes[1:])]


def mlp(params, x):
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def train_std(loss_fn, seed, steps=300, batch=128, dim=8, noise=0.3):
    """Train an MLP encoder 8 -> 64 -> 16 (and a 16 -> 8 -> 16 predictor) with Adam on two noisy views of
    Gaussian points; return the `std` metric of the last step."""
    key = jax.random.PRNGKey(seed)
    params = {"encoder": mlp_init(key, [dim, 64, 16]), "predictor": mlp_init(jax.random.fold_in(key, 1), [16, 8, 16])}
    optimiser = optax.adam(1e-2)

    def step(carry, step_key):
        params, opt_state = carry
        k_x, k_1, k_2 = jax.random.split(step_key, 3)
        x = jax.random.normal(k_x, (batch, dim))
        views = x + noise * jax.random.normal(k_1, x.shape), x + noise * jax.random.normal(k_2, x.shape)
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *views)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), metrics["std"]

    carry = (params, optimiser.init(params))
    _, stds = jax.lax.scan(step, carry, jax.random.split(jax.random.fold_in(key, 2), steps))
    return stds[-1]


SEEDS = jnp.arange(3)


def test_vicreg_without_its_variance_term_collapses():
    def loss_fn(params, v1, v2, variance):
        return losses.vicreg(mlp(params["encoder"], v1), mlp(params["encoder"], v2), variance=variance)

    # one compiled program trains every (seed, variance weight) pair
    seeds, weights = jnp.repeat(SEEDS, 2), jnp.tile(jnp.array([25.0, 0.0]), len(SEEDS))
    train = jax.vmap(lambda s, w: train_std(lambda p, v1, v2: loss_fn(p, v1, v2, w), s))
    stds = np.asarray(jax.jit(train)(seeds, weights)).reshape(len(SEEDS), 2)
    assert np.all(stds[:, 0] > 0.5), stds  # gamma = 1 holds every dimension's spread near 1 (~0.6 at start)
    assert np.all(stds[:, 1] < 0.05), stds


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_simsiam_without_its_stop_gradient_collapses(stop_gradient):
    def loss_fn(params, v1, v2):
        z1, z2 = mlp(params["encoder"], v1), mlp(params["encoder"], v2)
        return losses.simsiam(mlp(params["predictor"], z1), mlp(params["predictor"], z2), z1, z2, stop_gradient)

    stds = np.asarray(jax.jit(jax.vmap(lambda s: train_std(loss_fn, s)))(SEEDS))
    # 1/sqrt(16) = 0.25 for a spread-out output (~0.2 at start); measured ~0.11 with and ~0.008 without
    if stop_gradient:
        assert np.all(stds > 0.06), stds
    else:
        assert np.all(stds < 0.03), stds
