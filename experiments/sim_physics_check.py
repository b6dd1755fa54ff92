"""Physics sanity of the Pythia 8 + FastJet simulation on a few hundred jets per class, and its speed.

    python experiments/sim_physics_check.py [--jets-per-class 300] [--out DIR] [--workers 1]

Prints, each with what it should be: the soft-drop mass peak of top jets (near 173 GeV), X -> bb and
X -> qq soft-drop mass over the generated X mass (near 1), the QCD soft-drop mass spectrum (falling),
the di-tau jets' multiplicity (low) and their lepton content (the expected electron / muon), the mean
|d0| of charged particles in X -> bb jets versus QCD jets (larger), and the generation speed in jets per
CPU second (one core) per class.
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from jetjax.data import simulate as sim

COLUMNS = ["jet_label", "jet_sdmass", "jet_nparticles", "aux_genpart_mass", "part_px", "part_py", "part_d0val",
           "part_d0err", "part_charge", "part_isElectron", "part_isMuon"]
TRACK_PT_MIN = 1.0
"""GeV: softer tracks have d0 resolutions of a millimetre and more, which would swamp the mean |d0|."""


def load(out):
    """The simulated jets of all splits as {column: list per jet}."""
    tables = [pq.read_table(f, columns=COLUMNS).to_pydict() for f in sorted(Path(out).glob("*/*.parquet"))]
    return {k: sum((t[k] for t in tables), []) for k in COLUMNS}


def histogram_peak(values, lo, hi, width):
    """Centre of the most populated bin."""
    counts, edges = np.histogram(values, bins=np.arange(lo, hi + width, width))
    return edges[np.argmax(counts)] + width / 2


def mean_abs_d0(jets, rows):
    """Mean |d0| (mm) and mean |d0|/d0err over the charged constituents with pT > TRACK_PT_MIN of the jets."""
    def tracks(i):
        pt = np.hypot(jets["part_px"][i], jets["part_py"][i])
        return (np.asarray(jets["part_charge"][i]) != 0) & (pt > TRACK_PT_MIN)
    d0 = np.concatenate([np.asarray(jets["part_d0val"][i])[tracks(i)] for i in rows])
    err = np.concatenate([np.asarray(jets["part_d0err"][i])[tracks(i)] for i in rows])
    return np.abs(d0).mean(), np.abs(d0 / err).mean()


def report(jets, summary):
    label = np.asarray(jets["jet_label"])
    sdmass = np.asarray(jets["jet_sdmass"])
    x_mass = np.asarray([m[0] if m else np.nan for m in jets["aux_genpart_mass"]])  # QCD jets may have none
    rows = {c: np.flatnonzero(label == n) for c, n in sim.CLASS_LABELS.items()}
    rows["QCD"] = np.flatnonzero(label >= 161)
    rows["top"] = np.concatenate([rows["qqb"], rows["bcs"]])
    print("jets per class:", {c: len(r) for c, r in rows.items()})

    top = sdmass[rows["top"]]
    print(f"top (qqb+bcs) soft-drop mass: peak {histogram_peak(top, 0, 300, 10):.0f} GeV (10 GeV bins), "
          f"median in 120-220 GeV {np.median(top[(top > 120) & (top < 220)]):.1f} GeV, "
          f"fraction in 140-200 GeV {np.mean((top > 140) & (top < 200)):.2f}   [expect peak near 173]")
    print("generated X mass of X->bb jets, 10/50/90% quantiles (GeV):",
          np.round(np.quantile(x_mass[rows["bb"]], [0.1, 0.5, 0.9])).tolist())
    for c in ("bb", "qq"):
        ratio = sdmass[rows[c]] / x_mass[rows[c]]
        print(f"X->{c}: soft-drop mass / generated X mass: peak {histogram_peak(ratio, 0, 1.5, 0.05):.3f}, "
              f"median {np.median(ratio):.3f}, fraction within 15% {np.mean(np.abs(ratio - 1) < 0.15):.2f}; "
              f"corr(sdmass, m_X) {np.corrcoef(sdmass[rows[c]], x_mass[rows[c]])[0, 1]:.2f}   [expect near 1]")
    counts, edges = np.histogram(sdmass[rows["QCD"]], bins=[0, 40, 80, 120, 160, 200, 300])
    print("QCD soft-drop mass counts per bin", dict(zip([f"{a:.0f}-{b:.0f}" for a, b in zip(edges, edges[1:])],
                                                        counts.tolist())), "  [expect falling]")

    nparticles = np.asarray(jets["jet_nparticles"])
    print("mean constituents:", {c: round(float(nparticles[rows[c]].mean()), 1)
                                 for c in ("tauhtaue", "tauhtaum", "tauhtauh", "bb", "qq", "top", "QCD")},
          "  [expect di-tau lowest]")
    for c in ("tauhtaue", "tauhtaum", "tauhtauh"):
        electron = np.mean([any(jets["part_isElectron"][i]) for i in rows[c]])
        muon = np.mean([any(jets["part_isMuon"][i]) for i in rows[c]])
        print(f"{c}: fraction of jets with an electron {electron:.2f}, with a muon {muon:.2f}")
    print("   [expect tau_h tau_e: electron ~1, tau_h tau_mu: muon ~1, tau_h tau_h: both ~0]")
    for c in ("bb", "qq", "top", "QCD"):
        d0, significance = mean_abs_d0(jets, rows[c])
        print(f"{c}: charged constituents with pT > {TRACK_PT_MIN:g} GeV: mean |d0| {1000 * d0:.1f} um, "
              f"mean |d0|/err {significance:.2f}")
    print("   [expect bb (and top) larger than qq and QCD]")
    print("generation speed, jets per CPU second on one core:",
          {c: round(s, 2) for c, s in sim.generation_speed(summary).items()})
    print("generator counters:", summary["stats"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jets-per-class", type=int, default=300)
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        summary = sim.simulate(out, args.jets_per_class, args.seed, args.workers)
        report(load(out), summary)


if __name__ == "__main__":
    main()
