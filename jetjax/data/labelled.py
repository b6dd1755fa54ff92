"""Labelled subsets for data-efficiency studies (config `data.label_budget`): the first N jets of a seeded,
class-stratified order of the training split, and training epochs drawn from those jets only.

The order is a function of the seed and the split's files, never of N:
- classes: position i of the order belongs to the class that Webster's (Sainte-Lague) divisor method gives
  the (i+1)-th seat on the scheme's target fractions, so the first N positions hold n_k(N) jets of class k,
  within about one jet of N x fraction_k; a divisor method is house-monotone (n_k never falls as N grows);
- jets of one class: the training files of the class's file group (`JetClass.file_group`, where the sampler
  draws it from too) in a seeded random order of all the split's files, and within a file its rows in the
  order of a seeded hash of (seed, file name, row); the j-th class-k position holds the j-th usable class-k
  jet met in that order (`features.clean` drops unusable jets, counted in the report).
So the subset of (N, seed) is the first N jets of one fixed order: a larger budget contains the smaller one,
and the same (N, seed) gives the same jets whatever the chunk size or the folder the files sit in. Files are
read in the seeded order, skipping those of groups whose classes are complete, until every class has its n_k
jets: a small budget reads few files (JetClass-II: one file per group for 10^3 jets); the selected jets stay
in memory (cleaned, before padding).
"""
import zlib
from pathlib import Path

import numpy as np

from jetjax.data import features as feats
from jetjax.data.classes import ALL_FILES
from jetjax.data.chunks import DEFAULT_COLUMNS, DataError, DataReport, concatenate_chunks
from jetjax.data.readers import file_group, read_chunks
from jetjax.data.sampler import iter_file_chunks, task_jets

ORDER_KEY = "label_order_key"
"""Jet column (uint64) the selection adds: the jet's hash key within its file."""


def class_order(num_jets, fractions):
    """Class index of each of the first `num_jets` positions of the order: seat i+1 of Webster's method, the
    smallest (j + 1/2) / fraction_k over classes k and their next seat j (ties to the lower class index)."""
    fractions = np.asarray(fractions, np.float64)
    seats = np.arange(num_jets, dtype=np.float64) + 0.5
    priority = (seats[None, :] / fractions[:, None]).ravel()
    classes = np.repeat(np.arange(len(fractions)), num_jets)
    return classes[np.lexsort((classes, priority))[:num_jets]]


def _splitmix64(x):
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def row_keys(seed, file_name, rows):
    """uint64 hash keys of the `rows` (0-based row numbers) of the file called `file_name` for `seed`."""
    file_key = _splitmix64(np.uint64(seed % 2 ** 64) ^ _splitmix64(np.uint64(zlib.crc32(file_name.encode()))))
    with np.errstate(over="ignore"):
        return _splitmix64(np.asarray(rows, np.uint64) + file_key * np.uint64(0x9E3779B97F4A7C15))


def _lowest(chunk, n):
    """The `n` jets of `chunk` with the smallest order keys, in key order."""
    order = np.argsort(chunk.jets[ORDER_KEY], kind="stable")[:n]
    return chunk.take(order)


def select_labelled(groups, scheme, num_jets, seed, feature_set, chunk_size=4096, skip_bad_files=False,
                    report=None, column_map=DEFAULT_COLUMNS):
    """The first `num_jets` jets of the order of the module docstring over the files of `groups`
    ({group: [files]}): (cleaned JetChunk in order, class index of each jet). A class whose file group has
    too few jets is an error naming the class."""
    if num_jets < 1 or int(num_jets) != num_jets:
        raise ValueError(f"config.data.label_budget={num_jets!r}: give a whole number of labelled jets (>= 1), "
                         "or 0 for every jet of the training split")
    num_jets, report = int(num_jets), DataReport() if report is None else report
    classes = class_order(num_jets, scheme.target_fractions)
    needed = np.bincount(classes, minlength=scheme.num_classes)
    files = sorted((f for fs in groups.values() for f in fs), key=str)
    found = [[] for _ in scheme.classes]
    columns = feats.required_particle_columns(feature_set)
    for index in np.random.default_rng(seed).permutation(len(files)):
        missing = needed - np.array([sum(len(c) for c in chunks) for chunks in found])
        if not missing.any():
            break
        path, row, best = files[index], 0, [None] * scheme.num_classes
        wanted = [k for k in np.flatnonzero(missing) if scheme.classes[k].file_group in (ALL_FILES, file_group(path))]
        if not wanted:
            continue
        chunks = read_chunks(path, columns, scheme.label_branches, chunk_size, column_map)
        for raw in iter_file_chunks(chunks, path, skip_bad_files, report):
            raw.jets[ORDER_KEY] = row_keys(seed, path.name, row + np.arange(len(raw)))
            row += len(raw)
            chunk, labels = task_jets(raw, scheme, report)
            for k in wanted:
                jets = chunk.take(np.flatnonzero(labels == k))
                merged = jets if best[k] is None else concatenate_chunks([best[k], jets])
                best[k] = _lowest(merged, missing[k])
        for k, chunk in enumerate(best):
            if chunk is not None and len(chunk):
                found[k].append(chunk)
    have = np.array([sum(len(c) for c in chunks) for chunks in found])
    short = [f"{c.name} needs {n}, the split has {h}" for c, n, h in zip(scheme.classes, needed, have) if h < n]
    if short:
        files = [Path(p) for paths in groups.values() for p in paths]
        folders = sorted({str(p.parent) for p in files})
        raise DataError(f"config.data.label_budget={num_jets} asks for more jets than the training split holds "
                        f"({'; '.join(short)}) in the {len(files)} files read under {', '.join(folders)} (chosen by "
                        f"config.data.root, or made by config.data.synthetic_jets_per_group when data.root is "
                        f"unset; the classes by config.data.scheme / data.task); lower the budget or add training "
                        f"files")
    per_class = concatenate_chunks([c for chunks in found for c in chunks])
    first_of_class = np.concatenate([[0], np.cumsum(needed)[:-1]])
    rank = np.zeros(num_jets, np.int64)
    for k in range(scheme.num_classes):
        rank[classes == k] = np.arange(needed[k])
    return per_class.take(first_of_class[classes] + rank), classes.astype(np.int32)


class LabelledSampler:
    """Training epochs of `epoch_size` jets drawn from a labelled subset only (`select_labelled`): an epoch is
    successive random permutations of the subset (every jet once per pass; a subset smaller than the epoch
    is passed over several times), cut into batches. An epoch is a function of (seed, epoch), so
    `batches(epoch, start_batch)` resumes at any batch without reading anything."""

    def __init__(self, chunk, labels, feature_set, num_particles, batch_size, epoch_size, seed, report=None):
        if epoch_size < batch_size:
            raise ValueError(f"epoch_size {epoch_size} is smaller than batch_size {batch_size}")
        self.chunk, self.labels, self.feature_set, self.num_particles = chunk, labels, feature_set, num_particles
        self.batch_size, self.epoch_size, self.seed = batch_size, epoch_size, seed
        self.report = DataReport() if report is None else report

    @property
    def batches_per_epoch(self):
        return self.epoch_size // self.batch_size

    def epoch_rows(self, epoch):
        """Subset row of every jet of `epoch`, in draw order."""
        rng = np.random.default_rng((self.seed, epoch))
        total, size = self.batches_per_epoch * self.batch_size, len(self.labels)
        return np.concatenate([rng.permutation(size) for _ in range(-(-total // size))])[:total]

    def each_jet_once(self):
        """The subset in its labelled order, every jet once, in batches of `batch_size` (the last may be short)."""
        for start in range(0, len(self.labels), self.batch_size):
            rows = np.arange(start, min(start + self.batch_size, len(self.labels)))
            yield feats.to_batch(self.chunk.take(rows), self.labels[rows], self.feature_set, self.num_particles,
                                 self.report)

    def batches(self, epoch=0, start_batch=0):
        rows = self.epoch_rows(epoch)
        for b in range(start_batch, self.batches_per_epoch):
            batch_rows = rows[b * self.batch_size:(b + 1) * self.batch_size]
            yield feats.to_batch(self.chunk.take(batch_rows), self.labels[batch_rows], self.feature_set,
                                 self.num_particles, self.report)
