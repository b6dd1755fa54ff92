"""Read jets from JetClass-II parquet / ROOT files, JetClass v1 ROOT files and the public Top Landscape (.h5)
and quark-gluon (.npz) benchmark files (benchmarks.py), chunk by chunk.

A chunk (`JetChunk`) holds the needed columns of a range of rows as flat numpy arrays: jagged particle
columns flattened with per-jet `counts`, jet columns, and the raw label (JetClass-II `jet_label`, or the
index of the hot JetClass v1 `label_*` branch; -1 when no branch is hot). Only the requested columns
are read, and never a whole file at once (parquet: record batches; ROOT: uproot iterate; HDF5: row
ranges; npz: X streamed out of the archive).

File discovery from a root folder (`discover_files`):
- split folders if present: `root/{train,val,test}/` or JetClass v1's `train_100M/ val_5M/ test_20M/`;
- otherwise flat JetClass-II names `{Res2P,Res34P,QCD}_NNNN.parquet|root`, split by file index
  (`JETCLASS2_SPLIT_RANGES`, data/README.md), and Top Landscape's `train.h5`, `val.h5`, `test.h5` by name;
- an explicit list of files or glob patterns overrides discovery;
- `file_format` (config `data.format`) keeps one format: "parquet", "root", "h5", "npz" or "any" (e.g. a
  folder that holds the original ROOT files and parquet copies of them must not be read twice).
Files are grouped by name prefix (the text before `_NNNN`), which `classes.JetClass.file_group` names;
every HDF5 file is in the one group `TOP_LANDSCAPE_GROUP` (Top Landscape files hold both classes).
"""
import glob
import re
from collections import Counter
from pathlib import Path

import numpy as np

from jetjax.data import benchmarks
from jetjax.data.chunks import (CONFIG_COLUMNS, DEFAULT_COLUMNS, JET_COLUMNS, LABEL_COLUMN, TARGET, DataError,
                               JetChunk, MissingColumnError, needed_columns, target_values)
from jetjax.data.features import FEATURE_SETS, KIN_TARGET_ONLY_COLUMNS, required_particle_columns

HDF5_SUFFIXES = (".h5", ".hdf5")
FORMATS = (".parquet", ".root") + HDF5_SUFFIXES + (".npz",)
FILE_FORMATS = {"parquet": (".parquet",), "root": (".root",), "h5": HDF5_SUFFIXES, "npz": (".npz",), "any": FORMATS}
"""Values of config `data.format`: the file suffixes each reads."""
TOP_LANDSCAPE_GROUP = "TopLandscape"

SPLIT_FOLDERS = {"train": ("train", "train_100M"), "val": ("val", "val_5M"), "test": ("test", "test_20M")}
JETCLASS2_SPLIT_RANGES = {
    "Res2P": {"train": (0, 199), "val": (200, 249), "test": (250, 299)},
    "Res34P": {"train": (0, 859), "val": (860, 1074), "test": (1075, 1289)},
    "QCD": {"train": (0, 279), "val": (280, 349), "test": (350, 419)},
}
"""JetClass-II file-index ranges (inclusive) of each split, per file group."""
_NUMBERED = re.compile(r"^(?P<group>.+?)_(?P<index>\d+)$")


def _stored_columns(path, particle_columns, label_branches, column_map, available):
    """{canonical: stored name} of the columns to read; a MissingColumnError names what the file lacks."""
    stored = {n: column_map.stored(n) for n in needed_columns(particle_columns, label_branches, column_map)}
    missing = [n for n, s in stored.items() if s not in available]
    if missing:
        raise _missing_column_error(path, missing, stored, available, column_map)
    return stored


def _missing_column_error(path, missing, stored, available, column_map):
    """The error for columns a file lacks: each stored name with its config key, and the feature sets that
    would work with this file."""
    keys = {**{n: f"config.data.columns.{n}" for n in CONFIG_COLUMNS},
            **dict.fromkeys(column_map.target, "config.regression.target")}
    named = ", ".join(f"{stored[n]!r} ({keys[n]})" if n in keys else repr(stored[n]) for n in missing)
    workable = []
    for feature_set in FEATURE_SETS:
        lacking = [c for c in required_particle_columns(feature_set) if column_map.stored(c) not in available]
        if feature_set == "kin" and set(lacking) <= set(KIN_TARGET_ONLY_COLUMNS) and lacking:
            empty = ", ".join(f"config.data.columns.{c}=''" for c in lacking)
            workable.append(f"'kin' with {empty} (kin reads them only for the masked-particle pid target)")
        elif not lacking:
            workable.append(repr(feature_set))
    advice = (f"its particle columns work with config.data.feature_set = {' or '.join(workable)}" if workable else
              "its particle columns suit no feature set")
    return MissingColumnError(f"{path}: missing column(s) {named} needed by the data config (the file has "
                              f"{len(available)} columns). Map each to the file's name for it in config.data.columns "
                              f"(jet columns: all four '' to use the constituent sum); {advice}")


def _raw_labels(columns, label_branches, num_jets):
    """Raw label per jet; -1 for every jet when the files have no label (a ColumnMap maps it to '': predict)."""
    if not label_branches and LABEL_COLUMN not in columns:
        return np.full(num_jets, -1, np.int64)
    if not label_branches:
        return np.asarray(columns[LABEL_COLUMN], np.int64)
    onehot = np.stack([np.asarray(columns[b]) for b in label_branches], axis=-1)
    return np.where(onehot.max(axis=-1) > 0, np.argmax(onehot, axis=-1), -1)


def _make_chunk(path, flat, counts, columns, label_branches, particle_columns, target=()):
    """JetChunk from flat particle arrays (with their per-column counts) and per-jet columns; requested
    particle columns the files lack (ColumnMap: kin's particle-ID columns) are zero; with `target` columns
    (ColumnMap.target) the chunk carries the regression target as jet column TARGET."""
    names = list(flat)
    for name in names[1:]:
        if not np.array_equal(counts[name], counts[names[0]]):
            raise DataError(f"{path}: column {name!r} has a different number of particles per jet than "
                            f"{names[0]!r}; the file is inconsistent")
    size = len(flat[names[0]])
    flat.update({n: np.zeros(size, np.int32 if n == "part_charge" else bool)
                 for n in particle_columns if n not in flat})
    jets = {k: np.asarray(columns[k]) for k in JET_COLUMNS if k in columns}
    if target:
        jets[TARGET] = target_values(columns, target)
    jet_counts = np.asarray(counts[names[0]], np.int64)
    return JetChunk(str(path), jet_counts, flat, jets, _raw_labels(columns, label_branches, len(jet_counts)))


def read_parquet_chunks(path, particle_columns, label_branches=(), chunk_size=4096, column_map=DEFAULT_COLUMNS):
    """Yield JetChunks of a parquet file, `chunk_size` rows at a time, reading only the needed columns (their
    stored names from `column_map`)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: cannot read as parquet ({error})") from error
    stored = _stored_columns(path, particle_columns, label_branches, column_map, parquet.schema_arrow.names)
    for record_batch in parquet.iter_batches(batch_size=chunk_size, columns=list(dict.fromkeys(stored.values()))):
        flat, counts, scalars = {}, {}, {}
        for name, stored_name in stored.items():
            array = record_batch.column(stored_name)
            if name in particle_columns:
                offsets = array.offsets.to_numpy()
                flat[name] = array.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
                counts[name] = np.diff(offsets)
            else:
                scalars[name] = array.to_numpy(zero_copy_only=False)
        yield _make_chunk(path, flat, counts, scalars, label_branches, particle_columns, column_map.target)


def read_root_chunks(path, particle_columns, label_branches=(), chunk_size=4096, column_map=DEFAULT_COLUMNS):
    """Yield JetChunks of the tree `column_map.tree` of a ROOT file, `chunk_size` entries at a time (uproot)."""
    import awkward as ak
    import uproot

    try:
        tree = uproot.open(path)[column_map.tree]
    except Exception as error:  # uproot raises several types for unreadable files
        raise DataError(f"{path}: cannot read tree {column_map.tree!r} as ROOT ({error}; config.data.tree names "
                        f"the tree)") from error
    stored = _stored_columns(path, particle_columns, label_branches, column_map, tree.keys())
    jagged = {n: s for n, s in stored.items() if n in particle_columns}
    for arrays in tree.iterate(list(dict.fromkeys(stored.values())), step_size=chunk_size, library="ak"):
        flat = {n: ak.to_numpy(ak.flatten(arrays[s])) for n, s in jagged.items()}
        counts = {n: ak.to_numpy(ak.num(arrays[s])) for n, s in jagged.items()}
        scalars = {n: ak.to_numpy(arrays[s]) for n, s in stored.items() if n not in jagged}
        yield _make_chunk(path, flat, counts, scalars, label_branches, particle_columns, column_map.target)


def read_chunks(path, particle_columns, label_branches=(), chunk_size=4096, column_map=DEFAULT_COLUMNS):
    """JetChunks of a .parquet, .root, Top Landscape .h5 / .hdf5 or quark-gluon .npz file; read errors name
    the file. `column_map` maps the columns of parquet and ROOT files (the benchmark formats have fixed
    layouts)."""
    readers = {".parquet": read_parquet_chunks, ".root": read_root_chunks, ".npz": benchmarks.read_quark_gluon_chunks,
               **dict.fromkeys(HDF5_SUFFIXES, benchmarks.read_top_landscape_chunks)}
    suffix = Path(path).suffix
    if suffix not in readers:
        raise DataError(f"{path}: unknown file format {suffix!r}; expected one of {FORMATS}")
    mapped = {"column_map": column_map} if suffix in (".parquet", ".root") else {}
    if column_map.target and not mapped:
        raise DataError(f"{path}: a regression target (config.regression.target) is read from a jet column of "
                        f"parquet or ROOT files; {suffix} files of the benchmark formats have none")
    chunks = readers[suffix](path, particle_columns, label_branches, chunk_size, **mapped)
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except DataError:
            raise
        except Exception as error:  # a corrupt page or basket deep inside the reader
            raise DataError(f"{path}: read failed ({type(error).__name__}: {error})") from error
        yield chunk


def file_group(path):
    """Name prefix before `_NNNN` (Res2P_0012.parquet -> Res2P, QG_jets_7.npz -> QG_jets), else the whole
    stem; TOP_LANDSCAPE_GROUP for every HDF5 file (train.h5, val.h5 and test.h5 hold the same classes)."""
    if Path(path).suffix in HDF5_SUFFIXES:
        return TOP_LANDSCAPE_GROUP
    match = _NUMBERED.match(Path(path).name.split(".")[0])
    return match["group"] if match else Path(path).name.split(".")[0]


def _file_index(path):
    match = _NUMBERED.match(Path(path).name.split(".")[0])
    return int(match["index"]) if match else None


def _data_files(folder):
    return sorted(p for p in Path(folder).iterdir() if p.suffix in FORMATS and p.is_file())


def _keep_format(paths, file_format, where):
    """The paths of `file_format`; an error naming the other formats found when none is left."""
    if file_format not in FILE_FORMATS:
        raise ValueError(f"config.data.format={file_format!r} is not one of {tuple(FILE_FORMATS)}")
    kept = [p for p in paths if p.suffix in FILE_FORMATS[file_format]]
    if paths and not kept:
        found = Counter(p.suffix for p in paths)
        raise FileNotFoundError(
            f"no {file_format} files {where} (found {', '.join(f'{n} {s}' for s, n in sorted(found.items()))}): "
            f"set config.data.format to one of {', '.join(map(repr, FILE_FORMATS))}")
    return kept


def _expand(files):
    paths = []
    for pattern in files:
        matches = sorted(glob.glob(str(pattern)))
        if not matches:
            raise FileNotFoundError(f"no file matches {pattern!r} (from the explicit file list of the data config)")
        paths += [Path(m) for m in matches]
    return paths


def discover_files(root=None, split="train", files=None, file_format="any"):
    """Files of `split` in `file_format`, grouped by file group: {group: [paths sorted by name]}.

    `files` (paths or glob patterns) overrides discovery; else `root` is searched as described in the
    module docstring.
    """
    if split not in SPLIT_FOLDERS:
        raise KeyError(f"unknown split {split!r}; choose one of {tuple(SPLIT_FOLDERS)}")
    if files:
        paths = _keep_format(_expand(files), file_format, "in the explicit file list")
    else:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data root {root} is not a folder; set config.data.root to the dataset folder")
        folders = [root / name for name in SPLIT_FOLDERS[split] if (root / name).is_dir()]
        has_split_folders = any((root / n).is_dir() for names in SPLIT_FOLDERS.values() for n in names)
        if folders:
            paths = [p for folder in folders for p in _data_files(folder)]
        elif has_split_folders:
            paths = []
        else:
            paths = [p for p in _data_files(root) if _in_flat_split(p, split)]
        paths = _keep_format(paths, file_format, f"for the {split} split under {root}")
        if not paths:
            raise FileNotFoundError(
                f"no {split} files under {root} (config.data.root, or the synthetic jets of "
                f"config.data.synthetic_jets_per_group when data.root is unset): expected {'/ or '.join(SPLIT_FOLDERS[split])}/ with "
                f"{' / '.join('*' + s for s in FORMATS)} files, or flat JetClass-II files named like "
                f"Res2P_0000.parquet, or Top Landscape's {split}.h5")
    groups = {}
    for path in paths:
        groups.setdefault(file_group(path), []).append(path)
    return groups


def _in_flat_split(path, split):
    """Whether a file of a folder without split folders is in `split`: Top Landscape files by name
    (train.h5), JetClass-II files by index range."""
    if path.suffix in HDF5_SUFFIXES:
        return path.stem == split
    ranges = JETCLASS2_SPLIT_RANGES.get(file_group(path))
    index = _file_index(path)
    return ranges is not None and index is not None and ranges[split][0] <= index <= ranges[split][1]
