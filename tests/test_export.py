"""Export for inference outside JAX: StableHLO, ONNX and weaver's own model give jetjax's outputs on real and
synthetic jets, and the exports describe their inputs.

Each export is compared with jetjax run op by op (as ONNX Runtime and PyTorch evaluate) and under jit (as XLA
compiles a StableHLO export). Real jets hold massless particles, whose reference ln m^2 is float32 rounding
noise: the two jetjax paths round it alike (physics.mass2 keeps XLA's fused multiply-adds out of it), so every
export equals both. With model.pair_mass='stable' (no rounding noise left) one rounding step of the inputs also
moves no score by more than 1e-4.
"""
import json

import jax
import numpy as np
import pytest
from conftest import shared_path, toy_jets

from configs import base, quickstart
from jetjax import build, export
from jetjax.checkpoint import Checkpoints
from jetjax.data import chunks, features, readers
from jetjax.data.classes import get_scheme
from jetjax.models.convert import convert_state_dict, load_state_dict
from jetjax.models.part import ParT

TOL = 1e-4
TINY = dict(embed_dims=(16, 32, 16), pair_embed_dims=(8,), num_heads=2, num_layers=1, num_cls_layers=1)
TINY_SLOTS = 16
REFERENCE_SLOTS = 64  # the reference sample's jets hold at most 57 particles, 14 JetClass-II jets fill 64
BOTH = ("scores", "z")
COMPARE_EXTRA = "pip install 'jetjax[compare]'"


def write_run(workdir, config, variables):
    """A workdir as `jetjax.train.fit` leaves it: config.json and a best checkpoint with `variables` as the
    encoder of the run's objective."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    state = {"params": {"encoder": variables["params"]}, "batch_stats": {"encoder": variables["batch_stats"]},
             "step": np.int32(1)}
    stored = Checkpoints(workdir)
    stored.save("best", 1, state, {"epoch": 1})
    stored.wait()
    stored.close()
    return workdir


def perturbed(variables, seed):
    """Every parameter and statistic moved at random (HeadScale included), so a wrongly mapped tensor shows."""
    rng = np.random.default_rng(seed)

    def move(path, x):
        x = np.asarray(x, np.float32)
        if jax.tree_util.keystr(path).endswith("['var']"):
            return (x * rng.uniform(0.5, 2.0, x.shape)).astype(np.float32)
        return (x * rng.uniform(0.5, 1.5, x.shape) + rng.normal(0, 0.1, x.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(move, variables)


def tiny_config(mode="supervised"):
    c = quickstart.get_config()
    c.mode = mode
    c.data.num_particles = TINY_SLOTS
    c.model.update(TINY)
    c.model.pair_mass = "reference"  # exportable to weaver too
    return c


def tiny_variables(config, seed=0):
    jets = toy_jets(batch=2, slots=TINY_SLOTS, lengths=(16, 4))
    init = jax.jit(build.build_model(config).encoder.init)
    return perturbed(init(jax.random.key(seed), jets["features"], jets["vectors"], jets["mask"]), seed)


def jetclass2_jets(num_particles):
    """The 100 real JetClass-II jets of ../shared as a `kin` batch of `num_particles` slots (pipeline inputs)."""
    path = shared_path("data", "jetclass2_example", "JetClassII_example.parquet")
    report = chunks.DataReport()
    read = readers.read_chunks(path, features.required_particle_columns("kin"))
    chunk = features.clean(chunks.concatenate_chunks(read), report)
    batch = features.to_batch(chunk, np.zeros(len(chunk), np.int32), "kin", num_particles, report)
    return batch["features"], batch["vectors"], batch["mask"]


def reference_jets(num_particles):
    """The 24 real JetClass jets of the reference sample, channel-last, in their first `num_particles` slots."""
    with np.load(shared_path("reference", "part_weaver_v0417_kin.npz")) as data:
        f, v, m = (data[k] for k in ("input/features", "input/vectors", "input/mask"))
    assert not m[..., num_particles:].any()
    f, v, m = f[..., :num_particles], v[..., :num_particles], m[:, 0, :num_particles] > 0
    return np.transpose(f, (0, 2, 1)), np.transpose(v, (0, 2, 1)), m


def massive_jets(lengths, slots, seed=0):
    """Synthetic jets of particles with masses of 2-4 GeV and momenta of ~20 GeV, where the float32 rounding of
    m^2 (FMA or not) is far below the masses: (features, vectors, mask) with the kin features."""
    rng = np.random.default_rng(seed)
    mask = np.arange(slots)[None] < np.asarray(lengths)[:, None]
    p3 = rng.normal(0, 20, (len(lengths), slots, 3)) + [0.0, 0.0, 40.0]
    energy = np.sqrt((p3 ** 2).sum(-1, keepdims=True) + rng.uniform(2, 4, (len(lengths), slots, 1)) ** 2)
    vectors = np.concatenate([p3, energy], -1) * mask[..., None]
    kin = features.kinematic_features(vectors, mask, vectors.sum(1))
    return kin.astype(np.float32), vectors.astype(np.float32), mask


def hardest_particle_only(jets):
    f, v, m = jets
    return f, v, m & (np.arange(m.shape[1]) == 0)


def concatenate(*jet_sets):
    return tuple(np.concatenate(parts) for parts in zip(*jet_sets))


def jetjax_outputs(model, variables, jets, jit):
    """scores, z and logits of jetjax itself, with or without jit."""
    out = (jax.jit(model.apply) if jit else model.apply)(variables, *jets)
    return {"scores": np.asarray(jax.nn.softmax(out["logits"], axis=-1)), "z": np.asarray(out["z"]),
            "logits": np.asarray(out["logits"])}


def onnx_outputs(path, jets):
    onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX tests need the export extra: "
                                                            "pip install 'jetjax[export]'")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(BOTH, session.run(None, dict(zip(export.INPUT_NAMES, jets)))))


def stablehlo_outputs(path, jets):
    return dict(zip(BOTH, (np.asarray(x) for x in export.load_stablehlo(path)(*jets))))


def max_difference(got, want, names=BOTH):
    return max(float(np.max(np.abs(np.asarray(got[n], np.float64) - want[n]))) for n in names)


RUNNERS = {"stablehlo": stablehlo_outputs, "onnx": onnx_outputs}


def exported(run, format, path, outputs=BOTH):
    if format == "onnx":
        pytest.importorskip("jax2onnx", reason="ONNX export needs the export extra: pip install 'jetjax[export]'")
    export.export(run, format, path, outputs=outputs)
    return path


def assert_equals_both_jetjax_paths(got, want):
    """`got` within TOL of jetjax's outputs `want` op by op (want[False]) and jitted (want[True])."""
    for jit in (False, True):
        assert max_difference(got, want[jit]) <= TOL


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A run holding the reference ParT (the perturbed weaver v0.4.17 model, 10 JetClass classes) at P = 64;
    its real jets: the reference sample's 24 JetClass jets, the 100 JetClass-II jets (14 fill all 64 slots)
    and the first 32 of them cut to their hardest particle; jetjax's outputs on them, op by op and jitted; and the
    model's variables."""
    config = base.get_config()
    config.data.update(scheme="jetclass_10", num_particles=REFERENCE_SLOTS)
    config.model.pair_mass = "reference"  # the weaver model's
    variables = convert_state_dict(load_state_dict(shared_path("reference", "part_weaver_v0417_kin.npz"),
                                                   prefix="param/"))
    run = write_run(tmp_path_factory.mktemp("reference") / "run", config, variables)
    real = concatenate(reference_jets(REFERENCE_SLOTS), jetclass2_jets(REFERENCE_SLOTS))
    jets = concatenate(real, hardest_particle_only(tuple(x[:32] for x in real)))
    multiplicity = jets[2].sum(1)
    assert multiplicity.min() == 1 and multiplicity.max() == REFERENCE_SLOTS
    want = {jit: jetjax_outputs(ParT(num_classes=10), variables, jets, jit) for jit in (False, True)}
    assert np.ptp(want[False]["scores"], axis=0).max() > 0.1  # scores that depend on the jet: comparisons can fail
    return run, jets, want, variables


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny classifier run (perturbed initialisation, P = 16); 3 massive synthetic jets of 16, 9 and 1
    particles followed by the 100 real JetClass-II jets (nearly all fill the 16 slots); jetjax's outputs on
    them, op by op and jitted."""
    config = tiny_config()
    variables = tiny_variables(config)
    run = write_run(tmp_path_factory.mktemp("tiny") / "run", config, variables)
    jets = concatenate(massive_jets((16, 9, 1), TINY_SLOTS), jetclass2_jets(TINY_SLOTS))
    assert (jets[2][3:].sum(1) == TINY_SLOTS).mean() > 0.9
    model = build.build_model(config).encoder   # the run's ParT, its compute dtype resolved
    return run, variables, jets, {jit: jetjax_outputs(model, variables, jets, jit) for jit in (False, True)}


def first(outputs, n):
    return {k: v[:n] for k, v in outputs.items()}


def test_optimised_jit_equals_op_by_op_on_real_jets_with_photons(reference, xla_optimisations):
    """With XLA's usual optimisations (the suite turns them off), which fuse multiplies and adds: the reference
    pair mass keeps its squares apart (physics.mass2); before, these jitted outputs differed by 3.3e-2."""
    _, jets, want, variables = reference
    optimised = jetjax_outputs(ParT(num_classes=10), variables, jets, jit=True)
    assert max_difference(optimised, want[False]) <= TOL


@pytest.mark.parametrize("format", ["stablehlo", "onnx"])
def test_export_equals_both_jetjax_paths_on_real_jets_with_one_to_all_particles(reference, format, tmp_path):
    run, jets, want, _ = reference
    path = exported(run, format, tmp_path / f"part.{format}")
    assert_equals_both_jetjax_paths(RUNNERS[format](path, jets), want)


@pytest.mark.parametrize("format", ["stablehlo", "onnx"])
def test_export_equals_both_jetjax_paths_on_massive_jets_at_any_batch_size(tiny, format, tmp_path):
    run, _, jets, want = tiny
    path = exported(run, format, tmp_path / f"tiny.{format}")
    synthetic = RUNNERS[format](path, tuple(x[:3] for x in jets))  # 3 jets here, 103 below: a dynamic batch
    assert_equals_both_jetjax_paths(synthetic, {jit: first(outputs, 3) for jit, outputs in want.items()})
    assert_equals_both_jetjax_paths(RUNNERS[format](path, jets), want)


@pytest.fixture(scope="module")
def stable(tmp_path_factory, reference):
    """The reference fixture's weights and real jets with model.pair_mass='stable'."""
    _, jets, _, variables = reference
    config = base.get_config()
    config.data.update(scheme="jetclass_10", num_particles=REFERENCE_SLOTS)
    config.model.pair_mass = "stable"
    run = write_run(tmp_path_factory.mktemp("stable") / "run", config, variables)
    model = ParT(num_classes=10, pair_mass="stable")
    return run, model, variables, jets, {jit: jetjax_outputs(model, variables, jets, jit) for jit in (False, True)}


@pytest.mark.parametrize("format", ["stablehlo", "onnx"])
def test_stable_pair_mass_export_equals_both_jetjax_paths_on_real_jets_with_photons(stable, format, tmp_path):
    run, _, _, jets, want = stable
    assert max_difference(want[False], want[True]) <= TOL  # op by op and jit agree: no rounding noise left
    path = exported(run, format, tmp_path / f"stable.{format}")
    assert_equals_both_jetjax_paths(RUNNERS[format](path, jets), want)
    assert json.loads((tmp_path / f"stable.{format}.json").read_text())["pair_mass"]["mode"] == "stable"


def test_stable_scores_do_not_move_with_one_rounding_step_of_the_inputs(reference, stable):
    _, model, variables, jets, want = stable
    rng = np.random.default_rng(0)
    moved = np.nextafter(jets[1], (np.inf * rng.choice([-1.0, 1.0], jets[1].shape)).astype(np.float32))
    assert max_difference(jetjax_outputs(model, variables, (jets[0], moved, jets[2]), True), want[True]) <= TOL
    _, _, reference_want, _ = reference  # the reference pair mass on the same jets moves by more (measured 2.6e-3)
    reference_moved = jetjax_outputs(ParT(num_classes=10), variables, (jets[0], moved, jets[2]), True)
    assert max_difference(reference_moved, reference_want[True]) > 10 * TOL


def test_weaver_export_refuses_the_stable_pair_mass(stable, tmp_path):
    run, _, _, _, _ = stable
    with pytest.raises(ValueError, match="model.pair_mass='stable'"):
        export.export(run, "weaver", tmp_path / "stable.npz")


def test_onnx_graph_and_description_document_the_inputs(tiny, tmp_path):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the export extra: pip install 'jetjax[export]'")
    run, _, _, _ = tiny
    path = tmp_path / "tiny.onnx"
    export.main(["--run", str(run), "--format", "onnx", "--out", str(path), "--outputs", "scores,z"])
    description = json.loads((tmp_path / "tiny.onnx.json").read_text())
    model = onnx.load(str(path))
    assert json.loads({p.key: p.value for p in model.metadata_props}["jetjax"]) == description
    assert [o.version for o in model.opset_import if o.domain == ""] == [export.ONNX_OPSET]

    def graph_shape(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    float32, boolean = onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL
    assert [(v.name, graph_shape(v), v.type.tensor_type.elem_type) for v in model.graph.input] == [
        ("features", ["batch", 16, 7], float32), ("vectors", ["batch", 16, 4], float32),
        ("mask", ["batch", 16], boolean)]
    assert [(v.name, graph_shape(v)) for v in model.graph.output] == [("scores", ["batch", 7]), ("z", ["batch", 16])]
    inputs = {entry["name"]: entry for entry in description["inputs"]}
    assert [(n, inputs[n]["shape"], inputs[n]["dtype"]) for n in export.INPUT_NAMES] == [
        ("features", ["batch", 16, 7], "float32"), ("vectors", ["batch", 16, 4], "float32"),
        ("mask", ["batch", 16], "bool")]
    channels = inputs["features"]["channels"]
    assert [c["name"] for c in channels] == list(features.FEATURE_SETS["kin"])
    assert channels[0] == {"name": "pt_log", "definition": "ln pT", "standardised": "clip((x - 1.7) * 0.7, -5.0, 5.0)"}
    assert "standardised" not in channels[5]  # deta is raw
    assert description["outputs"][0]["classes"] == list(get_scheme("jetclass2_7").names)


def test_pretraining_run_exports_its_representation(tmp_path):
    config = tiny_config("pretrain")
    config.objective.name = "supcon"
    variables = tiny_variables(config, seed=1)
    run = write_run(tmp_path / "run", config, variables)
    with pytest.raises(ValueError, match="--outputs=z"):
        export.export(run, "stablehlo", tmp_path / "scores.stablehlo")
    path = exported(run, "stablehlo", tmp_path / "z.stablehlo", outputs=("z",))
    jets = massive_jets((16, 5), TINY_SLOTS)
    z = jax.jit(build.build_model(config).encoder.apply)(variables, *jets)["z"]
    np.testing.assert_allclose(export.load_stablehlo(path)(*jets)[0], z, atol=TOL)


def test_bad_requests_fail_naming_the_option(tiny, tmp_path):
    run, _, _, _ = tiny
    with pytest.raises(ValueError, match="--format"):
        export.export(run, "tflite", tmp_path / "x")
    with pytest.raises(ValueError, match="--outputs"):
        export.export(run, "onnx", tmp_path / "x", outputs=("logits",))
    with pytest.raises(FileNotFoundError, match="--run"):
        export.export(tmp_path / "not_a_run", "onnx", tmp_path / "x")


def test_weaver_export_of_a_run_reads_back_bit_identically(tiny, tmp_path):
    run, variables, _, _ = tiny
    path = tmp_path / "tiny.npz"
    description = export.export(run, "weaver", path)
    back = convert_state_dict(load_state_dict(path), num_heads=TINY["num_heads"], weaver_version="0.5")
    assert jax.tree.structure(back) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert description["weaver_model"]["num_heads"] == 2 and description["inputs"][0]["shape"] == ["batch", 7, 16]


def weaver_logits(state, settings, jets):
    """Logits of weaver-core's own ParticleTransformer (eval mode) with the state_dict `state` loaded strictly."""
    torch = pytest.importorskip("torch", reason=f"comparing with weaver needs torch: {COMPARE_EXTRA}")
    weaver = pytest.importorskip("weaver.nn.model.ParticleTransformer",
                                 reason=f"comparing with weaver needs weaver-core: {COMPARE_EXTRA}")
    model = weaver.ParticleTransformer(**settings)
    model.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
    model.eval()
    f, v, m = jets
    inputs = [torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 1, 2))) for x in (f, v, m[..., None] * 1.0)]
    with torch.no_grad():
        return model(inputs[0], inputs[1], inputs[2].float()).numpy()


def test_weaver_model_on_the_written_state_dict_gives_jetjax_logits(reference, tmp_path):
    """weaver-core 0.5's ParticleTransformer, built from the export's description, loads the written .pt
    strictly and reproduces jetjax's logits (op by op, as PyTorch rounds) on the real jets; a 0.4-layout file
    loads too but is another model there (weaver 0.5 dropped the HeadScale permutation)."""
    pytest.importorskip("torch", reason=f"writing .pt needs torch: {COMPARE_EXTRA}")
    run, jets, want, _ = reference
    path = tmp_path / "part.pt"
    settings = export.export(run, "weaver", path)["weaver_model"]
    logits = weaver_logits(load_state_dict(path), settings, jets)
    assert max_difference({"logits": logits}, want[False], ("logits",)) <= TOL
    export.export(run, "weaver", tmp_path / "part04.npz", weaver_version="0.4")
    other = weaver_logits(load_state_dict(tmp_path / "part04.npz"), settings, jets)
    assert max_difference({"logits": other}, want[False], ("logits",)) > 0.1
