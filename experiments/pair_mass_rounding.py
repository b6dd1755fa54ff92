"""How much a ParT's scores depend on float rounding, with the reference pair mass and the stable one
(`model.pair_mass`, jetjax.physics.massless_pair_mass2).

The same jets are scored in ways that are mathematically equal but round differently: jit against op by op,
the four-vectors moved by one float32 rounding step (random sign), and the ONNX (ONNX Runtime) and StableHLO
exports against jit. Printed per pair-mass mode: the per-jet largest score difference (median, p90, p99, max)
and how many jets change their predicted class. Then the pair features themselves, float32 under jit against
float64 (numpy, the same formulas): the largest error of each feature by kind of pair (a particle with
itself, near-collinear pairs with dR < 1e-3, the others), which says which inputs are rounding noise.

Model and jets: by default the reference ParT of ../shared (the weaver v0.4.17 weights, 10 classes, P = 64) on
the real jets there (24 JetClass + 100 JetClass-II jets); `--run DIR --data ROOT` a trained classifier run on
the first `--jets` test jets of a data folder (e.g. Pythia jets: python -m jetjax.data.simulate).

    python experiments/pair_mass_rounding.py [--run runs/x --data runs/bench_jets --jets 2400]
"""
import argparse
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jetjax import build, export, physics
from jetjax.data import chunks, features, pipeline, readers
from jetjax.models.convert import convert_state_dict, load_state_dict
from jetjax.models.part import ParT

SHARED = Path(__file__).resolve().parents[2] / "shared"
SLOTS = 64


def shared_jets():
    """(features, vectors, mask) of the real jets of ../shared at SLOTS slots."""
    with np.load(SHARED / "reference" / "part_weaver_v0417_kin.npz") as data:
        f, v, m = (data[k][..., :SLOTS] for k in ("input/features", "input/vectors", "input/mask"))
    reference = np.transpose(f, (0, 2, 1)), np.transpose(v, (0, 2, 1)), m[:, 0] > 0
    report = chunks.DataReport()
    read = readers.read_chunks(SHARED / "data" / "jetclass2_example" / "JetClassII_example.parquet",
                               features.required_particle_columns("kin"))
    chunk = features.clean(chunks.concatenate_chunks(read), report)
    batch = features.to_batch(chunk, np.zeros(len(chunk), np.int32), "kin", SLOTS, report)
    return tuple(np.concatenate([a, batch[k]]).astype(t) for a, k, t in
                 zip(reference, ("features", "vectors", "mask"), (np.float32, np.float32, bool)))


def reference_model():
    variables = convert_state_dict(load_state_dict(SHARED / "reference" / "part_weaver_v0417_kin.npz",
                                                   prefix="param/"))
    return {"num_classes": 10}, variables, shared_jets()


def run_model(run, data, jets):
    config, encoder, variables = export.load_run(run)
    config.data.root = data
    batches = pipeline.test_batches(**build.data_settings(config, run), batch_size=jets)
    batch = next(iter(batches))
    settings = {k: getattr(encoder, k) for k in ("num_classes", "embed_dims", "pair_embed_dims", "num_heads",
                                                   "num_layers", "num_cls_layers", "ffn", "ffn_ratio",
                                                   "layer_scale_init", "head", "head_hidden")}
    return settings, variables, (batch["features"], batch["vectors"], batch["mask"])


def one_rounding_step(vectors, seed=0):
    """Every four-vector component moved by one float32 rounding step up or down at random."""
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], vectors.shape).astype(np.float32)
    return np.where(vectors != 0, np.nextafter(vectors, np.float32(np.inf) * signs), vectors).astype(np.float32)


def exported_scores(infer, jets, format, folder):
    specs = export.input_specs(jets[0].shape[1], jets[0].shape[2])
    path = Path(folder) / f"model.{format}"
    if format == "onnx":
        import onnxruntime

        export.write_onnx(infer, specs, ("scores",), path, {})
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, dict(zip(export.INPUT_NAMES, jets)))[0]
    export.write_stablehlo(infer, specs, path)
    return np.asarray(export.load_stablehlo(path)(*jets)[0])


def spread(a, b):
    """(per-jet largest |a - b| quantiles, predicted-class changes)."""
    per_jet = np.max(np.abs(np.asarray(a, np.float64) - b), axis=1)
    return {"median": np.median(per_jet), "p90": np.quantile(per_jet, 0.9), "p99": np.quantile(per_jet, 0.99),
            "max": per_jet.max(), "class_changes": int(np.sum(np.argmax(a, 1) != np.argmax(b, 1)))}


def score_spreads(settings, variables, jets, pair_mass, formats):
    encoder = ParT(**settings, pair_mass=pair_mass)
    infer = export.inference_function(encoder, variables)
    jit = np.asarray(jax.jit(infer)(*jets)[0])
    rows = {"op by op vs jit": spread(np.asarray(infer(*jets)[0]), jit),
            "one rounding step of the inputs": spread(np.asarray(jax.jit(infer)(
                jets[0], one_rounding_step(jets[1]), jets[2])[0]), jit)}
    with tempfile.TemporaryDirectory() as folder:
        for format in formats:
            rows[f"{format} vs jit"] = spread(exported_scores(infer, jets, format, folder), jit)
    return rows


def feature_errors(vectors, mask, pair_mass):
    """Largest |float32 (jit) - float64| of each pair feature by kind of pair (real pairs only)."""
    v = vectors
    f32 = np.asarray(jax.jit(lambda x: physics.pair_features(x[:, :, None], x[:, None, :],
                                                             pair_mass=pair_mass))(jnp.asarray(v)))
    v64 = v.astype(np.float64)
    f64 = physics.pair_features(v64[:, :, None], v64[:, None, :], pair_mass=pair_mass)
    real = mask[:, :, None] & mask[:, None, :]
    kin = physics.pair_kinematics(v64)
    dr = physics.delta_r(kin[:, :, None, 1], kin[:, :, None, 2], kin[:, None, :, 1], kin[:, None, :, 2])
    self_pair = np.eye(v.shape[1], dtype=bool)[None] & real
    kinds = {"self pairs": self_pair, "dR < 1e-3": real & ~self_pair & (dr < 1e-3),
             "other pairs": real & ~self_pair & (dr >= 1e-3)}
    error = np.abs(f32 - f64)
    return {kind: {"pairs": int(where.sum()), **{name: float(error[where][:, i].max()) if where.any() else 0.0
                                                 for i, name in enumerate(("ln kT", "ln z", "ln dR", "ln m2"))}}
            for kind, where in kinds.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained classifier workdir (default: the reference ParT of ../shared)")
    parser.add_argument("--data", help="with --run: the data folder whose test jets are scored")
    parser.add_argument("--jets", type=int, default=2400)
    parser.add_argument("--formats", nargs="*", default=["onnx", "stablehlo"], choices=["onnx", "stablehlo"])
    args = parser.parse_args()
    settings, variables, jets = run_model(args.run, args.data, args.jets) if args.run else reference_model()
    photons = float(np.mean(np.abs(physics.mass2(jets[1].astype(np.float64)))[jets[2]]
                            < 1e-6 * jets[1][..., 3].astype(np.float64)[jets[2]] ** 2))
    print(f"{len(jets[2])} jets, {int(jets[2].sum())} particles, {photons:.0%} of them with |m^2| < 1e-6 E^2")
    print("| pair mass | comparison | median | p90 | p99 | max | class changes |\n|---|---|---:|---:|---:|---:|---:|")
    for pair_mass in physics.PAIR_MASSES:
        for name, row in score_spreads(settings, variables, jets, pair_mass, args.formats).items():
            print(f"| {pair_mass} | {name} | {row['median']:.1e} | {row['p90']:.1e} | {row['p99']:.1e} | "
                  f"{row['max']:.1e} | {row['class_changes']} |")
            print(json.dumps({"pair_mass": pair_mass, "comparison": name, **row}), flush=True)
    print("\nPair features, float32 (jit) against float64: largest error by kind of pair")
    print("| pair mass | pairs | count | ln kT | ln z | ln dR | ln m2 |\n|---|---|---:|---:|---:|---:|---:|")
    for pair_mass in physics.PAIR_MASSES:
        for kind, row in feature_errors(jets[1], jets[2], pair_mass).items():
            print(f"| {pair_mass} | {kind} | {row['pairs']} | " + " | ".join(
                f"{row[n]:.1e}" for n in ("ln kT", "ln z", "ln dR", "ln m2")) + " |")


if __name__ == "__main__":
    main()
