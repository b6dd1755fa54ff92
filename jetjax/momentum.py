"""State updates of momentum-encoder objectives (MoCo; also the EMA targets of BYOL, DINO or I-JEPA):
pure functions of pytrees and arrays, with no gradient through them.

Kept apart from `losses`: these update training state between steps, they are not objectives.
"""
import jax
import jax.numpy as jnp


def ema_update(target_params, online_params, momentum):
    """Exponential moving average of the online parameters, leaf by leaf: t <- m t + (1 - m) o.

    `momentum` is a scalar (a Python float or a traced value, e.g. MoCo v3's cosine schedule 0.99 -> 1);
    m = 1 keeps the target, m = 0 copies the online parameters. Each leaf keeps the target's dtype."""
    return jax.tree.map(lambda t, o: (momentum * t + (1.0 - momentum) * o).astype(t.dtype),
                        target_params, jax.lax.stop_gradient(online_params))


def enqueue(queue, keys):
    """MoCo's FIFO queue of negative keys: queue (K, d) oldest row first, keys (B, d) with B <= K.

    Returns the (K, d) queue with the B oldest rows dropped and the new keys appended last, in order.
    The keys enter as constants (no gradient), in the queue's dtype."""
    if keys.ndim != 2 or queue.ndim != 2 or keys.shape[1] != queue.shape[1] or keys.shape[0] > queue.shape[0]:
        raise ValueError(f"enqueue: keys of shape {keys.shape} into a queue of shape {queue.shape}; expected "
                         "queue (K, d) and keys (B, d) with the same d and B <= K")
    keys = jax.lax.stop_gradient(jnp.asarray(keys, queue.dtype))
    return jnp.concatenate([queue, keys], axis=0)[keys.shape[0]:]
