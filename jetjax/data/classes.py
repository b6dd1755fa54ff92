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

import numpy as np


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
    """File-name prefix of the files that hold this class's jets (e.g. Res2P for Res2P_0000.parquet)."""


@dataclass(frozen=True)
class LabelScheme:
    name: str
    classes: tuple
    label_branches: tuple = ()
    """One-hot branches (JetClass v1); empty when the files hold an integer `jet_label` (JetClass-II)."""

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
)
"""The study's JetClass-II 7-way task: 1/3 signal (bb 1/9, qq 1/9, each di-tau channel 1/27), 1/3
qqb + bcs, 1/3 QCD. All other JetClass-II labels are excluded."""

_V1 = {"QCD": "ZJetsToNuNu", "Hbb": "HToBB", "Hcc": "HToCC", "Hgg": "HToGG", "H4q": "HToWW4Q",
       "Hqql": "HToWW2Q1L", "Zqq": "ZToQQ", "Wqq": "WToQQ", "Tbqq": "TTBar", "Tbl": "TTBarLep"}
JETCLASS_10 = LabelScheme(
    name="jetclass_10",
    classes=tuple(JetClass(n.lower(), n, (i,), 1 / 10, n, group) for i, (n, group) in enumerate(_V1.items())),
    label_branches=tuple(f"label_{n}" for n in _V1),
)
"""JetClass (v1): 10 balanced classes, raw label = index of the hot `label_*` branch."""

TOP_LANDSCAPE = LabelScheme(
    name="top_landscape",
    classes=(JetClass("qcd", "QCD", (0,), 1 / 2, "qcd", "TopLandscape"),
             JetClass("top", "top", (1,), 1 / 2, "top", "TopLandscape")),
)
"""Top Landscape benchmark: raw label = is_signal_new (0 QCD, 1 top), balanced epochs; both classes are in
every file, and every HDF5 file is in the one group TopLandscape (readers.TOP_LANDSCAPE_GROUP)."""

QUARK_GLUON = LabelScheme(
    name="quark_gluon",
    classes=(JetClass("gluon", "gluon", (0,), 1 / 2, "gluon", "QG_jets"),
             JetClass("quark", "quark", (1,), 1 / 2, "quark", "QG_jets")),
)
"""energyflow quark-gluon benchmark, the Pythia uds sample (QG_jets.npz, QG_jets_1.npz ... QG_jets_19.npz): raw
label = y (0 gluon, 1 quark), balanced epochs. The other samples (QG_jets_withbc_*, QG_jets_herwig_*) are
other file groups, so they are never mixed into this one."""

SCHEMES = {s.name: s for s in (JETCLASS2_7, JETCLASS_10, TOP_LANDSCAPE, QUARK_GLUON)}


def get_scheme(name):
    """The label scheme called `name` (a config value)."""
    if name not in SCHEMES:
        raise KeyError(f"unknown label scheme {name!r}; choose one of {sorted(SCHEMES)}")
    return SCHEMES[name]
