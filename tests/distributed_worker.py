"""One process of the multi-process tests (started by jetjax.launch, or alone for one process):

    python tests/distributed_worker.py CONFIG.json WORKDIR OUT [STOP_AT_STEP]

trains the run `WORKDIR` with `train.fit` (resuming it if it has a checkpoint; with STOP_AT_STEP, sends
itself SIGTERM at that step, so the engine saves and stops as on a preemption), and writes OUT/before.npz and
OUT/after.npz: the parameters and BatchNorm statistics of the latest checkpoint, restored onto this run's
devices, before and after training (process 0 writes)."""
import json
import os
import signal
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np

from jetjax import build, optim, parallel, steps, train
from jetjax.checkpoint import Checkpoints


def restored_latest(config, workdir):
    """{path: array} of the latest checkpoint restored onto a replicated state of this topology; None if
    there is none."""
    model = build.build_model(config)
    tx = steps.accumulated(optim.make_optimizer(1, **config.optimizer), config.train.accumulate)
    sharding = parallel.replicated(parallel.data_mesh())
    shapes = jax.eval_shape(lambda key: steps.init_state(model, tx, build.example_batch(config, 2), key),
                            jax.random.key(0))
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
    stored = Checkpoints(workdir)
    restored = stored.restore("latest", target)
    stored.close()
    if restored is None:
        return None
    values = parallel.fetch_global({"params": restored[0].params, "batch_stats": restored[0].batch_stats})
    return {jax.tree_util.keystr(path): np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(values)}


def stop_at(step):
    """steps.run_steps that sends this process SIGTERM right after `step`."""
    run_steps = steps.run_steps

    def stopping(state, *args):
        for state, metrics in run_steps(state, *args):
            if int(state.step) == step:  # handled before the engine looks at its stop request
                os.kill(os.getpid(), signal.SIGTERM)
            yield state, metrics

    return stopping


def run(config_path, workdir, out, stop_step=None):
    """Write OUT/before.npz, train (stopping at `stop_step`), write OUT/after.npz (module docstring)."""
    config = ml_collections.ConfigDict(json.loads(Path(config_path).read_text()))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("before", "after"):
        if name == "after":
            run_steps = steps.run_steps
            if stop_step is not None:
                steps.run_steps = stop_at(int(stop_step))
            try:
                train.fit(config, workdir)
            finally:
                steps.run_steps = run_steps
        values = restored_latest(config, workdir)
        if values is not None and parallel.is_main_process():
            np.savez(out / f"{name}.npz", **values)


if __name__ == "__main__":
    parallel.initialize_distributed()
    cache = "on" if jax.config.jax_enable_compilation_cache else "off"
    print(f"process {jax.process_index()} of {jax.process_count()} joined, persistent cache {cache}", flush=True)
    jax.config.update("jax_disable_most_optimizations", True)
    run(*sys.argv[1:])
