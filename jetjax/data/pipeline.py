"""Config-facing data entry points and background prefetching (placement on the devices: jetjax/feeding.py).

    sampler = training_sampler(root, feature_set="kinpid", batch_size=512, epoch_size=2_000_000, seed=0)
    for batch in prefetch(sampler.batches(epoch, start_batch)):
        ...  # numpy arrays: features (B, P, C), vectors (B, P, 4), mask (B, P), label (B,), pid (B, P), jet (B, 4)

Every entry point takes plain values (ml_collections-friendly): `root` (dataset folder) or `files`
(explicit paths / globs of the split, overriding discovery), `scheme` (classes.SCHEMES key), `feature_set`
(features.FEATURE_SETS key), `num_particles` (P), `batch_size`, `skip_bad_files`, and a `report`
(chunks.DataReport, shared by the streams so one report covers the run).

`skim` (also `python -m jetjax.data.pipeline ROOT OUT`) copies the task's jets of a JetClass-II parquet
dataset, all columns, into OUT/{train,val,test}/ under the same file names. Worth it for the study's task:
the sampler reads a group's files at their natural class mix, and qqb + bcs are 2 of the 146 X -> YY
labels (15..160) that the Res34P files hold: if those come in similar numbers, an epoch decodes ~70
Res34P jets per qqb/bcs jet it uses, and a third of the epoch is qqb/bcs.
"""
import argparse
import queue
import threading
from pathlib import Path

import numpy as np

from jetjax.data.chunks import (CONFIG_COLUMNS, DEFAULT_COLUMNS, JET_COLUMNS, LABEL_COLUMN, ROOT_TREE, ColumnMap,
                                DataError, DataReport)
from jetjax.data.classes import get_scheme
from jetjax.data.features import KIN_TARGET_ONLY_COLUMNS, required_particle_columns
from jetjax.data.labelled import LabelledSampler, select_labelled
from jetjax.data.readers import discover_files
from jetjax.data.sampler import StratifiedSampler, natural_batches
from jetjax.data.workers import WorkerSampler


def training_sampler(root=None, split="train", feature_set="kin", num_particles=128, batch_size=256,
                     epoch_size=2_000_000, seed=0, scheme="jetclass2_7", files=None, skip_bad_files=False,
                     buffer_size=2048, pool_size=8, chunk_size=1024, report=None, file_format="any",
                     length_window=0, workers=0, column_map=DEFAULT_COLUMNS, label_budget=0, label_seed=0):
    """The training sampler over the split's files: `sampler.batches(epoch, start_batch)` yields an epoch.
    StratifiedSampler; with `workers` >= 1 its files are decoded and features built in that many processes
    (workers.WorkerSampler, the same batches). With `label_budget` > 0, epochs draw only from the first
    `label_budget` jets of the split's labelled order for `label_seed` (labelled.py; those jets are held in
    memory). With `length_window` > 1, batches are regrouped by multiplicity within windows of that many
    batches (`LengthGroupedSampler`)."""
    groups, scheme = discover_files(root, split, files, file_format), get_scheme(scheme)
    if label_budget:
        report = DataReport() if report is None else report
        chunk, labels = select_labelled(groups, scheme, label_budget, label_seed, feature_set, skip_bad_files=
                                        skip_bad_files, report=report, column_map=column_map)
        sampler = LabelledSampler(chunk, labels, feature_set, num_particles, batch_size, epoch_size, seed, report)
    else:
        sampler = StratifiedSampler(groups, scheme, feature_set, num_particles, batch_size, epoch_size, seed,
                                    buffer_size, pool_size, chunk_size, skip_bad_files, report, column_map)
        if workers >= 1:
            sampler = WorkerSampler(sampler, workers)
    return LengthGroupedSampler(sampler, length_window) if length_window > 1 else sampler


class LengthGroupedSampler:
    """A training sampler whose batches hold jets of similar multiplicity (config `data.length_grouping`):
    the jets of each window of `window` consecutive batches are sorted by multiplicity and re-cut
    (`grouped_by_length`), and the window's batches come in a random order. An epoch keeps its jets and
    class fractions, but a batch's class mix follows multiplicity, which correlates with class. Still a
    function of (seed, epoch): `batches(epoch, start_batch)` resumes at any batch."""

    def __init__(self, sampler, window):
        self.sampler, self.window = sampler, window
        self.batches_per_epoch, self.report = sampler.batches_per_epoch, sampler.report

    def batches(self, epoch=0, start_batch=0):
        first = start_batch // self.window
        stream = grouped_by_length(self.sampler.batches(epoch, first * self.window), self.window)
        for index, window in enumerate(_windows(stream, self.window), start=first):
            order = np.random.default_rng((self.sampler.seed, epoch, index, 1)).permutation(len(window))
            for b, i in enumerate(order):
                if index * self.window + b >= start_batch:
                    yield {k: v for k, v in window[i].items() if k != "position"}


def validation_batches(root=None, num_jets=100_000, feature_set="kin", num_particles=128, batch_size=256,
                       seed=0, scheme="jetclass2_7", files=None, skip_bad_files=False, report=None, **sampler_args):
    """The balanced validation sample: the training policy on the val split, always the same `num_jets`
    jets for a given seed (epoch 0 of a sampler of epoch size `num_jets`)."""
    sampler = training_sampler(root, "val", feature_set, num_particles, batch_size, num_jets, seed, scheme, files,
                               skip_bad_files, report=report, **sampler_args)
    return sampler.batches(epoch=0)


def test_batches(root=None, feature_set="kin", num_particles=128, batch_size=256, scheme="jetclass2_7",
                 files=None, split="test", skip_bad_files=False, report=None, chunk_size=4096,
                 file_format="any", column_map=DEFAULT_COLUMNS):
    """The natural stream of the split: every jet of the task once, original class frequencies."""
    return natural_batches(discover_files(root, split, files, file_format), get_scheme(scheme), feature_set,
                           num_particles, batch_size, chunk_size, skip_bad_files,
                           DataReport() if report is None else report, column_map)


def with_overrides(data, overrides):
    """A copy of the data config `data` with every value of `overrides` (nested ConfigDicts or dicts, the same
    keys) that is set (not None) written in: efficiency.pretrain_data, predict's input files."""
    data = data.copy_and_resolve_references()

    def write(target, values):
        for key, value in values.items():
            if hasattr(value, "items"):
                write(target[key], value)
            elif value is not None:
                target[key] = value

    write(data, overrides)
    return data


def column_map(data):
    """The chunks.ColumnMap of a data config (`data.columns`, `data.tree`), checked against its feature set:
    errors name the config key."""
    columns = dict(data.get("columns", {}))
    unknown = sorted(set(columns) - set(CONFIG_COLUMNS))
    if unknown:
        raise KeyError(f"config.data.columns has unknown column(s) {unknown}; the mappable columns are "
                       f"{CONFIG_COLUMNS}")
    absent = {n for n, stored in columns.items() if not stored}
    optional = set(KIN_TARGET_ONLY_COLUMNS) if data.feature_set == "kin" else set()
    needed = (absent & set(required_particle_columns(data.feature_set))) - optional
    if needed or LABEL_COLUMN in absent:
        raise ValueError(f"config.data.columns maps {sorted(needed | (absent & {LABEL_COLUMN}))} to '' (not in the "
                         f"files), but feature set {data.feature_set!r} and the label need them")
    if absent & set(JET_COLUMNS) not in (set(), set(JET_COLUMNS)):
        raise ValueError(f"config.data.columns maps {sorted(absent & set(JET_COLUMNS))} to '': map all four jet "
                         f"columns {JET_COLUMNS} to '' (the jet is then the sum of its constituents) or none")
    renamed = tuple(sorted((n, stored) for n, stored in columns.items() if stored != n))
    return ColumnMap(renamed, data.get("tree", ROOT_TREE))


MODEL_INPUTS = ("features", "vectors", "mask", "jet", "label", "pid", "target")
"""The keys of a batch that models see (other keys, like a stream `position`, stay on the host)."""


def grouped_by_length(batches, window):
    """The jets of `batches` re-cut into batches of the same size in which jets of similar multiplicity sit
    together: within each window of `window` consecutive batches, jets are sorted by their number of real
    particles (stable). Each batch gains `position`, every jet's index in the original stream, so that
    results can be put back in stream order. The last batch of a window may be shorter."""
    start = 0
    for window_batches in _windows(batches, window):
        merged = {k: np.concatenate([b[k] for b in window_batches]) for k in window_batches[0]}
        size, total = len(window_batches[0]["label"]), len(merged["label"])
        order = np.argsort(merged["mask"].sum(axis=1), kind="stable")
        for first in range(0, total, size):
            rows = order[first:first + size]
            yield {**{k: v[rows] for k, v in merged.items()}, "position": start + rows}
        start += total


def _windows(items, size):
    window = []
    for item in items:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


_END = object()


def prefetch(batches, size=2):
    """Iterate `batches` in a background thread, keeping up to `size` ready; re-raises its errors here.
    numpy releases the GIL in its heavy loops and pyarrow decodes in C, so the thread overlaps with the
    training step."""
    ready = queue.Queue(maxsize=size)
    stop = threading.Event()

    def produce():
        try:
            for batch in batches:
                if stop.is_set():
                    return
                ready.put(batch)
            ready.put(_END)
        except BaseException as error:  # handed to the consumer, raised there
            ready.put(error)

    thread = threading.Thread(target=produce, daemon=True, name="jetjax-prefetch")
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass


def skim(root, out, scheme="jetclass2_7", splits=("train", "val", "test"), skip_bad_files=False, report=None,
         chunk_size=65536):
    """Write the jets of `scheme`'s classes from the parquet files of `root` to OUT/<split>/<same name>
    (same schema, same order); excluded labels are counted in `report`. Returns the written paths."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    scheme, report = get_scheme(scheme), DataReport() if report is None else report
    wanted = pa.array([label for c in scheme.classes for label in c.raw_labels], pa.int32())
    written = []
    for split in splits:
        for path in sorted(p for paths in discover_files(root, split).values() for p in paths):
            if path.suffix != ".parquet":
                raise DataError(f"{path}: skim reads parquet files only")
            target = Path(out) / split / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                source = pq.ParquetFile(path)
                with pq.ParquetWriter(target, source.schema_arrow, compression="zstd",
                                      use_dictionary=False) as writer:
                    for batch in source.iter_batches(batch_size=chunk_size):
                        keep = pc.is_in(batch[LABEL_COLUMN], value_set=wanted)
                        report.exclude(np.asarray(batch[LABEL_COLUMN])[~np.asarray(keep)])
                        writer.write_batch(batch.filter(keep))
            except (OSError, pa.ArrowException) as error:
                target.unlink(missing_ok=True)
                if not skip_bad_files:
                    raise DataError(f"{path}: cannot skim ({error})") from error
                report.skip_file(path, error)
                continue
            written.append(target)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description="Copy the task's jets of a JetClass-II parquet dataset.")
    parser.add_argument("root")
    parser.add_argument("out")
    parser.add_argument("--scheme", default="jetclass2_7")
    parser.add_argument("--skip-bad-files", action="store_true")
    args = parser.parse_args(argv)
    report = DataReport()
    paths = skim(args.root, args.out, args.scheme, skip_bad_files=args.skip_bad_files, report=report)
    print(f"wrote {len(paths)} files under {args.out}\n{report}")


if __name__ == "__main__":
    main()
