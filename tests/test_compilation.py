"""jetjax.compilation: CompileLog counts the XLA programs compiled while it is open, per function; the persistent
cache serves a rerun; matmul_flops counts the matrix products of a traced step as torch counts weaver's."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import sizes, supervised_part
from jetjax import build, optim, steps
from jetjax.compilation import CompileLog, matmul_flops
from jetjax.data import pipeline


def test_one_program_per_new_shape_and_none_after_closing():
    @jax.jit
    def double_sum(x):
        return jnp.sum(x * 2)

    x3, x4, x5 = jnp.ones(3), jnp.ones(4), jnp.ones(5)  # created outside: their own programs are not counted
    with CompileLog() as log:
        for x in (x3, x3, x4):  # the second call with shape (3,) reuses the first program
            double_sum(x).block_until_ready()
    double_sum(x5).block_until_ready()  # after closing: not counted
    assert log.programs["jit(double_sum)"] == 2 and log.seconds["jit(double_sum)"] > 0
    summary = log.summary()
    assert summary["compiled_programs"] == sum(log.programs.values()) >= 2
    assert summary["programs jit(double_sum)"] == 2


RUN = """
import sys, jax, jax.numpy as jnp, ml_collections
from jetjax import compilation
config = ml_collections.ConfigDict({"compile": {"cache": sys.argv[2] == "on", "cache_dir": sys.argv[1]}})
compilation.use_persistent_cache(config)
with compilation.CompileLog() as log:
    jax.jit(lambda x: jnp.tanh(x) @ x)(jnp.ones((8, 8))).block_until_ready()
print(log.summary()["cache_hits"], log.programs["jit(<lambda>)"])
"""


def run_twice(folder, cache, jax_folder=None):
    """The RUN script twice with compile.cache on or off, JAX_COMPILATION_CACHE_DIR=`jax_folder` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    if jax_folder:
        env["JAX_COMPILATION_CACHE_DIR"] = str(jax_folder)
    return [subprocess.run([sys.executable, "-c", RUN, str(folder), cache], env=env, capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(2)]


def test_a_rerun_loads_its_programs_from_the_persistent_cache(tmp_path):
    (first_hits, first_programs), (second_hits, second_programs) = run_twice(tmp_path / "xla", "on")
    assert first_hits == "0" and int(second_hits) >= 1 and first_programs == second_programs == "1"
    assert any((tmp_path / "xla").iterdir())
    (hits, _), (hits_again, _) = run_twice(tmp_path / "off", "off")  # compile.cache=False: no folder, no hits
    assert hits == hits_again == "0" and not (tmp_path / "off").exists()
    (hits, _), (hits_again, _) = run_twice(tmp_path / "off", "off", jax_folder=tmp_path / "env")  # also not jax's
    assert hits == hits_again == "0" and not (tmp_path / "env").exists()


def test_matmul_flops_counts_scan_bodies_and_the_backward_products():
    def f(w, x):  # 3 scan steps of (4 x 8) @ (8 x 8), then (4 x 8) @ (8 x 4)
        y, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=3)
        return jnp.einsum("ij,kj->ik", y, y).sum()

    w, x = jnp.ones((8, 8)), jnp.ones((4, 8))
    forward = 3 * 2 * 4 * 8 * 8 + 2 * 4 * 4 * 8
    assert matmul_flops(jax.jit(f).trace(w, x).jaxpr) == forward
    assert matmul_flops(jax.jit(jax.grad(f)).trace(w, x).jaxpr) == 3 * forward  # each product: two more backward


def test_engine_steps_count_the_products_that_torch_counts_in_weavers_part():
    torch = pytest.importorskip("torch", reason="comparing with weaver needs torch: pip install 'jetjax[compare]'")
    weaver = pytest.importorskip("weaver.nn.model.ParticleTransformer", reason="needs weaver-core (extra 'compare')")
    from torch.utils.flop_counter import FlopCounterMode

    config = sizes.with_size(supervised_part.get_config(), "micro")
    config.data.num_particles = 16
    batch = build.example_batch(config, 4)
    batch["mask"][:] = True  # every slot real: weaver (no trimming) computes on every slot too
    inputs = {k: batch[k] for k in pipeline.MODEL_INPUTS}
    model, tx = build.build_model(config), optim.make_optimizer(10, **config.optimizer)
    state = steps.init_state(model, tx, inputs, jax.random.key(0))
    ours = {"eval": matmul_flops(steps.make_eval_step(model).trace(state, inputs, None).jaxpr),
            "train": matmul_flops(steps.make_train_step(model, tx).trace(state, inputs, None).jaxpr)}

    dims = sizes.SIZES["micro"]
    reference = weaver.ParticleTransformer(
        input_dim=batch["features"].shape[-1], num_classes=build.task_scheme(config.data).num_classes, pair_input_dim=4,
        use_pre_activation_pair=False, embed_dims=list(dims["embed_dims"]),
        pair_embed_dims=list(dims["pair_embed_dims"]), num_heads=dims["num_heads"], num_layers=dims["num_layers"],
        num_cls_layers=2, fc_params=[], trim=False)
    x, v = (torch.from_numpy(batch[k].transpose(0, 2, 1).copy()) for k in ("features", "vectors"))
    mask = torch.ones(4, 1, 16)
    theirs = {}
    for mode in ("eval", "train"):
        reference.train(mode == "train")
        with FlopCounterMode(display=False) as counter:  # autograd on also in eval mode: the counter needs it
            logits = reference(x, v, mask)
            if mode == "train":
                logits.sum().backward()
        theirs[mode] = counter.get_total_flops()
    # the same products, except two that torch's counter misses (the class attention's q k^T and a v over 1 x (N + 1),
    # 2 class blocks) and, in eval mode, jetjax's fold of the pair input BatchNorm into the first pair Dense (t W)
    class_attention = 2 * 2 * (2 * 4 * 17 * dims["embed_dims"][-1])
    assert ours["eval"] == theirs["eval"] + class_attention + 2 * 4 * dims["pair_embed_dims"][0]
    assert ours["train"] == theirs["train"] + 3 * class_attention
