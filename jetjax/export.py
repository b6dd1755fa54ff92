"""Export a trained run for inference outside JAX: StableHLO, ONNX, or a weaver ParticleTransformer state_dict.

    python -m jetjax.export --run runs/<run> --format stablehlo|onnx|weaver --out FILE [--outputs scores,z]

`export(run, format, out, ...)` does the same from Python. The exported function is the encoder of the run's
best checkpoint in eval mode (running BatchNorm statistics, no dropout), called through the public
`ParT.apply(variables, features, vectors, mask)` with the weights baked in:

  features (batch, P, C) float32   the run's feature set: channels in `FEATURE_SETS` order, standardised
  vectors  (batch, P, 4) float32   px, py, pz, E in GeV, after rescaling the jet to pT = 500 GeV
  mask     (batch, P) bool         True = real particle; real particles first, in decreasing pT, zero padding
  ->  scores (batch, K) float32 softmax probabilities (classifier runs), z (batch, E) float32 (on request)

P is the run's `data.num_particles` and the batch is dynamic. Inputs are what `jetjax.data.features.to_batch`
makes. `FILE.json` beside the export (for ONNX also the model's metadata entry "jetjax") spells this out:
names, shapes, dtypes, each channel with its definition and standardisation, the class names (`signature`).

StableHLO: `jax.export` with a symbolic batch dimension, lowered for CPU and CUDA (`--platforms`) and
serialised; `load_stablehlo(FILE)` runs it back in JAX without jetjax's model code. XLA compiles it as it
compiles jetjax under `jit` (on CPU the scores agreed bit for bit).

ONNX: jax2onnx (the `export` extra), which lowers the jaxpr primitive by primitive to standard ONNX
operators and handles everything ParT needs: the gathers of the pair triangle (Gather), the attention
einsums (Einsum, Gemm), the exact GELU (opset 20 Gelu), atan2 and the floored modulo of the azimuth
difference, the key mask (Where), LayerNorm (LayerNormalization), the running-statistics BatchNorm as
arithmetic. The other maintained route, jax2tf + tf2onnx, is closed: jax2tf in JAX 0.10 always emits native
serialisation (an XlaCallModule op holding StableHLO), which tf2onnx cannot convert, and needs TensorFlow.
jax2onnx 0.13-0.17.1 pass JAX symbolic dimensions to onnx_ir in a few lowerings (lax.rem, the azimuth wrap),
which breaks a dynamic batch; `_named_symbolic_dims` works around that during the conversion. ONNX Runtime
evaluates the graph op by op, as PyTorch does, and agrees with jetjax run op by op and under jit alike
(physics.mass2 keeps XLA's fused multiply-adds out of the rounding noise of ln m^2; README, "Fidelity").

weaver: `jetjax.models.convert.to_state_dict` (weaver's architectures: the reference ParT and the options of its
versions 2 and 3) as .pt (torch) or .npz.
"""
import argparse
import contextlib
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from jetjax import build, checkpoint, finetune, regression
from jetjax.data.classes import task_scheme
from jetjax.data.features import FEATURE_SETS, JET_PT_GEV, STANDARDISATION
from jetjax.models.convert import WEAVER_VERSIONS, save_state_dict, to_state_dict

FORMATS = ("stablehlo", "onnx", "weaver")
INPUT_NAMES = ("features", "vectors", "mask")
OUTPUT_NAMES = ("scores", "z")
ONNX_OPSET = 20
"""The lowest that holds the graph (jax2onnx writes the exact GELU as opset 20's Gelu); ONNX Runtime >= 1.17."""
STABLEHLO_PLATFORMS = ("cpu", "cuda")

CHANNEL_DEFINITIONS = {
    "pt_log": "ln pT", "e_log": "ln E", "logptrel": "ln(pT / jet pT)", "logerel": "ln(E / jet E)",
    "deltaR": "sqrt(deta^2 + dphi^2)", "deta": "sign(jet eta) (eta - jet eta)",
    "dphi": "phi - jet phi wrapped to [-pi, pi)", "charge": "electric charge",
    "isChargedHadron": "1 if a charged hadron", "isNeutralHadron": "1 if a neutral hadron",
    "isPhoton": "1 if a photon", "isElectron": "1 if an electron", "isMuon": "1 if a muon",
    "d0": "tanh(d0val)", "d0err": "d0err", "dz": "tanh(dzval)", "dzerr": "dzerr"}
"""Each input channel as `jetjax.data.features` computes it (angles about the jet axis, pseudorapidities)."""


def load_run(run):
    """(config, encoder, variables) of the workdir `run`: the encoder module (`jetjax.models.ParT`) of the
    run's objective and its parameters and BatchNorm statistics from the best checkpoint."""
    restored = checkpoint.best_checkpoint(run, "--run")
    config = ml_collections.ConfigDict(json.loads((Path(run) / "config.json").read_text()))
    if regression.target_columns(config):
        raise ValueError(f"{run} is a regression run (config.regression.target={config.regression.target!r}); export "
                         "writes classifiers and encoders: export its encoder from the pretraining run, or use "
                         "mode 'predict' for its predictions")
    encoder = build.build_model(config).encoder
    variables = {"params": restored["params"]["encoder"],
                 "batch_stats": restored.get("batch_stats", {}).get("encoder", {})}
    if encoder.lora_rank:  # a LoRA fine-tuning: its updates folded into the weights, a plain ParT
        variables["params"] = finetune.merged_lora(variables["params"], encoder.lora_alpha / encoder.lora_rank)
        encoder = encoder.clone(lora_rank=0)
    return config, encoder, jax.tree.map(jnp.asarray, variables)


def inference_function(encoder, variables, outputs=("scores",)):
    """(features, vectors, mask) -> tuple of the requested outputs, eval mode, `variables` as constants."""
    def infer(features, vectors, mask):
        out = encoder.apply(variables, features, vectors, mask)
        values = {"z": out["z"]}
        if "logits" in out:
            values["scores"] = jax.nn.softmax(out["logits"], axis=-1)
        return tuple(values[name] for name in outputs)

    return infer


def input_specs(slots, channels):
    """Abstract inputs with a symbolic batch dimension 'batch', `slots` particles of `channels` features."""
    batch, = jax.export.symbolic_shape("batch")
    return (jax.ShapeDtypeStruct((batch, slots, channels), jnp.float32),
            jax.ShapeDtypeStruct((batch, slots, 4), jnp.float32), jax.ShapeDtypeStruct((batch, slots), jnp.bool_))


def _channel(name):
    entry = {"name": name, "definition": CHANNEL_DEFINITIONS[name]}
    if name in STANDARDISATION:
        center, scale, low, high = STANDARDISATION[name]
        shifted = f"x - {center}" if center >= 0 else f"x + {-center}"
        entry["standardised"] = f"clip(({shifted}) * {scale}, {low}, {high})"
    return entry


def signature(config, outputs, encoder):
    """JSON-ready description of the exported function's inputs and outputs."""
    slots, names = config.data.num_particles, FEATURE_SETS[config.data.feature_set]
    output_specs = {"scores": {"name": "scores", "shape": ["batch", encoder.num_classes], "dtype": "float32",
                               "classes": list(task_scheme(config.data).names)},
                    "z": {"name": "z", "shape": ["batch", encoder.embed_dims[-1]], "dtype": "float32"}}
    return {
        "feature_set": config.data.feature_set,
        "inputs": [
            {"name": "features", "shape": ["batch", slots, len(names)], "dtype": "float32",
             "channels": [_channel(n) for n in names]},
            {"name": "vectors", "shape": ["batch", slots, 4], "dtype": "float32", "channels": ["px", "py", "pz", "E"],
             "unit": f"GeV, every particle scaled so that the jet pT is {JET_PT_GEV:g} GeV"},
            {"name": "mask", "shape": ["batch", slots], "dtype": "bool", "meaning": "True for a real particle"}],
        "outputs": [output_specs[name] for name in outputs],
        "pair_mass": {"mode": encoder.pair_mass, "definition": PAIR_MASS_DEFINITIONS[encoder.pair_mass]},
        "jets": "particles sorted by decreasing pT, the hardest P kept, real particles first, padded slots zero; "
                "angles about the stored jet axis (jetjax.data.features.to_batch)",
    }


@contextlib.contextmanager
def _named_symbolic_dims():
    """During an ONNX conversion, let onnx_ir name a JAX symbolic dimension ('batch') instead of calling int()
    on it: jax2onnx 0.13-0.17.1 hand such dimensions to `onnx_ir.Shape` in some lowerings (lax.rem, clamp,
    select), as its own shape helper does correctly elsewhere."""
    import onnx_ir._core as core

    original = core._maybe_convert_to_symbolic_dim
    core._maybe_convert_to_symbolic_dim = lambda dim: original(str(dim) if jax.export.is_symbolic_dim(dim) else dim)
    try:
        yield
    finally:
        core._maybe_convert_to_symbolic_dim = original


@contextlib.contextmanager
def _closed_jaxpr_alias():
    """During an ONNX conversion on jax >= 0.12, give jax's core the name `ClosedJaxpr` again: jax 0.11 merged
    ClosedJaxpr into Jaxpr and kept the old name as an alias, jax 0.12 removed the alias, and jax2onnx
    (0.13-0.17.1) still uses it. Nothing is changed on jax versions that have it."""
    from jax._src import core

    missing = not hasattr(core, "ClosedJaxpr")
    if missing:
        core.ClosedJaxpr = core.Jaxpr
    try:
        yield
    finally:
        if missing:
            del core.ClosedJaxpr


@contextlib.contextmanager
def _quiet_converter():
    """Silence two converter loggers while it runs: onnx_ir warns once per untyped shape constant (hundreds
    per ParT) that it leaves out of the optional value_info, and jax2onnx 0.13 about its dm_pix plugins."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir.serde", "jax2onnx.plugins.plugin_system")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def write_onnx(infer, specs, outputs, out, description, opset=ONNX_OPSET):
    """Convert `infer` with jax2onnx (dynamic batch) and save it with `description` as metadata 'jetjax'."""
    with _quiet_converter():
        try:
            import onnx
            from jax2onnx import to_onnx
        except ImportError as err:
            raise ImportError("ONNX export needs jax2onnx and onnx: pip install 'jetjax[export]'") from err
        with _named_symbolic_dims(), _closed_jaxpr_alias():
            model = to_onnx(infer, specs, model_name="jetjax_part", opset=opset, input_names=list(INPUT_NAMES),
                            output_names=list(outputs))
    onnx.helper.set_model_props(model, {"jetjax": json.dumps(description)})
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def write_stablehlo(infer, specs, out, platforms=STABLEHLO_PLATFORMS):
    exported = jax.export.export(jax.jit(infer), platforms=platforms)(*specs)
    Path(out).write_bytes(exported.serialize())


def load_stablehlo(path):
    """The function of a StableHLO export, jit-compiled: (features, vectors, mask) -> tuple of outputs."""
    return jax.jit(jax.export.deserialize(bytearray(Path(path).read_bytes())).call)


PAIR_MASS_DEFINITIONS = {
    "reference": "ln m^2 pair feature from E^2 - |p|^2 of p_i + p_j (the ParT reference; rounding noise for "
                 "(nearly) massless pairs)",
    "stable": "ln m^2 pair feature from 2 pT_i pT_j (cosh dy - cos dphi), the particles taken as massless "
              "(jetjax.physics.massless_pair_mass2)"}


def weaver_block_options(encoder):
    """weaver's `version` and the block options that rebuild `encoder`'s blocks (docs/formulas.md §8.5). weaver
    ties the final norm and the pair embedding's biases to `version` alone (RMSNorm and no bias from 3 on), so
    model.norm='rms' goes with model.bias=False and 'layer' with True."""
    if (encoder.norm == "rms") == encoder.bias:
        raise ValueError(f"model.norm={encoder.norm!r} with model.bias={encoder.bias}: weaver builds RMSNorm only "
                         "without Linear biases (its version 3) and LayerNorm only with them; export it as onnx or "
                         "stablehlo")
    options = dict(activation="swiglu" if encoder.ffn == "swiglu" else "gelu", use_rmsnorm=encoder.norm == "rms",
                   use_bias=encoder.bias, use_qk_norm=encoder.qk_norm,
                   headwise_attn_output_gate=encoder.attn_gate == "headwise",
                   elementwise_attn_output_gate=encoder.attn_gate == "elementwise", scale_attn=encoder.scale_attn,
                   scale_fc=encoder.scale_fc, scale_heads=encoder.scale_heads, scale_resids=encoder.scale_resids)
    return {"version": 3 if encoder.norm == "rms" else 1, "block_params": options, "cls_block_params": options}


def weaver_model_settings(config, encoder):
    """Arguments of weaver's `ParticleTransformer` that rebuild the exported model (then `.eval()`)."""
    return {"input_dim": len(FEATURE_SETS[config.data.feature_set]), "num_classes": encoder.num_classes,
            "embed_dims": list(encoder.embed_dims), "pair_embed_dims": list(encoder.pair_embed_dims),
            "num_heads": encoder.num_heads, "num_layers": encoder.num_layers,
            "num_cls_layers": encoder.num_cls_layers, "use_pre_activation_pair": False,
            "fc_params": [] if encoder.num_classes else None, "trim": False, **weaver_block_options(encoder)}


def write_weaver(config, encoder, variables, out, weaver_version):
    """The encoder as a weaver state_dict (.pt / .npz); returns its description (weaver's model arguments,
    inputs in weaver's channel-first layout)."""
    if encoder.pair_mass != "reference":
        raise ValueError(f"the run has model.pair_mass={encoder.pair_mass!r}: weaver's ParticleTransformer computes "
                         "the reference pair mass, so it would not be this model; export it as onnx or stablehlo")
    settings = weaver_model_settings(config, encoder)  # a model weaver cannot build fails before anything is written
    save_state_dict(to_state_dict(variables, weaver_version, ffn=encoder.ffn), out)
    description = signature(config, ("z",), encoder)
    slots, features, vectors, mask = config.data.num_particles, *description["inputs"]
    features["shape"] = ["batch", len(features["channels"]), slots]  # weaver takes channel-first inputs
    vectors["shape"] = ["batch", 4, slots]
    mask.update(shape=["batch", 1, slots], dtype="float32", meaning="1 for a real particle")
    kind = "logits (softmax scores with for_inference=True)" if encoder.num_classes else "the representation z"
    description["outputs"] = [{"name": kind, "shape": ["batch", encoder.num_classes or encoder.embed_dims[-1]],
                               "dtype": "float32"}]
    return {"weaver_version": weaver_version, "weaver_model": settings, **description}


def export(run, format, out, outputs=("scores",), opset=ONNX_OPSET, platforms=STABLEHLO_PLATFORMS,
           weaver_version="0.5"):
    """Export the best checkpoint of the workdir `run` as `format` to `out`, and its description to
    `out` + '.json'; returns the description. `outputs` (StableHLO, ONNX): names from OUTPUT_NAMES."""
    if format not in FORMATS:
        raise ValueError(f"--format={format!r} is not one of {FORMATS}")
    if not outputs or any(name not in OUTPUT_NAMES for name in outputs):
        raise ValueError(f"--outputs={','.join(outputs)!r}: choose one or more of {OUTPUT_NAMES}")
    config, encoder, variables = load_run(run)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    origin = {"run": str(run), "mode": config.mode, "format": format}
    if format == "weaver":
        description = {**origin, **write_weaver(config, encoder, variables, out, weaver_version)}
    else:
        if "scores" in outputs and not encoder.num_classes:
            raise ValueError(f"--run={str(run)!r} is a {config.mode} run without a classifier: export --outputs=z")
        description = {**origin, **signature(config, outputs, encoder)}
        infer = inference_function(encoder, variables, outputs)
        specs = input_specs(config.data.num_particles, len(FEATURE_SETS[config.data.feature_set]))
        if format == "onnx":
            description["opset"] = opset
            write_onnx(infer, specs, outputs, out, description, opset)
        else:
            description["platforms"] = list(platforms)
            write_stablehlo(infer, specs, out, platforms)
    Path(f"{out}.json").write_text(json.dumps(description, indent=2))
    return description


def main(argv=None):
    parser = argparse.ArgumentParser(description="Export a trained jetjax run for inference outside JAX.")
    parser.add_argument("--run", required=True, help="workdir of the run (its best checkpoint is exported)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="file to write (FILE.json describes it)")
    parser.add_argument("--outputs", default="scores", help=f"comma-separated subset of {OUTPUT_NAMES}")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset")
    parser.add_argument("--platforms", default=",".join(STABLEHLO_PLATFORMS), help="StableHLO platforms")
    parser.add_argument("--weaver-version", default="0.5", choices=WEAVER_VERSIONS,
                        help="weaver-core the state_dict is for: 0.5 (0.5.x) or 0.4 (<= 0.4.x, the ParT paper's)")
    args = parser.parse_args(argv)
    export(args.run, args.format, args.out, tuple(args.outputs.split(",")), args.opset,
           tuple(args.platforms.split(",")), args.weaver_version)
    print(f"wrote {args.out} and {args.out}.json")


if __name__ == "__main__":
    main()
