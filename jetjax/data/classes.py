"""Label schemes as data: which stored labels make each class, the class order, and the sampling targets.

A scheme maps the raw label of a jet (JetClass-II `jet_label`, the index of the hot `label_*` branch of
JetClass v1, Top Landscape's `is_signal_new`, the quark-gluon `y`) to a class index; raw labels that belong
to no class are excluded (the readers count them in the data report). Class order is the order of the
study's tables and of the model's logits.

Machine names (for files, configs and table keys) and titles (for tables):
JetClass-II 7-class task: bb 'bb', tauhtaue 'tau_h tau_e', tauhtaum 'tau_h tau_mu', tauhtauh
'tau_h tau_h', qqb_bcs 'qqb/bcs', qq 'qq', qcd 'QCD'.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

ALL_FILES = "*"
"""`JetClass.file_group` of a class whose jets may be in any file of the split (a user's own files)."""


@dataclass(frozen=True)
class JetClass:
    name: str
    """Machine name: lower case, no spaces (config values, file names, JSON keys)."""
    title: str
    """Name printed in tables."""
    raw_labels: tuple
    """Stored labels merged into this class."""
    target_fraction: float
    """Fraction of this class in a sampled (training / validation) epoch."""
    bucket: str
    """Sampling bucket the class belongs to (the study's hierarchy: bucket first, then class)."""
    file_group: str
    """File-name prefix of the files that hold this class's jets (e.g. Res2P for Res2P_0000.parquet), or
    ALL_FILES."""


@dataclass(frozen=True)
class LabelScheme:
    name: str
    classes: tuple
    label_branches: tuple = ()
    """One-hot branches (JetClass v1); empty when the files hold an integer `jet_label` (JetClass-II)."""
    background: Optional[str] = None
    """Name of the background class of the working-point tables and ROC curves (None: no such tables)."""

    @property
    def names(self):
        return tuple(c.name for c in self.classes)

    @property
    def titles(self):
        return tuple(c.title for c in self.classes)

    @property
    def file_groups(self):
        return tuple(dict.fromkeys(c.file_group for c in self.classes))

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def target_fractions(self):
        return np.array([c.target_fraction for c in self.classes])

    def bucket_fractions(self):
        """Bucket name -> summed target fraction of its classes."""
        totals = {}
        for c in self.classes:
            totals[c.bucket] = totals.get(c.bucket, 0.0) + c.target_fraction
        return totals

    def lookup_table(self):
        """int32 array: raw label -> class index, -1 for excluded labels."""
        size = 1 + max(max(c.raw_labels) for c in self.classes)
        table = np.full(size, -1, np.int32)
        for index, c in enumerate(self.classes):
            table[list(c.raw_labels)] = index
        return table

    def class_index(self, raw_labels):
        """Class index of each raw label (-1 = excluded, also for labels beyond the table)."""
        table = self.lookup_table()
        raw_labels = np.asarray(raw_labels)
        inside = (raw_labels >= 0) & (raw_labels < len(table))
        return np.where(inside, table[np.clip(raw_labels, 0, len(table) - 1)], -1).astype(np.int32)


JETCLASS2_QCD_LABELS = tuple(range(161, 188))
"""JetClass-II QCD sub-labels (by b/c/s parton content), merged into one class."""

JETCLASS2_7 = LabelScheme(
    name="jetclass2_7",
    classes=(
        JetClass("bb", "bb", (0,), 1 / 9, "signal", "Res2P"),
        JetClass("tauhtaue", "tau_h tau_e", (12,), 1 / 27, "signal", "Res2P"),
        JetClass("tauhtaum", "tau_h tau_mu", (13,), 1 / 27, "signal", "Res2P"),
        JetClass("tauhtauh", "tau_h tau_h", (14,), 1 / 27, "signal", "Res2P"),
        JetClass("qqb_bcs", "qqb/bcs", (70, 127), 1 / 3, "top", "Res34P"),
        JetClass("qq", "qq", (3,), 1 / 9, "signal", "Res2P"),
        JetClass("qcd", "QCD", JETCLASS2_QCD_LABELS, 1 / 3, "qcd", "QCD"),
    ),
    background="qcd",
)
"""The study's JetClass-II 7-way task: 1/3 signal (bb 1/9, qq 1/9, each di-tau channel 1/27), 1/3
qqb + bcs, 1/3 QCD. All other JetClass-II labels are excluded."""

_V1 = {"QCD": "ZJetsToNuNu", "Hbb": "HToBB", "Hcc": "HToCC", "Hgg": "HToGG", "H4q": "HToWW4Q",
       "Hqql": "HToWW2Q1L", "Zqq": "ZToQQ", "Wqq": "WToQQ", "Tbqq": "TTBar", "Tbl": "TTBarLep"}
JETCLASS_10 = LabelScheme(
    name="jetclass_10",
    classes=tuple(JetClass(n.lower(), n, (i,), 1 / 10, n, group) for i, (n, group) in enumerate(_V1.items())),
    label_branches=tuple(f"label_{n}" for n in _V1),
    background="qcd",
)
"""JetClass (v1): 10 balanced classes, raw label = index of the hot `label_*` branch."""

TOP_LANDSCAPE = LabelScheme(
    name="top_landscape",
    classes=(JetClass("qcd", "QCD", (0,), 1 / 2, "qcd", "TopLandscape"),
             JetClass("top", "top", (1,), 1 / 2, "top", "TopLandscape")),
    background="qcd",
)
"""Top Landscape benchmark: raw label = is_signal_new (0 QCD, 1 top), balanced epochs; both classes are in
every file, and every HDF5 file is in the one group TopLandscape (readers.TOP_LANDSCAPE_GROUP)."""

QUARK_GLUON = LabelScheme(
    name="quark_gluon",
    classes=(JetClass("gluon", "gluon", (0,), 1 / 2, "gluon", "QG_jets"),
             JetClass("quark", "quark", (1,), 1 / 2, "quark", "QG_jets")),
    background="gluon",
)
"""energyflow quark-gluon benchmark, the Pythia uds sample (QG_jets.npz, QG_jets_1.npz ... QG_jets_19.npz): raw
label = y (0 gluon, 1 quark), balanced epochs. The other samples (QG_jets_withbc_*, QG_jets_herwig_*) are
other file groups, so they are never mixed into this one."""

SCHEMES = {s.name: s for s in (JETCLASS2_7, JETCLASS_10, TOP_LANDSCAPE, QUARK_GLUON)}


def get_scheme(name):
    """The label scheme called `name` (a config value); a LabelScheme is returned as it is."""
    if isinstance(name, LabelScheme):
        return name
    if name not in SCHEMES:
        raise KeyError(f"unknown label scheme {name!r}; choose one of {sorted(SCHEMES)}, or define the task in "
                       "config.data.task")
    return SCHEMES[name]


def task_scheme(data):
    """The label scheme of a data config: the task of `data.task` when it names classes (called `data.scheme`),
    else the built-in scheme `data.scheme`."""
    task = data.get("task")
    if not task or not task.classes:
        return get_scheme(data.scheme)
    if data.scheme in SCHEMES:
        raise ValueError(f"config.data.task defines classes, but config.data.scheme={data.scheme!r} names a built-in "
                         "scheme: give the task its own name in config.data.scheme")
    return scheme_from_task(data.scheme, **task)


def scheme_from_task(name, classes, labels=(), label_branches=(), fractions=(), file_groups=(), titles=(),
                     background=None):
    """A LabelScheme from the values of config.data.task (configs/base.py): class names; per class its stored
    labels (an int or a tuple of ints) or, instead, one one-hot branch per class; optional sampling fractions
    (default equal), file-name prefixes (default: any file holds any class), titles (default: the names); the
    background class of the working-point tables."""
    n = len(classes)

    def per_class(values, key, default):
        if not values:
            return (default,) * n
        if len(values) != n:
            raise ValueError(f"config.data.task.{key} has {len(values)} entries for {n} classes {tuple(classes)}")
        return tuple(values)

    if bool(labels) == bool(label_branches):
        raise ValueError("config.data.task needs either labels (the stored labels of each class) or label_branches "
                         "(one one-hot branch per class), not both")
    if label_branches:
        per_class(label_branches, "label_branches", None)
    raw = per_class(labels, "labels", None) if labels else tuple((k,) for k in range(n))
    raw = tuple(tuple(int(x) for x in (r if isinstance(r, (tuple, list)) else (r,))) for r in raw)
    if any(min(r) < 0 for r in raw) or len({x for r in raw for x in r}) != sum(map(len, raw)):
        raise ValueError(f"config.data.task.labels {raw}: labels must be non-negative, each in one class only")
    fractions = per_class(fractions, "fractions", 1.0 / n)
    if min(fractions) <= 0:
        raise ValueError(f"config.data.task.fractions {fractions} must all be positive")
    if background is not None and background not in classes:
        raise ValueError(f"config.data.task.background={background!r} is not one of the classes {tuple(classes)}")
    members = zip(classes, per_class(titles, "titles", None), raw, fractions,
                  per_class(file_groups, "file_groups", ALL_FILES))
    return LabelScheme(name, tuple(JetClass(c, title or c, r, float(f), c, group) for c, title, r, f, group in members),
                       tuple(label_branches), background)
