"""Particle blocks unrolled (what jetjax.models.part.ParT runs) against the same blocks as a loop (`lax.scan`
over stacked block parameters): compile seconds, HLO size and step time of a training step's gradient.

What is compiled: the gradient of a loss of the particle-block stack of the reference ParT (embed 128, 8 heads,
FFN x4, `--layers` blocks, dropout 0.1 as in training) on a dense batch (`--batch` jets, `--particles` slots,
realistic multiplicities, bench_train.py) with the pair bias given: the blocks are what unrolling repeats, the
embeddings, class blocks and optimizer update are the same either way. Both variants compute the same
gradient (checked: the largest difference is printed). One JSON line per variant.

    python experiments/bench_block_scan.py --layers 8 --batch 64 --particles 128
"""
from jetjax import memory

memory.keep_freed_memory()  # first, before numpy or jax start a thread (jetjax/memory.py)

import argparse
import json
import time

import jax
import jax.numpy as jnp

from bench_train import realistic_batch
from jetjax.models.layers import Block
from jetjax.models.layout import DenseLayout

HEADS, EMBED = 8, 128


def block():
    return Block(HEADS, "gelu", 4.0, 0.1, 0.1, 0.1, 0.0, None, jnp.float32)


def unrolled_loss(blocks, x, mask, biases, key):
    layout = DenseLayout(mask)
    for i, params in enumerate(blocks):
        x = block().apply({"params": params}, x, layout, biases, train=True,
                          rngs={"dropout": jax.random.fold_in(key, i)})
    return jnp.mean(jnp.where(mask[..., None], x, 0) ** 2)


def scanned_loss(stacked, x, mask, biases, key):
    layout = DenseLayout(mask)
    layers = jax.tree.leaves(stacked)[0].shape[0]

    def one_block(x, step):
        params, i = step
        x = block().apply({"params": params}, x, layout, biases, train=True,
                          rngs={"dropout": jax.random.fold_in(key, i)})
        return x, None

    x, _ = jax.lax.scan(one_block, x, (stacked, jnp.arange(layers)))
    return jnp.mean(jnp.where(mask[..., None], x, 0) ** 2)


def measure(name, loss, params, args, steps):
    grad = jax.jit(jax.grad(loss))
    start = time.perf_counter()
    lowered = grad.lower(params, *args)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    grads = jax.block_until_ready(compiled(params, *args))
    start = time.perf_counter()
    for _ in range(steps):
        grads = jax.block_until_ready(compiled(params, *args))
    step_s = (time.perf_counter() - start) / steps
    figures = {"variant": name, "compile_s": round(compile_s, 2), "hlo_chars": len(lowered.as_text()),
               "optimized_hlo_chars": len(compiled.as_text()), "step_s": round(step_s, 4)}
    return figures, grads


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--particles", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    mask = jnp.asarray(realistic_batch(args.batch, args.particles)["mask"]).astype(bool)
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (args.batch, args.particles, EMBED))
    biases = DenseLayout(mask).attention_bias(jax.random.normal(key, (args.batch, HEADS, args.particles,
                                                                      args.particles)) * 0.1)
    blocks = [block().init(jax.random.PRNGKey(i), x[:1], DenseLayout(mask[:1]))["params"]
              for i in range(args.layers)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *blocks)

    unrolled, unrolled_grads = measure("unrolled", unrolled_loss, blocks, (x, mask, biases, key), args.steps)
    scanned, scanned_grads = measure("scan", scanned_loss, stacked, (x, mask, biases, key), args.steps)
    restacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *unrolled_grads)
    scanned["max_grad_difference"] = float(max(jnp.max(jnp.abs(a - b)) for a, b in
                                               zip(jax.tree.leaves(restacked), jax.tree.leaves(scanned_grads))))
    for figures in (unrolled, scanned):
        print(json.dumps({**figures, "layers": args.layers, "batch": args.batch, "particles": args.particles,
                          "backend": jax.default_backend()}))
    print(f"scan / unrolled: compile {scanned['compile_s'] / unrolled['compile_s']:.2f}x, "
          f"optimized HLO {scanned['optimized_hlo_chars'] / unrolled['optimized_hlo_chars']:.2f}x, "
          f"step {scanned['step_s'] / unrolled['step_s']:.2f}x")


if __name__ == "__main__":
    main()
