"""Data-stage throughput: jets/s for feature building, read + features + batching from parquet, the
stratified training sampler, the sampler behind the prefetch thread, and the sampler with its reading and
batch building in worker processes (data.workers). Prints one JSON line per stage.

    python experiments/bench_data.py [--root DIR] [--jets-per-group 40000] [--feature-sets kin full]
                                     [--workers 0 1 2]

Without --root it writes a synthetic dataset (the JetClass-II parquet format) to a temporary folder.
pyarrow is limited to one thread (in the workers too) so that the figures are per core. The
busy-consumer figure hands each batch on after a GIL-free wait (a simulated accelerator step): with
prefetching the data work hides behind it, so its jets/s approach min(data rate, batch_size / step_seconds).
The workers figures add CPU seconds: of this process (the sampler's choices, cleaning, the transfers) and
of the workers (from /proc: decoding and batch building), hence the per-worker rate (jets per worker CPU
second) and `free_cores_jets_per_s` = min(jets per caller CPU second, workers x per-worker rate), the rate
on workers + 1 otherwise idle cores, which a shared or small machine cannot show in wall-clock time.
"""
import argparse
import json
import multiprocessing
import os
import tempfile
import time

import numpy as np
import pyarrow as pa

from jetjax.data import features, pipeline, synthetic
from jetjax.data.classes import JETCLASS2_7
from jetjax.data.chunks import DataReport, concatenate_chunks
from jetjax.data.readers import discover_files, read_chunks
from jetjax.data.sampler import task_jets
from jetjax.data.workers import WorkerPool


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


def process_cpu_seconds(pid):
    """User + system CPU seconds of a live process (Linux /proc/PID/stat, fields 14 and 15)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_workers(sampler, epoch):
    """(jets, wall seconds, CPU seconds of this process, CPU seconds of the workers) of one epoch; the
    workers' time is read at the last batch, while they are still alive."""
    jets, workers_cpu = 0, 0.0
    start, cpu = time.perf_counter(), time.process_time()
    for index, batch in enumerate(sampler.batches(epoch)):
        jets += len(batch["label"])
        if index == sampler.batches_per_epoch - 1:
            workers_cpu = sum(process_cpu_seconds(p.pid) for p in multiprocessing.active_children()
                              if p.name.startswith("jetjax-data-worker"))
    return jets, time.perf_counter() - start, time.process_time() - cpu, workers_cpu


def emit_workers(feature_set, workers, jets, seconds, caller_cpu, workers_cpu):
    caller_rate = jets / caller_cpu
    worker_rate = jets / workers_cpu if workers else None
    emit("sampler_workers", feature_set, jets, seconds, workers=workers, caller_cpu_s=round(caller_cpu, 3),
         workers_cpu_s=round(workers_cpu, 3), jets_per_caller_cpu_s=round(caller_rate),
         jets_per_worker_cpu_s=round(worker_rate) if workers else None,
         free_cores_jets_per_s=round(min(caller_rate, workers * worker_rate) if workers else caller_rate),
         cpu_cores=os.cpu_count())


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
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="data.workers values to time")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"  # pyarrow's thread pool in the worker processes
    WorkerPool(1, read_ahead=1).close()  # start multiprocessing's fork server once, outside the timings
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
            for workers in args.workers:
                sampler = pipeline.training_sampler(root, feature_set=fs, epoch_size=args.epoch_size, seed=0,
                                                    workers=workers, **common)
                emit_workers(fs, workers, *bench_workers(sampler, 1))


if __name__ == "__main__":
    main()
