"""The training engine: resume after a signal is bit-identical, seeds decide everything, finetune and probe
take the pretrained encoder, and the quickstart runs end to end."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from configs import quickstart
from jetjax import build, steps, train
from jetjax.checkpoint import Checkpoints
from jetjax.models import layout

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(embed_dims=(16, 32, 16), pair_embed_dims=(8,), num_heads=2, num_layers=1, num_cls_layers=1)
TINY_OVERRIDES = ["--config.data.synthetic_jets_per_group=1500", "--config.data.num_particles=16",
                  "--config.data.epoch_size=1280", "--config.data.val_size=256", "--config.train.batch_size=64",
                  "--config.train.epochs=2", "--config.train.log_every=1", "--config.model.embed_dims=(16,32,16)",
                  "--config.model.pair_embed_dims=(8,)", "--config.model.num_heads=2",
                  "--config.model.num_layers=1", "--config.model.num_cls_layers=1"]


def tiny_config(mode="supervised", **objective):
    c = quickstart.get_config()
    c.mode = mode
    c.data.update(dict(synthetic_jets_per_group=1500, num_particles=16, epoch_size=640, val_size=256))
    c.model.update(TINY)
    c.train.update(dict(epochs=1, batch_size=64, log_every=1))
    c.optimizer.warmup_steps = 0
    if objective:
        c.objective.update(objective)
    return c


def leaves(run, which="latest"):
    checkpoints = Checkpoints(run)
    state, _ = checkpoints.restore(which)
    checkpoints.close()
    return state


def is_zero_gradient(path):
    """Parameters whose training gradient vanishes identically: the attention key bias (softmax over keys
    ignores a shift common to all keys) and the pair-embedding biases that feed a BatchNorm using batch
    statistics (it removes any constant shift)."""
    return ("['attn']['key']['bias']" in path
            or ("['pair_embed']" in path and path.endswith("['bias']") and "['bn_" not in path))


def jetjax_run(workdir, *extra):
    return subprocess.Popen([sys.executable, "-m", "jetjax.main", "--config", "configs/quickstart.py",
                             f"--workdir={workdir}", *TINY_OVERRIDES, *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_interrupted_run_resumes_bit_identically(tmp_path):
    straight = jetjax_run(tmp_path / "straight")
    interrupted = jetjax_run(tmp_path / "interrupted")
    metrics = tmp_path / "interrupted" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.2)
    interrupted.send_signal(signal.SIGTERM)
    _, err = interrupted.communicate(timeout=300)
    assert interrupted.returncode == 0, err[-2000:]
    stopped = leaves(tmp_path / "interrupted")
    assert 0 < int(stopped["step"]) < 40  # it really stopped before the end (2 epochs x 20 steps)
    resumed = jetjax_run(tmp_path / "interrupted")
    for process in (straight, resumed):
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-2000:]
    a, b = leaves(tmp_path / "straight"), leaves(tmp_path / "interrupted")
    assert int(a["step"]) == int(b["step"]) == 40
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a["params"]), jax.tree.leaves(b["params"])):
        if is_zero_gradient(jax.tree_util.keystr(path)):
            # their gradient is exactly zero in theory and float rounding noise in practice, which Adam
            # turns into +-lr steps: allow that, no more (40 steps at lr 2e-3)
            assert np.max(np.abs(x - y)) <= 40 * 2e-3 * 2
        else:
            np.testing.assert_array_equal(x, y)
    for x, y in zip(jax.tree.leaves(a["batch_stats"]), jax.tree.leaves(b["batch_stats"])):
        np.testing.assert_array_equal(x, y)
    assert (tmp_path / "straight" / "evaluation" / "metrics.json").exists()


def test_seed_decides_initialisation():
    config = tiny_config()
    model = build.build_model(config)
    batch = build.example_batch(config, 8)
    tx = optax.sgd(0.1)
    same = [steps.init_state(model, tx, batch, jax.random.key(s)).params for s in (0, 0, 1)]
    for x, y, z in zip(*(jax.tree.leaves(p) for p in same)):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(jax.tree.leaves(same[0]), jax.tree.leaves(same[2])))


def test_unoptimised_init_program_gives_the_parameters_of_an_optimised_one():
    # on the CPU the initialisation is compiled without LLVM optimisation (steps.INIT_COMPILER_OPTIONS):
    # the parameters must be those of flax's init compiled as usual, to float rounding
    config = tiny_config()
    model = build.build_model(config)
    batch, key = build.example_batch(config, 8), jax.random.key(5)
    state = steps.init_state(model, optax.sgd(0.1), batch, key)
    init_key, model_key, _ = jax.random.split(key, 3)
    expected = jax.jit(model.init)(init_key, batch, model_key)["params"]
    assert jax.tree.structure(state.params) == jax.tree.structure(expected)
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    # traced inside another transformation, where jax takes no compiler options, it gives the same shapes
    shapes = jax.eval_shape(lambda k: steps.init_state(model, optax.sgd(0.1), batch, k), key)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), shapes.params) == jax.tree.map(
        lambda x: (x.shape, x.dtype), state.params)


def test_cpu_has_avx512_agrees_with_numpys_cpu_detection():
    features = pytest.importorskip("numpy._core._multiarray_umath").__cpu_features__  # numpy 2: from CPUID
    assert steps.cpu_has_avx512() == features["AVX512F"]


def test_inference_options_change_a_wide_cpu_program_but_not_its_scores(xla_optimisations):
    # on the CPU the eval-mode steps of encoders at least steps.INFERENCE_OPTIONS_MIN_WIDTH wide compile with
    # steps.INFERENCE_COMPILER_OPTIONS (YNNPACK's dot fusions) where the CPU has AVX-512: every jaxlib the project
    # allows takes them, they change the compiled program, and the scores stay those of XLA's default program to
    # float rounding (packed layout); a narrower encoder's program, or any without AVX-512, is XLA's default one
    options = steps.INFERENCE_COMPILER_OPTIONS["cpu"]
    assert steps.platform_options(steps.INFERENCE_COMPILER_OPTIONS) == options
    for width in (steps.INFERENCE_OPTIONS_MIN_WIDTH, steps.INFERENCE_OPTIONS_MIN_WIDTH // 2):
        config = tiny_config()
        config.model.embed_dims = (16, width)
        model = build.build_model(config)
        batch = build.example_batch(config, 8)
        state = steps.init_state(model, optax.sgd(0.1), batch, jax.random.key(0))
        plan = layout.plan_layout(np.asarray(batch["mask"]).sum(1), batch["mask"].shape[1], groups=2, slot_multiple=4)
        ours = steps.make_eval_step(model)
        default = jax.jit(ours.__wrapped__, static_argnums=2)
        with_options = jax.jit(ours.__wrapped__, static_argnums=2, compiler_options=options)
        ours_text, default_text, options_text = (step.lower(state, batch, plan).compile().as_text()
                                                 for step in (ours, default, with_options))
        assert options_text != default_text
        takes_options = width >= steps.INFERENCE_OPTIONS_MIN_WIDTH and steps.cpu_has_avx512()
        assert ours_text == (options_text if takes_options else default_text), width
        outputs = [jax.tree.leaves(step(state, batch, plan)) for step in (with_options, default)]
        for x, y in zip(*outputs):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # an option this jaxlib does not know, or a platform without options, compiles with XLA's defaults
    assert steps.platform_options({"cpu": {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_TYPE"}}) is None
    assert steps.platform_options({"cpu": {"xla_no_such_option": 1}}) is None
    assert steps.platform_options({"tpu": {"xla_backend_optimization_level": 0}}) is None


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrain")
    train.fit(tiny_config("pretrain", name="mpm", decoder_width=16, decoder_layers=1, decoder_heads=2), run)
    return run


def encoder_without_head(params):
    return {k: v for k, v in params["encoder"].items() if k != "head"}


def test_finetune_starts_from_the_pretrained_encoder(pretrained, tmp_path):
    config = tiny_config("finetune")
    config.train.init_from = str(pretrained)
    model = build.build_model(config)
    state = steps.init_state(model, optax.sgd(0.1), build.example_batch(config, 8), jax.random.key(0))
    loaded = build.load_encoder(state, str(pretrained))
    source = leaves(pretrained, "best")
    for x, y in zip(jax.tree.leaves(encoder_without_head(loaded.params)),
                    jax.tree.leaves(encoder_without_head(source["params"]))):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(jax.tree.leaves(loaded.params["encoder"]["head"]), jax.tree.leaves(state.params["encoder"]["head"])):
        np.testing.assert_array_equal(x, y)  # the new classifier head keeps its fresh initialisation


def embeddings(encoder, variables, batches):
    """(z, labels) of `batches` by the encoder alone on every slot (no layout plan): independent of the feeder."""
    batches = list(batches)
    z = [np.asarray(encoder.apply(variables, b["features"], b["vectors"], b["mask"])["z"]) for b in batches]
    return np.concatenate(z), np.concatenate([b["label"] for b in batches])


def test_probe_matches_logistic_regression_on_the_frozen_embeddings(pretrained, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from jetjax import metrics, probe
    from jetjax.data import pipeline
    from jetjax.data.classes import task_scheme
    from jetjax.feeding import softmax

    config = tiny_config("probe")
    config.train.init_from = str(pretrained)
    config.data.label_budget = 300
    config.probe = dict(c_grid=(1.0,))  # scikit-learn's default C
    probe.fit(config, tmp_path)
    probed, source = leaves(tmp_path, "best"), leaves(pretrained, "best")
    for x, y in zip(jax.tree.leaves(encoder_without_head(probed["params"])),
                    jax.tree.leaves(encoder_without_head(source["params"]))):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(jax.tree.leaves(probed["batch_stats"]["encoder"]), jax.tree.leaves(source["batch_stats"]["encoder"])):
        np.testing.assert_array_equal(x, y)
    assert (tmp_path / "evaluation" / "metrics.json").exists()

    # scikit-learn on the same jets, embedded independently of the probe's feeder, standardised features
    data = build.data_settings(config, tmp_path)
    train_jets = pipeline.training_sampler(**data, batch_size=64, label_budget=300, label_seed=config.seed)
    val_jets = pipeline.validation_batches(**data, num_jets=config.data.val_size, batch_size=64, seed=config.seed + 1)
    encoder = build.build_model(config).encoder
    variables = {"params": probed["params"]["encoder"], "batch_stats": probed["batch_stats"]["encoder"]}
    (x, y), (xv, yv) = (embeddings(encoder, variables, b) for b in (train_jets.each_jet_once(), val_jets))
    assert len(y) == 300
    scaler = StandardScaler().fit(x)
    reference = LogisticRegression(C=1.0, max_iter=10_000).fit(scaler.transform(x), y)
    names = task_scheme(config.data).names
    expected = metrics.macro_roc_auc(reference.predict_proba(scaler.transform(xv)), yv, names)
    record = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    fitted = [r for r in record if r["split"] == "probe"]
    assert len(fitted) == 1 and fitted[0]["train_jets"] == 300 and fitted[0]["selected"] == 1
    assert expected > 0.6  # the frozen MPM encoder separates the classes (chance: 0.5)
    assert abs(fitted[0]["val_macro_auc"] - expected) < 0.01, (fitted[0]["val_macro_auc"], expected)
    # the checkpoint's head on raw z gives the probe's scores: the standardisation is folded in (up to the
    # float32 rounding by which these dense embeddings differ from the feeder's: a few swapped pairs of jets)
    head = probed["params"]["encoder"]["head"]["out"]
    ours = metrics.macro_roc_auc(softmax(xv @ head["kernel"] + head["bias"]), yv, names)
    assert abs(ours - fitted[0]["val_macro_auc"]) < 2e-3


def test_adapter_on_the_frozen_encoder_is_not_worse_than_the_linear_probe(pretrained, tmp_path):
    from jetjax import probe

    def validation_auc(run, split):
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return max(r["val_macro_auc"] for r in records if r["split"] == split)

    config = tiny_config("probe")
    config.train.init_from = str(pretrained)
    config.data.label_budget = 300
    probe.fit(config, tmp_path / "probe")
    config = tiny_config("finetune")
    config.train.update(dict(init_from=str(pretrained), epochs=6))
    config.data.label_budget = 300
    config.finetune.method = "adapter"
    train.fit(config, tmp_path / "adapter")  # the default recipe (60 steps; measured 0.804 vs the probe's 0.807)
    assert validation_auc(tmp_path / "adapter", "val") >= validation_auc(tmp_path / "probe", "probe") - 0.01


def test_train_fit_refuses_the_probe():
    with pytest.raises(ValueError, match="jetjax.probe.fit"):
        train.fit(tiny_config("probe"), "unused")


def test_diverging_run_stops_with_a_clear_error(tmp_path):
    config = tiny_config()
    config.optimizer.learning_rate = 1e30
    with pytest.raises(FloatingPointError, match="training loss is nan at step"):
        train.fit(config, tmp_path)
    stored = Checkpoints(tmp_path)
    assert stored.latest_step("latest") is None  # nothing of the diverged state was saved
    stored.close()


def test_unknown_mode_and_objective_fail_naming_the_key():
    with pytest.raises(ValueError, match="config.mode"):
        build.build_model(tiny_config("distill"))
    with pytest.raises(ValueError, match="objective.name"):
        build.build_model(tiny_config("pretrain", name="supervised"))
