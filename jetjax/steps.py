"""The compiled core shared by every objective: the training state and the jit-compiled steps.

The state is one pytree (params, batch_stats, opt_state, step, key, extra); a train step is a pure function
state, batch, plan -> state, metrics, compiled once per layout plan with the state's buffers donated. Under a
data mesh the batch arrives sharded along 'data' and the state replicated, so the same code runs on one device
or many. The run around these steps (epoch loop, validation, checkpoints): jetjax/train.py.
"""
import functools
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    extra: Any = flax.struct.field(default_factory=dict)
    """The objective's other variable collections, which it updates itself in each training step (neither
    trained by the optimizer nor BatchNorm statistics): e.g. MoCo's momentum encoder and queue."""


INIT_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}
"""XLA options of the initialisation program per platform: it runs once, so on the CPU LLVM need not optimise
it (the reference ParT's compiles in 4.2 s instead of 9.2 s, the quickstart model's in 1.2 s instead of 3.3 s;
the same parameters to float rounding). Other platforms compile it as usual, and so does an `init_state` traced
inside another transformation (`jax.eval_shape`), where jax accepts no compiler options."""


INFERENCE_COMPILER_OPTIONS = {"cpu": {"xla_cpu_experimental_ynn_fusion_type":
                                      "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}}
"""XLA options of the eval-mode programs (`jit_inference`) per platform. On the CPU, jaxlib 0.12 hands each matmul
to YNNPACK alone and runs the elementwise work around it (a LayerNorm's normalisation, the bias) as separate loops;
with the dot fusions of this option YNNPACK takes that work into the matmul, and the reference ParT infers 1.1x faster
on a CPU with AVX-512 (Xeon, Sapphire Rapids) but 1.06x slower on one without (AMD EPYC, AVX2 only; README,
"Benchmarks"), so they apply only where the CPU has AVX-512 (`cpu_has_avx512`). Training steps measured no change
with them, so they keep XLA's defaults."""

INFERENCE_OPTIONS_MIN_WIDTH = 128
"""The narrowest encoder (particle-token width) whose eval-mode programs take INFERENCE_COMPILER_OPTIONS. Measured on
a 2-core CPU: the 128-wide reference ParT infers 1.1x faster with them at P = 128 and as fast at P = 32; the
quickstart's 32-wide model 13-15% slower at P = 32 and P = 128, so narrower encoders keep XLA's defaults."""


@functools.lru_cache(maxsize=None)
def cpu_has_avx512():
    """Whether the host CPU has AVX-512 (the `avx512f` flag of Linux's /proc/cpuinfo; False where there is none)."""
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def _accepted(backend, options):
    """Whether this jaxlib compiles with `options` (a tuple of items) on `backend`: an option it does not know
    (another jaxlib) is an error at compile time, which a run must never meet."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros(())).compile()
        return True
    except jax.errors.JaxRuntimeError:  # INVALID_ARGUMENT: an unknown option, or a value it does not know
        return False


def platform_options(table):
    """The compiler options of `table` (platform -> options) for the default backend, or None where it has none or
    this jaxlib does not take them."""
    options = table.get(jax.default_backend())
    return options if options and _accepted(jax.default_backend(), tuple(sorted(options.items()))) else None


def jit_inference(step, model):
    """jax.jit of an eval-mode step (state, batch, plan -> ...; plan static) of the objective `model`, with
    INFERENCE_COMPILER_OPTIONS where its encoder is at least INFERENCE_OPTIONS_MIN_WIDTH wide and the CPU has
    AVX-512."""
    width = model.encoder.embed_dims[-1] if model.encoder is not None else 0  # None: the tokenizer stage
    takes_options = width >= INFERENCE_OPTIONS_MIN_WIDTH and cpu_has_avx512()
    options = platform_options(INFERENCE_COMPILER_OPTIONS) if takes_options else None
    return jax.jit(step, static_argnums=2, compiler_options=options)


def init_state(model, tx, batch, key):
    """A fresh state: the model initialised on `batch` (any batch of the right shapes) with `key`. Compiled
    as one program: op by op, flax's init compiles hundreds of small programs (seconds on CPU)."""

    def init(batch, key):
        init_key, model_key, state_key = jax.random.split(key, 3)
        variables = model.init(init_key, batch, model_key)
        params = variables["params"]
        extra = {k: v for k, v in variables.items() if k not in ("params", "batch_stats")}
        return TrainState(params=params, batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                          step=jnp.zeros((), jnp.int32), key=state_key, extra=extra)

    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((batch, key)))
    options = None if traced else platform_options(INIT_COMPILER_OPTIONS)
    return jax.jit(init, compiler_options=options)(batch, key)


def step_keys(state):
    """Independent keys for this step's views (augmentation/masking) and dropout: fold_in(key, step)."""
    view_key, dropout_key = jax.random.split(jax.random.fold_in(state.key, state.step))
    return view_key, dropout_key


def make_train_step(model, tx):
    """state, batch, plan -> new state, metrics (loss, the objective's metrics, gradient norm). `plan` is the
    batch's static layout (models/layout.py; None = every slot): one compiled program per plan."""

    def train_step(state, batch, plan):
        view_key, dropout_key = step_keys(state)

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats, **state.extra}
            (loss, metrics, _), new = model.apply(variables, batch, view_key, step=state.step, train=True, plan=plan,
                                                  rngs={"dropout": dropout_key}, mutable=["batch_stats", *state.extra])
            return loss, (metrics, new)

        (loss, (metrics, new)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        state = state.replace(params=optax.apply_updates(state.params, updates), batch_stats=new.get("batch_stats", {}),
                              opt_state=opt_state, step=state.step + 1, extra={k: new[k] for k in state.extra})
        return state, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(train_step, donate_argnums=0, static_argnums=2)


def make_eval_step(model):
    """state, batch, plan -> metrics, outputs (eval mode: running statistics, no dropout; views from a key
    fixed per step so validation is reproducible)."""

    def eval_step(state, batch, plan):
        view_key, _ = step_keys(state)
        variables = {"params": state.params, "batch_stats": state.batch_stats, **state.extra}
        loss, metrics, outputs = model.apply(variables, batch, view_key, step=state.step, train=False, plan=plan)
        return {**metrics, "loss": loss}, outputs

    return jit_inference(eval_step, model)


def run_steps(state, train_step, feeder, batches):
    """The train step dispatched on every batch of `batches`, fed by `feeder`: yields (state, metrics) as soon
    as each step is queued; the host waits for a step only where the devices need it (Feeder.sync_each_step)."""
    for device_batch, plan, _ in feeder(batches):
        state, metrics = train_step(state, device_batch, plan)
        if feeder.sync_each_step:  # CPU collectives of queued steps can deadlock (docs/jax_notes.md)
            jax.block_until_ready(metrics)
        yield state, metrics


def accumulated(tx, steps):
    """`tx` updating once every `steps` calls with the mean of their gradients (in between, the parameters do
    not move); `tx` itself for 1. BatchNorm still normalises each micro batch with its own statistics and
    updates its running statistics once per micro batch."""
    return tx if steps == 1 else optax.MultiSteps(tx, every_k_schedule=steps).gradient_transformation()
