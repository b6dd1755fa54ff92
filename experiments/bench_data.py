"""Data-stage throughput: jets/s for feature building, read + features + batching from parquet, the
stratified training sampler, and the sampler behind the prefetch thread. Prints one JSON line per stage.

    python experiments/bench_data.py [--root DIR] [--jets-per-group 40000] [--feature-sets kin full]

Without --root it writes a synthetic dataset (the JetClass-II parquet format) to a temporary folder.
pyarrow is limited to one thread so that the figures are per core. The last figure hands each batch on
after a GIL-free wait (a simulated accelerator step): with prefetching the data work hides behind it, so
its jets/s approach min(data rate, batch_size / step_seconds).
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np
import pyarrow as pa

from jetjax.data import features, pipeline, synthetic
from jetjax.data.classes import JETCLASS2_7
from jetjax.data.readers import DataReport, concatenate_chunks, discover_files, read_chunks
from jetjax.data.sampler import task_jets


def timed(run):
    start = time.perf_counter()
    jets = run()
    return jets, time.perf_counter() - start


def emit(stage, feature_set, jets, seconds, **extra):
    print(json.dumps({"stage": stage, "feature_set": feature_set, "jets": jets, "seconds": round(seconds, 3),
                      "jets_per_s": round(jets / seconds), **extra}), flush=True)


def bench_features(files, feature_set, num_particles, batch_size):
    """clean + to_batch on chunks already in memory (the feature-building cost alone)."""
    columns = features.required_particle_columns(feature_set)
    chunk = concatenate_chunks(c for f in files for c in read_chunks(f, columns, chunk_size=8192))
    report = DataReport()
    chunk, labels = task_jets(chunk, JETCLASS2_7, report)

    def run():
        for start in range(0, len(chunk) - batch_size + 1, batch_size):
            part = chunk.take(np.arange(start, start + batch_size))
            features.to_batch(features.clean(part, report), labels[start:start + batch_size], feature_set,
                              num_particles, report)
        return (len(chunk) // batch_size) * batch_size
    return timed(run)


def busy(batches, seconds):
    """Batches handed on after a GIL-free wait per batch, like an accelerator step the host waits for."""
    for batch in batches:
        time.sleep(seconds)
        yield batch


def bench_stream(batches):
    return timed(lambda: sum(len(b["label"]) for b in batches))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root")
    parser.add_argument("--jets-per-group", type=int, default=40000)
    parser.add_argument("--feature-sets", nargs="+", default=["kin", "full"])
    parser.add_argument("--num-particles", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epoch-size", type=int, default=60000)
    parser.add_argument("--step-seconds", type=float, default=0.01,
                        help="simulated training step per batch for the busy-consumer prefetch figure")
    args = parser.parse_args(argv)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = tmp
            _, seconds = timed(lambda: synthetic.write_dataset(root, args.jets_per_group, seed=0))
            emit("synthetic_generate_and_write", "-", 3 * args.jets_per_group, seconds)
        test_files = sorted(p for ps in discover_files(root, "test").values() for p in ps)
        common = dict(num_particles=args.num_particles, batch_size=args.batch_size)
        for fs in args.feature_sets:
            emit("features_only", fs, *bench_features(test_files, fs, **common))
            emit("read_features_batch_natural", fs, *bench_stream(pipeline.test_batches(root, fs, **common)))
            sampler = pipeline.training_sampler(root, feature_set=fs, epoch_size=args.epoch_size, seed=0, **common)
            bench_stream(sampler.batches(0))  # warm-up: file cache, allocations
            emit("read_features_batch_sampler", fs, *bench_stream(sampler.batches(1)), report=sampler.report.as_dict())
            emit("sampler_prefetch_thread", fs, *bench_stream(pipeline.prefetch(sampler.batches(1))),
                 cpu_cores=os.cpu_count())
            emit("sampler_prefetch_thread_with_busy_consumer", fs,
                 *bench_stream(busy(pipeline.prefetch(sampler.batches(1)), args.step_seconds)),
                 step_seconds=args.step_seconds, cpu_cores=os.cpu_count())


if __name__ == "__main__":
    main()
