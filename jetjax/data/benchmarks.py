"""Readers of the two public benchmark formats, chunk by chunk, into the project's `JetChunk`s (readers.py).

Both formats store zero-padded particle slots: an all-zero slot is padding and is dropped; every other slot
is a particle (a broken one is repaired or dropped, and counted, by `features.clean` as for JetClass).
Jets have no stored jet columns: the jet four-vector is the sum of the constituents (`features.jet_vectors`).
The raw label is the stored integer label (schemes `top_landscape`, `quark_gluon` in classes.py).

Top Landscape (Kasieczka et al., SciPost Phys. 7 (2019) 014): `train.h5`, `val.h5`, `test.h5` (1.2M / 400k /
400k jets), each a pandas HDFStore with key "table" (pandas' "table" layout: the PyTables table
/table/table) of 806 columns, in this order: E_i, PX_i, PY_i, PZ_i for i = 0..199 (GeV; the 200 leading
constituents in decreasing pT, zero-padded), truthE, truthPX, truthPY, truthPZ (the top quark), ttv (which
file) and is_signal_new (1 top, 0 QCD). They are read with pandas `HDFStore.select(start=, stop=)`, which
reads just those rows in both pandas layouts ("table", and "fixed", where it slices /table/block*_values)
and knows the column names (h5py would have to unpickle them from pandas' attributes): 13 MB of file per
chunk of 4096 jets. The files hold four-vectors only: the `kin` feature set. `kin` also reads part_charge
and the photon / electron / muon flags, used only for the masked-particle `pid` target, which a model with
`kin` inputs never predicts (jetjax/objectives/masked.py): the reader gives them as zero (the target is meaningless and
unused there); `kinpid` and `full` fail, naming the file and the columns the format lacks.

Quark-gluon (energyflow's `QG_jets*.npz`, Komiske, Metodiev, Thaler, JHEP 01 (2019) 121; 20 files of 100k
jets per sample): X (N, M, 4) = (pt [GeV], rapidity y, phi, PDG id), zero-padded to the file's largest
multiplicity M, and y (1 quark, 0 gluon). An npz is a zip archive whose members `np.load(mmap_mode=...)`
cannot map: it loads X whole (N x M x 4 x 8 bytes, 445 MB for 100k jets and M = 139). This reader streams
X.npy out of the archive instead, `chunk_size` jets at a time, compressed (savez_compressed) or not: for
M = 139, 18 MB of X per chunk of 4096 jets and about 110 MB of working memory in all.
Four-vectors: px = pt cos phi, py = pt sin phi, pz = mT sinh y, E = mT cosh y with mT = sqrt(pt^2 + m^2)
and the mass m of the PDG id (energyflow's `pids2ms` convention: Pythia 8 masses, `PARTICLES`), so that y
is the particle's true rapidity. (ParT's conversion script treats y as the pseudorapidity of a massless
particle instead.) Charge and type flags come from the PDG id as in the JetClass-II files
(`simulate.pid_flags`), so `kin` and `kinpid` work; `full` fails (no impact parameters). A PDG id outside
`PARTICLES` is an error naming the file (energyflow would give it mass 0 silently).
"""
import zipfile

import numpy as np
from numpy.lib import format as npy_format

from jetjax.data.features import KIN_TARGET_ONLY_COLUMNS, required_particle_columns
from jetjax.data.chunks import PARTICLE_VECTOR_COLUMNS, DataError, JetChunk, MissingColumnError
from jetjax.data.simulate import pid_flags

TOP_LANDSCAPE_KEY = "table"
TOP_LANDSCAPE_LABEL = "is_signal_new"
TOP_LANDSCAPE_COMPONENTS = ("PX", "PY", "PZ", "E")
"""Column prefixes of PARTICLE_VECTOR_COLUMNS (px, py, pz, E) in the Top Landscape files."""

PARTICLES = {22: (0.0, 0), 11: (5.11e-4, -1), 13: (0.10566, -1), 111: (0.13498, 0), 211: (0.13957, 1),
             130: (0.49761, 0), 310: (0.49761, 0), 321: (0.49368, 1), 2112: (0.93957, 0), 2212: (0.93827, 1),
             3122: (1.11568, 0), 3112: (1.19745, -1), 3222: (1.18937, 1), 3312: (1.32171, -1),
             3322: (1.31486, 0), 3334: (1.67245, -1)}
"""|PDG id| -> (mass in GeV, charge of the particle with the positive id), masses as energyflow's `pids2ms`:
the photon, e, mu, and the light hadrons that can be final (or long-lived) in the generator record."""
_CODES = np.array(sorted(PARTICLES))
_MASSES = np.array([PARTICLES[c][0] for c in _CODES])
_CHARGES = np.array([PARTICLES[c][1] for c in _CODES])


def _check_feature_columns(path, particle_columns, format_name, derived, feature_sets):
    """MissingColumnError naming the columns the format lacks, unless the request is within the columns of the
    last of `feature_sets` (`derived`: the columns the format really gives)."""
    if set(particle_columns) <= set(required_particle_columns(feature_sets[-1])):
        return
    missing = [c for c in particle_columns if c not in derived]
    raise MissingColumnError(
        f"{path}: the {format_name} format has no column(s) {', '.join(map(repr, missing))} that the data "
        f"config's feature set needs; these files work with config.data.feature_set = "
        f"{' or '.join(map(repr, feature_sets))}")


def _check_no_label_branches(path, label_branches, label):
    if label_branches:
        raise MissingColumnError(f"{path}: the label scheme reads one-hot branches {list(label_branches)}, but "
                                 f"this file stores its label in {label!r}: use its own scheme (classes.SCHEMES)")


def _flatten_slots(slots):
    """Flat real particles (n, C) and per-jet counts of zero-padded (jets, slots, C) arrays."""
    real = np.any(slots != 0, axis=-1)
    return slots[real], real.sum(axis=1)


def _integer_labels(path, values, column):
    labels = np.asarray(values)
    if not np.array_equal(labels, np.round(labels)):
        raise DataError(f"{path}: the labels in {column!r} are not integers")
    return labels.astype(np.int64)


def read_top_landscape_chunks(path, particle_columns, label_branches=(), chunk_size=4096):
    """Yield JetChunks of a Top Landscape HDF5 file, `chunk_size` rows at a time (module docstring)."""
    try:
        import pandas as pd
    except ImportError as error:
        raise ImportError("reading Top Landscape .h5 files needs pandas and PyTables: pip install "
                          "'jetjax[formats]'") from error

    _check_feature_columns(path, particle_columns, "Top Landscape", PARTICLE_VECTOR_COLUMNS, ("kin",))
    _check_no_label_branches(path, label_branches, TOP_LANDSCAPE_LABEL)
    try:
        store = pd.HDFStore(path, mode="r")
    except Exception as error:  # PyTables raises several types for unreadable files
        raise DataError(f"{path}: cannot open as HDF5 ({error})") from error
    with store:
        if TOP_LANDSCAPE_KEY not in store:
            raise DataError(f"{path}: no key {TOP_LANDSCAPE_KEY!r} (keys {store.keys()}): not a Top Landscape file")
        component_columns = _top_landscape_columns(path, store.select(TOP_LANDSCAPE_KEY, start=0, stop=0).columns)
        start = 0
        while True:
            frame = store.select(TOP_LANDSCAPE_KEY, start=start, stop=start + chunk_size)
            if not len(frame):
                return
            start += len(frame)
            slots = np.stack([frame[names].to_numpy(np.float32) for names in component_columns], axis=-1)
            flat, counts = _flatten_slots(slots)
            particles = dict(zip(PARTICLE_VECTOR_COLUMNS, flat.T))
            particles.update({c: np.zeros(len(flat), np.int32 if c == "part_charge" else bool)
                              for c in KIN_TARGET_ONLY_COLUMNS if c in particle_columns})
            yield JetChunk(str(path), counts, particles, {},
                           _integer_labels(path, frame[TOP_LANDSCAPE_LABEL].to_numpy(), TOP_LANDSCAPE_LABEL))


def _top_landscape_columns(path, columns):
    """[[PX_0..PX_n-1], [PY_..], [PZ_..], [E_..]] for the n constituent slots of the file; checks the label."""
    slots = sum(1 for c in columns if c.startswith("E_") and c[2:].isdigit())
    wanted = [[f"{prefix}_{i}" for i in range(slots)] for prefix in TOP_LANDSCAPE_COMPONENTS]
    missing = [c for names in wanted for c in names if c not in columns]
    missing += [TOP_LANDSCAPE_LABEL] if TOP_LANDSCAPE_LABEL not in columns else []
    if not slots or missing:
        raise MissingColumnError(f"{path}: not the Top Landscape layout: missing column(s) "
                                 f"{', '.join(map(repr, missing or ['E_0']))} (the file has {len(columns)} columns)")
    return wanted


def read_quark_gluon_chunks(path, particle_columns, label_branches=(), chunk_size=4096):
    """Yield JetChunks of an energyflow quark-gluon npz file, `chunk_size` jets at a time (module docstring)."""
    _check_feature_columns(path, particle_columns, "quark-gluon", required_particle_columns("kinpid"),
                           ("kin", "kinpid"))
    _check_no_label_branches(path, label_branches, "y")
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: cannot open as npz ({error})") from error
    with archive:
        members = archive.namelist()
        missing = [name for name in ("X", "y") if f"{name}.npy" not in members]
        if missing:
            raise MissingColumnError(f"{path}: missing array(s) {missing} of the energyflow layout (X, y); "
                                     f"the file has {[m.removesuffix('.npy') for m in members]}")
        with archive.open("y.npy") as stream:
            labels = _integer_labels(path, npy_format.read_array(stream), "y")
        with archive.open("X.npy") as stream:
            shape, dtype = _npy_header(path, stream)
            if len(shape) != 3 or shape[2] != 4 or shape[0] != len(labels):
                raise DataError(f"{path}: X has shape {shape}, expected (N, M, 4) with N = len(y) = {len(labels)}")
            row_bytes = shape[1] * 4 * dtype.itemsize
            for start in range(0, shape[0], chunk_size):
                rows = min(chunk_size, shape[0] - start)
                block = np.frombuffer(_read_exactly(path, stream, rows * row_bytes), dtype).reshape(rows, -1, 4)
                yield _quark_gluon_chunk(path, block, labels[start:start + rows], particle_columns)


def _npy_header(path, stream):
    """(shape, dtype) of the C-ordered numeric array whose .npy header starts `stream`."""
    version = npy_format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise DataError(f"{path}: X.npy has .npy format version {version}; expected 1.0 or 2.0 (numpy.savez)")
    read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(stream)
    if fortran_order or dtype.hasobject:
        raise DataError(f"{path}: X must be a C-ordered numeric array (energyflow's padded layout), not "
                        f"{'Fortran-ordered' if fortran_order else 'an object array'}")
    return shape, dtype


def _read_exactly(path, stream, size):
    data = stream.read(size)
    if len(data) != size:
        raise DataError(f"{path}: X.npy ends early ({len(data)} of {size} bytes of a chunk)")
    return data


def _quark_gluon_chunk(path, block, labels, particle_columns):
    """JetChunk of (jets, M, 4) (pt, y, phi, pid) slots (module docstring)."""
    flat, counts = _flatten_slots(block.astype(np.float64, copy=False))
    pt, rapidity, phi, pid = flat.T
    mass, charge = particle_mass_and_charge(path, pid)
    transverse_mass = np.sqrt(pt ** 2 + mass ** 2)
    vectors = np.stack([pt * np.cos(phi), pt * np.sin(phi), transverse_mass * np.sinh(rapidity),
                        transverse_mass * np.cosh(rapidity)], axis=-1).astype(np.float32)
    pdg_id = pid.astype(np.int32)
    derived = {**dict(zip(PARTICLE_VECTOR_COLUMNS, vectors.T)), "part_charge": charge,
               **pid_flags(pdg_id, charge)}
    return JetChunk(str(path), counts, {c: derived[c] for c in particle_columns}, {}, labels)


def particle_mass_and_charge(path, pid):
    """Mass (GeV) and integer charge of each PDG id (float array from the file); unknown ids name the file."""
    if not np.array_equal(pid, np.round(pid)):
        raise DataError(f"{path}: the PDG ids (X[..., 3]) are not integers")
    code = np.abs(pid).astype(np.int64)
    index = np.clip(np.searchsorted(_CODES, code), 0, len(_CODES) - 1)
    unknown = _CODES[index] != code
    if unknown.any():
        raise DataError(f"{path}: PDG id(s) {sorted(set(pid[unknown].astype(int).tolist()))} are not in "
                        f"jetjax.data.benchmarks.PARTICLES (mass and charge unknown); add them there")
    return _MASSES[index], (np.sign(pid) * _CHARGES[index]).astype(np.int32)
