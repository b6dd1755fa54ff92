"""The study's stratified streaming sampler, a fixed balanced validation sample, the natural test stream.

Training epochs (`StratifiedSampler.batches`): an epoch is `epoch_size` jets whose classes follow the
scheme's target fractions exactly (counts by largest remainder, then a random permutation of the
epoch's class sequence cut into batches). Each class's jets come from a shuffle buffer filled from its
file group's stream: a pool of `pool_size` open files read chunk by chunk, a random pool member per
chunk, files in a random order reshuffled at every pass (so a small
dataset is oversampled, a large one is sampled without repetition within a pass). A new pass starts only when
a buffer cannot serve a draw, and the jets it reads are counted ('jets_read_again' in the data report). Jets of other
classes met while filling a buffer go to their own buffers while those have room (a random subset when
they have less room than jets); the rest are unused. Draws from a buffer are uniform at random.

Reproducibility and resuming: everything random in epoch `e` comes from `numpy.random.default_rng((seed,
e))` and the streams restart at each epoch, so an epoch is a function of (seed, e). The sampler's state
is therefore (seed, epoch, batches already drawn): `batches(epoch, start_batch=n)` reconstructs it by
replaying the reads and draws of the first n batches without building their features.

The reading of files (`read`, default readers.read_chunks) and the building of each batch from the jets
drawn for it (`batch_jets` yields them per class, `build_batch` puts them in order and computes the
features) are pure stages that jetjax.data.workers runs in worker processes, leaving the sampler's
choices here.

Natural test stream (`natural_batches`): every file of the split once, in name order, every jet of the
task's classes once in file order, original class frequencies; the last batch may be smaller.
"""
from collections import deque

import numpy as np

from jetjax.data import features as feats
from jetjax.data.chunks import DEFAULT_COLUMNS, DataError, DataReport, MissingColumnError, concatenate_chunks
from jetjax.data.classes import ALL_FILES
from jetjax.data.readers import read_chunks


def task_jets(chunk, scheme, report, room=None, rng=None):
    """The jets of `chunk` that belong to a class of `scheme` (others counted as excluded), cleaned, with
    their class indices; with `room`, at most room[k] jets of class k, chosen at random with `rng`."""
    labels = scheme.class_index(chunk.raw_label)
    excluded = labels < 0
    if excluded.any():
        report.exclude(chunk.raw_label[excluded])
    if room is None:
        rows = np.flatnonzero(~excluded)
    else:
        rows = np.sort(np.concatenate([_at_most(np.flatnonzero(labels == k), r, rng) for k, r in enumerate(room)]))
    if len(rows) < len(chunk):
        chunk = chunk.take(rows)
    chunk = feats.clean(chunk, report)
    return chunk, scheme.class_index(chunk.raw_label)


def _at_most(rows, n, rng):
    n = max(n, 0)
    return rows if len(rows) <= n else rng.choice(rows, n, replace=False)


def iter_file_chunks(chunks, path, skip_bad_files, report):
    """The chunks of file `path` from the iterator `chunks` (e.g. read_chunks(path, ...)); a read error
    raises (naming the file) or, with `skip_bad_files`, ends the file and is reported."""
    try:
        yield from chunks
    except MissingColumnError:
        raise
    except DataError as error:
        if not skip_bad_files:
            raise
        report.skip_file(path, error)


class GroupStream:
    """Endless chunks from the files of one file group, mixed over a pool of open files (module doc). Jets read
    again (from a file opened in a second or later pass over the group) are counted in `report` as
    'jets_read_again': an epoch or validation sample larger than the split draws some jets twice."""

    def __init__(self, group, files, rng, read, pool_size, report=None):
        self.group, self.files, self.rng, self.read = group, list(files), rng, read
        self.pool_size = min(pool_size, len(self.files))
        self.queue, self.pool, self.passes = deque(), [], 0
        self.report = DataReport() if report is None else report

    def _open_next(self, new_pass):
        """Open the next file of this pass, or of a new pass when the pass is done and `new_pass` (or nothing
        was read yet); False when no file was opened."""
        if not self.queue:
            if not new_pass and self.passes:
                return False
            self.passes += 1
            self.queue.extend(self.files[i] for i in self.rng.permutation(len(self.files)))
        self.pool.append(self._counted(self.read(self.queue.popleft()), again=self.passes > 1))
        return True

    def _counted(self, chunks, again):
        for chunk in chunks:
            if again:
                self.report.count("jets_read_again", len(chunk))
            yield chunk

    def next_chunk(self, new_pass=True):
        """The next non-empty chunk; without `new_pass`, None once every file of the current pass is read."""
        empty_opens = 0
        while True:
            while len(self.pool) < self.pool_size and self._open_next(new_pass):
                pass
            if not self.pool:
                return None
            member = int(self.rng.integers(len(self.pool)))
            chunk = next(self.pool[member], None)
            if chunk is not None:
                if len(chunk):
                    return chunk
                continue
            del self.pool[member]
            empty_opens += 1
            if empty_opens > 2 * len(self.files) + self.pool_size:
                raise DataError(f"the files of group {self.group!r} yield no jets (all empty or skipped): "
                                f"{[str(f) for f in self.files[:3]]}...")


class ClassBuffer:
    """Shuffle buffer of cleaned jets of one class: random draws without replacement."""

    def __init__(self):
        self.chunk, self.alive = None, np.zeros(0, bool)

    def __len__(self):
        return int(self.alive.sum())

    def add(self, chunk):
        parts = [chunk] if self.chunk is None else [self.chunk.take(np.flatnonzero(self.alive)), chunk]
        self.chunk = concatenate_chunks(parts)
        self.alive = np.ones(len(self.chunk), bool)

    def draw(self, n, rng):
        rows = rng.choice(np.flatnonzero(self.alive), n, replace=False)
        self.alive[rows] = False
        return self.chunk.take(rows)


def exact_counts(total, fractions):
    """Integer counts summing to `total`, closest to total x fractions (largest remainder)."""
    raw = total * np.asarray(fractions) / np.sum(fractions)
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[:total - counts.sum()]] += 1
    return counts


class StratifiedSampler:
    """Epochs of `epoch_size` jets in batches of `batch_size` with the scheme's class fractions.

    Args:
      groups: {file group: [files]} (readers.discover_files).
      scheme: classes.LabelScheme. Every class's file group must have files (else a DataError names it); a
        class of group ALL_FILES is drawn from every file.
      feature_set, num_particles: features.FEATURE_SETS key and P.
      buffer_size: jets per class shuffle buffer; pool_size: open files per group; chunk_size: rows read
        per chunk.
    """

    def __init__(self, groups, scheme, feature_set, num_particles, batch_size, epoch_size, seed,
                 buffer_size=2048, pool_size=8, chunk_size=1024, skip_bad_files=False, report=None,
                 column_map=DEFAULT_COLUMNS):
        if any(c.file_group == ALL_FILES for c in scheme.classes):
            groups = {**groups, ALL_FILES: sorted((f for fs in groups.values() for f in fs), key=str)}
        missing = [f"{c.name} (files {c.file_group}_*)" for c in scheme.classes if not groups.get(c.file_group)]
        if missing:
            raise DataError(f"no files for class(es) {', '.join(missing)} among the groups {sorted(groups)}; "
                            f"check config.data.root / the split's file list")
        if epoch_size < batch_size:
            raise ValueError(f"epoch_size {epoch_size} is smaller than batch_size {batch_size}")
        self.groups, self.scheme, self.feature_set = groups, scheme, feature_set
        self.num_particles, self.batch_size, self.epoch_size, self.seed = num_particles, batch_size, epoch_size, seed
        self.buffer_size, self.pool_size, self.chunk_size = max(buffer_size, batch_size), pool_size, chunk_size
        self.skip_bad_files, self.column_map = skip_bad_files, column_map
        self.report = DataReport() if report is None else report
        self.columns = feats.required_particle_columns(feature_set)

    @property
    def batches_per_epoch(self):
        return self.epoch_size // self.batch_size

    def class_sequence(self, rng):
        """Class index of every jet of an epoch, in draw order."""
        counts = exact_counts(self.batches_per_epoch * self.batch_size, self.scheme.target_fractions)
        return rng.permutation(np.repeat(np.arange(len(counts)), counts))

    def _read(self, path, read):
        return iter_file_chunks(read(path, self.columns, self.scheme.label_branches, self.chunk_size,
                                     self.column_map), path, self.skip_bad_files, self.report)

    def _fill(self, buffers, stream, needed_class, target, needed):
        """Read chunks of `stream` until the buffer of `needed_class` holds `target` jets, or, once it holds the
        `needed` ones, until the end of the current pass over the files (jets are read again only when needed)."""
        first_pass = stream.passes
        while len(buffers[needed_class]) < target:
            if stream.passes > first_pass + 1 and len(buffers[needed_class]) == 0:
                raise DataError(f"the files of group {stream.group!r} hold no jets of class "
                                f"{self.scheme.classes[needed_class].name!r}")
            raw = stream.next_chunk(new_pass=len(buffers[needed_class]) < needed)
            if raw is None:
                return
            room = [self.buffer_size - len(buffer) for buffer in buffers]
            chunk, labels = task_jets(raw, self.scheme, self.report, room, stream.rng)
            for k, buffer in enumerate(buffers):
                rows = np.flatnonzero(labels == k)
                if len(rows):
                    buffer.add(chunk.take(rows))

    def batches(self, epoch=0, start_batch=0):
        """Yield the batches of `epoch` from batch number `start_batch` on (module docstring)."""
        for parts, positions, labels in self.batch_jets(epoch, start_batch):
            yield build_batch(parts, positions, labels, self.feature_set, self.num_particles, self.report)

    def batch_jets(self, epoch=0, start_batch=0, read=read_chunks):
        """(clean JetChunks of the jets drawn per class, their positions in the batch, class labels) of each
        batch of `epoch` from `start_batch` on (for `build_batch`); files are read with
        `read(path, columns, label_branches, chunk_size)`."""
        rng = np.random.default_rng((self.seed, epoch))
        sequence = self.class_sequence(rng)
        streams = {g: GroupStream(g, files, np.random.default_rng((self.seed, epoch, i)),
                                  lambda path: self._read(path, read), self.pool_size, self.report)
                   for i, (g, files) in enumerate(sorted(self.groups.items()))}
        buffers = [ClassBuffer() for _ in self.scheme.classes]
        for b in range(self.batches_per_epoch):
            labels = sequence[b * self.batch_size:(b + 1) * self.batch_size]
            parts, order = [], []
            for k, c in enumerate(self.scheme.classes):
                n = int(np.sum(labels == k))
                if n == 0:
                    continue
                if len(buffers[k]) < n:
                    self._fill(buffers, streams[c.file_group], k, max(n, self.buffer_size // 2), n)
                parts.append(buffers[k].draw(n, rng))
                order.append(np.flatnonzero(labels == k))
            if b < start_batch:
                continue
            yield parts, order, labels


def build_batch(parts, positions, labels, feature_set, num_particles, report):
    """The padded batch (features.to_batch) of jets drawn as JetChunks `parts` that sit at `positions`."""
    chunk = concatenate_chunks(parts).take(np.argsort(np.concatenate(positions)))
    return feats.to_batch(chunk, labels, feature_set, num_particles, report)


def natural_batches(groups, scheme, feature_set, num_particles, batch_size, chunk_size=4096,
                    skip_bad_files=False, report=None, column_map=DEFAULT_COLUMNS):
    """Every jet of the task's classes in `groups`' files once, in file-name order, as batches of
    `batch_size` (the last one smaller); original class frequencies, no shuffling."""
    report = DataReport() if report is None else report
    columns = feats.required_particle_columns(feature_set)
    files = sorted((f for fs in groups.values() for f in fs), key=str)
    rest = None
    for path in files:
        chunks = read_chunks(path, columns, scheme.label_branches, chunk_size, column_map)
        for raw in iter_file_chunks(chunks, path, skip_bad_files, report):
            chunk = task_jets(raw, scheme, report)[0]
            merged = chunk if rest is None else concatenate_chunks([rest, chunk])
            start = 0
            while len(merged) - start >= batch_size:
                yield _natural_batch(merged.take(np.arange(start, start + batch_size)), scheme, feature_set,
                                     num_particles, report)
                start += batch_size
            rest = merged.take(np.arange(start, len(merged)))
    if rest is not None and len(rest):
        yield _natural_batch(rest, scheme, feature_set, num_particles, report)


def _natural_batch(chunk, scheme, feature_set, num_particles, report):
    return feats.to_batch(chunk, scheme.class_index(chunk.raw_label), feature_set, num_particles, report)
