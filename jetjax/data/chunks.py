"""What the readers deliver and how they report: the column names the pipeline reads ("canonical"), where a
user's files store them (`ColumnMap`, config `data.columns`), a chunk of jets read from one file (`JetChunk`),
the errors that name a file (`DataError`), and the counts of what the data stage cut, repaired, dropped or
read again (`DataReport`). The readers of each file format are in readers.py and benchmarks.py.
"""
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from configs.defaults import COLUMNS

PARTICLE_VECTOR_COLUMNS = ("part_px", "part_py", "part_pz", "part_energy")
JET_COLUMNS = ("jet_pt", "jet_eta", "jet_phi", "jet_energy")
LABEL_COLUMN = "jet_label"
TARGET = "target"
"""The jet column of a chunk, and the batch key, holding a regression task's target (float64 in chunks)."""
CONFIG_COLUMNS = COLUMNS
"""Every column a data config can map (config.data.columns): canonical name -> the files' name."""
ROOT_TREE = "tree"


@dataclass(frozen=True)
class ColumnMap:
    """Where the columns the pipeline reads (the names above and in features.py, "canonical") are stored in a
    user's parquet / ROOT files (config `data.columns`, `data.tree`): canonical name -> stored name. '' means
    the files lack it: the four jet columns together (the jet is then the sum of its constituents), or, for
    the `kin` feature set, the particle-ID columns it reads only for the masked-particle `pid` target (read as
    zero, as in the Top Landscape files). Chunks always carry the canonical names."""
    renamed: tuple = ()
    """(canonical, stored) pairs; other columns are stored under their canonical name."""
    tree: str = ROOT_TREE
    target: tuple = ()
    """A regression task's jet column, or (numerator, denominator) columns of a ratio (config
    `regression.target`): read as stored, each chunk carries their value as its jet column TARGET."""

    def stored(self, name):
        return dict(self.renamed).get(name, name)


DEFAULT_COLUMNS = ColumnMap()


class DataError(ValueError):
    """Bad input data: the message names the file and what is wrong."""


class MissingColumnError(DataError):
    """A file lacks a column the data config needs (never skipped: the config and the data disagree)."""


COUNTERS = {
    "particles_truncated": ("cut", "particles beyond the data.num_particles hardest of their jet (the slot cut, as "
                                   "in ParT); the jet four-vector still sums all of them"),
    "particles_energy_raised_to_momentum": ("repaired", "particles stored with E below |p|, mostly massless ones "
                                            "whose float32 components round E a few 1e-8 below |p|; E set to |p| "
                                            "(mass 0, not imaginary). Nothing is dropped"),
    "values_nonfinite_zeroed": ("repaired", "non-finite particle values other than the four-vector, set to 0"),
    "particles_nonfinite_dropped": ("dropped", "particles with a non-finite four-vector component"),
    "particles_nonpositive_pt_dropped": ("dropped", "particles with pT <= 0"),
    "jets_empty_dropped": ("dropped", "jets with no particle (left)"),
    "jets_bad_target_dropped": ("dropped", "jets whose regression target (config regression.target) is not finite, "
                                           "e.g. a ratio with a zero denominator"),
    "jets_bad_kinematics_dropped": ("dropped", "jets whose four-vector is non-finite or has pT <= 0 or E <= 0"),
    "jets_read_again": ("drawn again", "jets read a second time within one epoch or validation sample: the "
                                       "sample asks for more jets of a file group than its files hold"),
}
"""Each counter of a DataReport: (kind: cut | repaired | dropped | drawn again, what it counts)."""


@dataclass
class DataReport:
    """What the data stage excluded, repaired, dropped or skipped. Printable; `as_dict()` for JSON (with the
    meaning of each counter, COUNTERS)."""
    counts: Counter = field(default_factory=Counter)
    excluded_labels: Counter = field(default_factory=Counter)
    skipped_files: list = field(default_factory=list)

    def count(self, what, n=1):
        if n:
            self.counts[what] += int(n)

    def exclude(self, raw_labels):
        """Count jets whose raw label belongs to no class of the task."""
        labels, n = np.unique(raw_labels, return_counts=True)
        self.excluded_labels.update({int(k): int(v) for k, v in zip(labels, n)})

    def skip_file(self, path, reason):
        self.skipped_files.append((str(path), str(reason)))

    def as_dict(self):
        return {"counts": dict(sorted(self.counts.items())),
                "meaning": {k: f"{COUNTERS[k][0]}: {COUNTERS[k][1]}" for k in sorted(self.counts) if k in COUNTERS},
                "excluded_labels": {str(k): v for k, v in sorted(self.excluded_labels.items())},
                "excluded_jets": sum(self.excluded_labels.values()),
                "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped_files]}

    def __str__(self):
        d = self.as_dict()
        lines = ["data report:"] + [f"  {k}: {v}" + (f" ({COUNTERS[k][0]})" if k in COUNTERS else "")
                                    for k, v in d["counts"].items()]
        lines.append(f"  excluded jets (labels outside the task): {d['excluded_jets']}"
                     + (f" by label {d['excluded_labels']}" if d["excluded_labels"] else ""))
        lines += [f"  skipped file {p}: {r}" for p, r in self.skipped_files]
        return "\n".join(lines)


@dataclass
class JetChunk:
    """Rows of one file: flat particle columns (`counts` particles per jet), jet columns, raw labels."""
    source: str
    counts: np.ndarray
    particles: dict
    jets: dict
    raw_label: np.ndarray

    def __len__(self):
        return len(self.counts)

    def offsets(self):
        return np.concatenate([[0], np.cumsum(self.counts)])

    def particle_vectors(self):
        """(N, 4) px, py, pz, E of all particles."""
        return np.stack([self.particles[c] for c in PARTICLE_VECTOR_COLUMNS], axis=-1)

    def take(self, rows):
        """The jets at positions `rows` (in that order) with their particles."""
        rows = np.asarray(rows, np.int64)
        counts = self.counts[rows]
        starts = self.offsets()[rows]
        index = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
        return JetChunk(self.source, counts, {k: v[index] for k, v in self.particles.items()},
                        {k: v[rows] for k, v in self.jets.items()}, self.raw_label[rows])

    def filter_particles(self, keep):
        """Keep the particles where `keep` (flat boolean) is true."""
        jet_index = np.repeat(np.arange(len(self.counts)), self.counts)
        counts = np.bincount(jet_index[keep], minlength=len(self.counts))
        return JetChunk(self.source, counts, {k: v[keep] for k, v in self.particles.items()}, self.jets,
                        self.raw_label)

    def permute_particles(self, order):
        """Reorder the flat particles (an order that keeps each jet's particles in its own range)."""
        return JetChunk(self.source, self.counts, {k: v[order] for k, v in self.particles.items()}, self.jets,
                        self.raw_label)


def target_values(columns, target):
    """A regression target per jet (float64) from the jet `columns` read: the column `target[0]`, divided by
    `target[1]` when there are two."""
    values = np.asarray(columns[target[0]], np.float64)
    if len(target) == 1:
        return values
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero denominator: not finite, dropped and counted
        return values / np.asarray(columns[target[1]], np.float64)


def concatenate_chunks(chunks, source="mixed"):
    """One JetChunk with the jets of several (same columns), in order."""
    chunks = list(chunks)
    return JetChunk(source, np.concatenate([c.counts for c in chunks]),
                    {k: np.concatenate([c.particles[k] for c in chunks]) for k in chunks[0].particles},
                    {k: np.concatenate([c.jets[k] for c in chunks]) for k in chunks[0].jets},
                    np.concatenate([c.raw_label for c in chunks]))


def needed_columns(particle_columns, label_branches=(), column_map=DEFAULT_COLUMNS):
    """Columns to read (canonical names): the particle columns, the jet four-vector columns, the label
    column(s) and a regression target's column(s); those `column_map` says the files lack are left out."""
    names = tuple(dict.fromkeys(tuple(particle_columns) + JET_COLUMNS + (tuple(label_branches) or (LABEL_COLUMN,))
                                + column_map.target))
    return tuple(n for n in names if column_map.stored(n))
