"""Inference speed of the exported reference ParT on CPU: ONNX Runtime beside jetjax under jit (and the
StableHLO export run back in JAX), softmax scores of a batch of jets with realistic multiplicities (most
30-80 particles, drawn around 55 +- 15, as in bench_train.py) zero-padded to P slots.

ONNX Runtime runs with its default threads (one per core) and with one thread, the usual setting of a C++
analysis job; JAX uses every core. The runtimes take turns, `--rounds` times `--steps` calls each after a
warm-up call (which compiles), so that load from other processes hits them alike; each prints one JSON line
with its best round: milliseconds per batch and jets per second.

  python experiments/bench_export.py --batch 64 --slots 128 --steps 5 --rounds 3
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import onnxruntime

from bench_train import realistic_batch
from jetjax import export
from jetjax.models.part import ParT


def runners(folder, slots, inputs):
    """name -> (settings, call) of each runtime; every call returns the scores of `inputs` on the host."""
    model = ParT(num_classes=7)
    variables = jax.jit(model.init)(jax.random.key(0), *(x[:2] for x in inputs))
    infer = export.inference_function(model, variables, ("scores",))
    specs = export.input_specs(slots, inputs[0].shape[-1])
    stablehlo, onnx_path = Path(folder) / "part.stablehlo", Path(folder) / "part.onnx"
    export.write_stablehlo(infer, specs, stablehlo, platforms=("cpu",))
    export.write_onnx(infer, specs, ("scores",), onnx_path, {})
    jitted, loaded = jax.jit(infer), export.load_stablehlo(stablehlo)
    found = {"jetjax jit": ({"threads": os.cpu_count()}, lambda: jax.device_get(jitted(*inputs))),
             "stablehlo in jax": ({"threads": os.cpu_count()}, lambda: jax.device_get(loaded(*inputs)))}
    feeds = dict(zip(export.INPUT_NAMES, inputs))
    for threads in (os.cpu_count(), 1):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        found[f"onnxruntime {threads} thread(s)"] = ({"threads": threads, "version": onnxruntime.__version__},
                                                     lambda session=session: session.run(None, feeds))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--slots", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    batch = realistic_batch(args.batch, args.slots)
    inputs = tuple(batch[name] for name in export.INPUT_NAMES)
    with tempfile.TemporaryDirectory() as folder:
        cases = runners(folder, args.slots, inputs)
        best = {}
        for call in (call for _, call in cases.values()):
            call()  # compiles
        for _ in range(args.rounds):
            for name, (_, call) in cases.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    call()
                best[name] = min(best.get(name, float("inf")), (time.perf_counter() - start) / args.steps)
    for name, (settings, _) in cases.items():
        print(json.dumps({"runtime": name, "batch": args.batch, "slots": args.slots,
                          "ms_per_batch": round(1e3 * best[name], 1), "jets_per_s": round(args.batch / best[name], 1),
                          **settings}), flush=True)


if __name__ == "__main__":
    main()
