"""Particle tokenizers and MPM with token targets: the VQ-VAE learns (reconstruction falls, most codes used) and
its codebook state follows jetjax.vq's updates; K-means tokens are scikit-learn's and a resumed run reloads
them; a tokenizer trained through the engine gives its best checkpoint's tokens to MPM, which trains on them; the targets of masked particles never reach the encoder;
the token objective trains; the study trains the tokenizer before MPM with VQ-VAE tokens."""
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn.cluster import KMeans

from configs import mpm_kmeans, mpm_vq, study_quickstart, vqvae
from conftest import adam_steps, toy_jets
from jetjax import checkpoint, objectives, study, tokenizers, train, vq
from jetjax.build import build_model, example_batch
from jetjax.objectives import tokens as objectives_tokens
from jetjax.data import synthetic
from jetjax.models.part import ParT

TINY = dict(embed_dims=(16, 16, 16), pair_embed_dims=(8,), num_heads=2, num_layers=1, num_cls_layers=1)
TOKENIZER = dict(num_codes=32, latent=4, width=16, num_layers=1, num_heads=2)
"""32 codes, not the published 512: a few toy batches of ~300 particles cannot occupy 512 codes."""
DECODER = dict(decoder_width=16, decoder_layers=1, decoder_heads=2)


def build(name, **settings):
    return objectives.build(name, ParT(num_classes=None, **TINY), "kin", 16, **settings)


def toy_particles(seeds=range(4)):
    batches = [toy_jets(s, batch=32, slots=16, lengths=None) for s in seeds]
    return batches, np.concatenate([np.asarray(b["features"])[np.asarray(b["mask"])] for b in batches])


def test_vqvae_reconstruction_falls_and_most_codes_are_used():
    # the EMA codebook (the default); the gradient codebook's updates are checked step by step below
    model = build("vqvae", codebook_update="ema", dead_code_steps=10, **TOKENIZER)
    data, _ = toy_particles()
    params, stats, history = adam_steps(model, data, 100)
    reco = [float(m["reco"]) for m in history]
    assert np.all(np.isfinite(reco)) and np.mean(reco[-10:]) < 0.3 * np.mean(reco[:10]), reco[::10]
    assert sum(float(m["restarted_codes"]) for m in history) > 0  # dead codes came back
    held_out = toy_jets(10, batch=64, slots=16, lengths=None)
    _, metrics, out = jax.jit(model.apply)({"params": params, "batch_stats": stats}, held_out, jax.random.key(3))
    assert metrics["usage"] > 0.5 and metrics["perplexity"] > 8, (metrics["usage"], metrics["perplexity"])
    assert out["z"].shape == (64, TOKENIZER["latent"])


@pytest.mark.parametrize("codebook_update", tokenizers.CODEBOOK_UPDATES)
def test_a_training_step_writes_the_vq_codebook_update(codebook_update):
    model = build("vqvae", codebook_update=codebook_update, dead_code_steps=1, decay=0.9, **TOKENIZER)
    batch, key = toy_jets(0, batch=4, slots=16, lengths=(16, 12, 7, 4)), jax.random.key(5)
    variables = jax.jit(model.init)(jax.random.key(0), batch, key)
    (_, metrics, _), new = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
        variables, batch, key)
    tokenizer, mine = model.tokenizer, {k: v["tokenizer"] for k, v in variables.items()}
    z_e = tokenizer.apply(mine, batch["features"], batch["mask"], method=lambda m, f, k: m.encoder(f, k))
    old, stats = mine["batch_stats"], new["batch_stats"]["tokenizer"]
    if codebook_update == "ema":
        codebook = old["codebook"]
        state = vq.ema_codebook_update(vq.EmaCodebook(codebook, old["counts"], old["sums"], old["steps_unused"]),
                                       z_e, vq.nearest_code(z_e, codebook), batch["mask"], 0.9)
    else:
        codebook = mine["params"]["codebook"]
        used = vq.code_counts(vq.nearest_code(z_e, codebook), batch["mask"], 32) > 0
        state = vq.EmaCodebook(codebook, jnp.ones(32), codebook, jnp.where(used, 0, 1))
    expected, restarted = vq.reinit_dead_codes(key, state, z_e, batch["mask"], 1)
    assert 0 < restarted.sum() == metrics["restarted_codes"]
    np.testing.assert_array_equal(stats["steps_unused"], expected.steps_unused)
    if codebook_update == "ema":
        for name in ("codebook", "counts", "sums"):
            np.testing.assert_allclose(stats[name], getattr(expected, name), rtol=1e-5, atol=1e-6)
    else:  # the parameter is the optimiser's; the restarts move the offset
        np.testing.assert_allclose(codebook + stats["restart_offset"], expected.codebook, rtol=1e-5, atol=1e-6)
    real = np.asarray(z_e)[np.asarray(batch["mask"])]
    for code in np.asarray(expected.codebook)[np.asarray(restarted)]:  # each restart sits on a real particle
        assert np.min(np.abs(real - code).max(axis=1)) < 1e-6


def test_kmeans_tokens_are_scikit_learns_and_a_resumed_run_reloads_them(tmp_path):
    _, particles = toy_particles()
    centroids = objectives_tokens.fit_kmeans(particles, 16, seed=0)
    reference = KMeans(16, n_init=1, random_state=0).fit(particles)
    np.testing.assert_allclose(centroids, reference.cluster_centers_, rtol=1e-5, atol=1e-6)
    batch = toy_jets(7, batch=8, slots=16, lengths=None)
    tokens = np.asarray(tokenizers.kmeans_targets(centroids)(batch["features"], batch["mask"]))
    real = np.asarray(batch["mask"])
    np.testing.assert_array_equal(tokens[real], reference.predict(np.asarray(batch["features"])[real]))

    root = tmp_path / "jets"
    synthetic.write_dataset(root, jets_per_group=300, seed=1)
    data = dict(root=str(root), scheme="jetclass2_7", feature_set="kin", num_particles=16, skip_bad_files=False,
                file_format="any")
    source = objectives_tokens.KMeansTokens(num_clusters=8, num_jets=64, feature_set="kin")
    (tmp_path / "run").mkdir()
    first, _ = source.load(tmp_path / "run", data, seed=0)
    stored = np.load(tmp_path / "run" / objectives_tokens.KMEANS_FILE)
    assert stored["centroids"].shape == (8, 7) and stored["num_jets"] == 64
    np.testing.assert_array_equal(objectives_tokens.fit_kmeans(objectives_tokens.training_particles(data, 64, 0), 8, 0),
                                  stored["centroids"])
    data_moved = {**data, "root": str(tmp_path / "absent")}  # a resumed run reads no jets: the file is the truth
    again, _ = source.load(tmp_path / "run", data_moved, seed=0)
    np.testing.assert_array_equal(first(batch["features"], batch["mask"]), again(batch["features"], batch["mask"]))
    with pytest.raises(ValueError, match="objective.num_clusters"):
        objectives_tokens.KMeansTokens(9, 64, "kin").load(tmp_path / "run", data, seed=0)


def tiny_run(tmp_path, objective):
    """A config of one tiny epoch on synthetic jets (16 slots) of the pretraining `objective` (a dict)."""
    c = vqvae.get_config()
    c.data.update(dict(root=str(tmp_path / "data"), num_particles=16, epoch_size=128, val_size=64))
    c.model.update(dict(**TINY, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0))
    c.objective = ml_collections.ConfigDict(objective)
    c.train.update(dict(epochs=1, batch_size=32, log_every=2))
    c.optimizer.warmup_steps = 0
    c.knn.update(dict(train_jets=64, val_jets=32, k=5))
    return c


def test_a_tokenizer_trained_by_the_engine_gives_the_tokens_of_its_best_checkpoint_to_mpm(tmp_path):
    synthetic.write_dataset(tmp_path / "data", jets_per_group=400, seed=3)
    record = train.fit(tiny_run(tmp_path, dict(name="vqvae", **TOKENIZER)), tmp_path / "tokenizer")
    assert record["epoch"] == 1 and record["selection"] == "val_loss"
    logged = [json.loads(line) for line in (tmp_path / "tokenizer" / "metrics.jsonl").read_text().splitlines()]
    assert {"usage", "perplexity", "reco"} <= logged[-1].keys() and "knn_accuracy" not in logged[-1]
    ahead = next(record for record in logged if record["split"] == "compile")  # train, eval steps: compiled ahead
    assert ahead["compiled_programs"] >= 2 and ahead["compile_s"] > 0
    assert "programs jit(train_step)" not in logged[-1]  # none compiled in the loop

    targets, num_tokens = objectives_tokens.VQVAETokens(str(tmp_path / "tokenizer"), "kin").load(None, None, 0)
    best = checkpoint.best_checkpoint(tmp_path / "tokenizer", "test")
    model = build("vqvae", **TOKENIZER)
    variables = jax.tree.map(jnp.asarray, {k: best[k] for k in ("params", "batch_stats")})
    batch = toy_jets(0, batch=4, slots=16, lengths=(16, 12, 7, 4))
    _, expected, _, _ = model.apply(variables, batch, jax.random.key(1), method=lambda m, b, k: m.tokenizer(
        b["features"], b["mask"], k)[1:])
    assert num_tokens == 32
    real = np.asarray(batch["mask"])
    np.testing.assert_array_equal(np.asarray(targets(batch["features"], batch["mask"]))[real],
                                  np.asarray(expected)[real])
    with pytest.raises(ValueError, match="tokenizes feature set 'kin'"):
        objectives_tokens.VQVAETokens(str(tmp_path / "tokenizer"), "kinpid").load(None, None, 0)
    # experiments/vq_usage.py on this run (tests/test_experiments.py runs the other scripts)
    usage = json.loads(subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "experiments" / "vq_usage.py"), str(tmp_path / "tokenizer"),
         "--jets", "64"], env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        check=True).stdout.splitlines()[-1])
    assert usage["codes"] == 32 and 0 < usage["used"] <= 32 and 1 <= usage["perplexity"] <= 32
    with pytest.raises(FileNotFoundError, match="objective.tokenizer_run"):
        objectives_tokens.VQVAETokens(str(tmp_path / "absent"), "kin").load(None, None, 0)

    mpm = dict(name="mpm_vq", mask_fraction=0.3, tokenizer_run=str(tmp_path / "tokenizer"), **DECODER)
    assert train.fit(tiny_run(tmp_path, mpm), tmp_path / "mpm_vq")["epoch"] == 1
    validation = [json.loads(line) for line in (tmp_path / "mpm_vq" / "metrics.jsonl").read_text().splitlines()][-1]
    assert np.isfinite(validation["loss"]) and 0 <= validation["knn_accuracy"] <= 1


def token_models():
    """MPM with the tokens of a randomly initialised VQ-VAE, and with K-means tokens of toy particles."""
    tokenizer = tokenizers.build_tokenizer("kin", **TOKENIZER)
    batch = toy_jets(0, batch=4, slots=16, lengths=(16, 12, 7, 4))
    tokenizer_variables = jax.jit(tokenizer.init)(jax.random.key(9), batch["features"], batch["mask"])
    _, particles = toy_particles()
    return {"mpm_vq": build("mpm_vq", tokenizer_run="unused", **DECODER).clone(
                targets=tokenizers.vqvae_targets(tokenizer, tokenizer_variables), num_tokens=32),
            "mpm_kmeans": build("mpm_kmeans", **DECODER).clone(
                targets=tokenizers.kmeans_targets(objectives_tokens.fit_kmeans(particles, 16, 0)), num_tokens=16)}


def test_token_targets_of_masked_particles_never_reach_the_encoder():
    # with VQ-VAE tokens; K-means tokens take the same code path (TokenMaskedParticleModel), only `targets` differs
    model = token_models()["mpm_vq"]
    batch = toy_jets(0, batch=4, slots=16, lengths=(16, 12, 7, 4))
    key = jax.random.key(1)
    variables = jax.jit(model.init)(jax.random.key(0), batch, key)
    masked = np.asarray(objectives.choose_masked(key, batch["mask"], 0.3))
    assert masked.sum() > 0 and not np.any(masked & ~np.asarray(batch["mask"]))
    changed = {**batch,
               "features": jnp.where(masked[..., None], 3.0, batch["features"]),
               "vectors": jnp.where(masked[..., None], batch["vectors"] * 3.0 + 1.0, batch["vectors"])}
    assert np.any(model.targets(batch["features"], batch["mask"])[masked]
                  != model.targets(changed["features"], changed["mask"])[masked])  # the targets did change
    (loss_a, metrics_a, out_a), (loss_b, _, out_b) = (jax.jit(model.apply)(variables, b, key) for b in (batch, changed))
    np.testing.assert_allclose(out_a["z"], out_b["z"], atol=1e-5)
    assert not np.isclose(loss_a, loss_b)
    assert metrics_a["masked_particles"] == masked.sum()


def test_mpm_with_tokens_trains():
    data, _ = toy_particles()
    _, _, history = adam_steps(token_models()["mpm_kmeans"], data, 60, learning_rate=5e-3)
    loss = [float(m["token_cross_entropy"]) for m in history]
    assert np.all(np.isfinite(loss)) and np.mean(loss[-10:]) < 0.8 * np.mean(loss[:10]), loss[::10]


def test_token_targets_are_resolved_before_use():
    model = build_model(mpm_kmeans.get_config("pretrain"))
    with pytest.raises(RuntimeError, match="objectives.prepare"):
        model.init(jax.random.key(0), example_batch(mpm_kmeans.get_config(), 2), jax.random.key(1))
    with pytest.raises(ValueError, match="objective.tokenizer_run"):
        build("mpm_vq")


def test_the_token_configs():
    assert vqvae.get_config().objective.to_dict() == dict(name="vqvae", num_codes=512, latent=16,
                                                          codebook_update="ema", dead_code_steps=100)
    for module in (mpm_vq, mpm_kmeans):
        pretrain, finetune = module.get_config("pretrain"), module.get_config("finetune")
        assert pretrain.objective.mask_fraction == 0.3 and pretrain.mode == "pretrain"
        assert finetune.train.init_from == f"runs/{pretrain.objective.name}_pretrain"
    assert mpm_vq.get_config().objective.tokenizer_run == "runs/vqvae"
    assert mpm_kmeans.get_config().objective.num_clusters == 512


def test_the_study_trains_the_tokenizer_before_mpm_with_vq_tokens(tmp_path):
    config = study_quickstart.get_config()
    config.study.update(dict(objectives=("mpm_vq", "mpm_kmeans"), tsne=()))
    plan = study.stages(config, tmp_path)
    assert [name for name, _, _ in plan][-5:] == ["mpm_vq_tokenizer", "mpm_vq_pretrain", "mpm_vq_finetune",
                                                  "mpm_kmeans_pretrain", "mpm_kmeans_finetune"]
    configs = {name: (row, c) for name, row, c in plan}
    row, tokenizer = configs["mpm_vq_tokenizer"]
    assert row is None and tokenizer.mode == "pretrain" and tokenizer.objective.name == "vqvae"
    assert configs["mpm_vq_pretrain"][1].objective.tokenizer_run == str(tmp_path / "mpm_vq_tokenizer")
    assert configs["mpm_vq_finetune"][0] == "MPM (VQ-VAE tokens)"
    assert configs["mpm_kmeans_finetune"][0] == "MPM (K-means)"
    for _, c in configs.values():
        build_model(c)  # the study's own check before any work: no stage needs its tokenizer yet
    assert json.loads(tokenizer.to_json())["data"] == json.loads(config.to_json())["data"]
