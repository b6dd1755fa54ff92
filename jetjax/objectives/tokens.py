"""MPM with token targets: the encoder sees a jet without 30% of its real particles (as objective 'mpm'), and
a decoder classifies each masked particle into its token, the discrete id a frozen tokenizer gives it.

  vqvae       the tokenizer stage: a VQ-VAE on particles (jetjax/tokenizers.py), trained as a run of its own
              (`VQVAEObjective`, so that it trains, validates, checkpoints and resumes as any run)
  mpm_vq      token = code of the particle in the VQ-VAE of the run `tokenizer_run` (Heinrich et al.)
  mpm_kmeans  token = nearest of `num_clusters` K-means centroids of particle input features, fitted once on
              `kmeans_jets` training jets and kept in the run's workdir (Leigh et al.)

The token targets come from outside the train step: `TokenMaskedParticleModel.prepare_targets` (called by
`jetjax.objectives.prepare` before the model is initialised) loads the tokenizer or fits / reloads the centroids.
"""
import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jetjax import losses, tokenizers
from jetjax.checkpoint import best_checkpoint
from jetjax.data import pipeline
from jetjax.data.features import FEATURE_SETS
from jetjax.models.heads import MaskedParticleDecoder
from jetjax.objectives.base import EncoderLengths, encode
from jetjax.objectives.masked import choose_masked

KMEANS_FILE = "kmeans_tokens.npz"


@dataclasses.dataclass(frozen=True)
class VQVAETokens:
    """Token ids from the best checkpoint of the tokenizer run `run` (objective 'vqvae')."""

    run: str
    feature_set: str

    def load(self, workdir, data, seed):
        """(targets function, number of tokens)."""
        run = Path(self.run)
        restored = best_checkpoint(run, "objective.tokenizer_run")
        config = json.loads((run / "config.json").read_text())
        settings = {k: v for k, v in config["objective"].items() if k != "name"}
        if config["objective"]["name"] != "vqvae":
            raise ValueError(f"objective.tokenizer_run={self.run!r} trained objective "
                             f"{config['objective']['name']!r}, not the tokenizer 'vqvae'")
        if config["data"]["feature_set"] != self.feature_set:
            raise ValueError(f"objective.tokenizer_run={self.run!r} tokenizes feature set "
                             f"{config['data']['feature_set']!r}, this run has data.feature_set={self.feature_set!r}")
        tokenizer = tokenizers.build_tokenizer(self.feature_set, **settings)
        variables = {"params": restored["params"]["tokenizer"],
                     "batch_stats": restored["batch_stats"]["tokenizer"]}
        return tokenizers.vqvae_targets(tokenizer, variables), tokenizer.num_codes


@dataclasses.dataclass(frozen=True)
class KMeansTokens:
    """Token ids from K-means centroids of particle features, fitted once on `num_jets` training jets and
    stored as `workdir/kmeans_tokens.npz` (a resumed run reloads them, so its targets are the same)."""

    num_clusters: int
    num_jets: int
    feature_set: str

    def load(self, workdir, data, seed):
        path = Path(workdir) / KMEANS_FILE
        if path.exists():
            centroids = np.load(path)["centroids"]
            expected = (self.num_clusters, len(FEATURE_SETS[self.feature_set]))
            if centroids.shape != expected:
                raise ValueError(f"{path} holds centroids of shape {centroids.shape}, this run expects {expected} "
                                 "(objective.num_clusters, data.feature_set): use a new workdir or delete the file")
        else:
            particles = training_particles(data, self.num_jets, seed)
            centroids = fit_kmeans(particles, self.num_clusters, seed)
            np.savez(path, centroids=centroids, num_jets=self.num_jets, particles=len(particles), seed=seed)
        return tokenizers.kmeans_targets(centroids), self.num_clusters


def training_particles(data, num_jets, seed):
    """(N, C) float32 input features of the real particles of `num_jets` jets of the training stream
    (`data`: the run's pipeline settings; epoch 0 of a sampler seeded with `seed`)."""
    batch_size = min(1024, num_jets)
    sampler = pipeline.training_sampler(**data, batch_size=batch_size, epoch_size=-(-num_jets // batch_size)
                                        * batch_size, seed=seed)
    particles = [np.asarray(b["features"])[np.asarray(b["mask"], bool)] for b in sampler.batches(0)]
    return np.concatenate(particles).astype(np.float32)


def fit_kmeans(particles, num_clusters, seed):
    """(num_clusters, C) float32 centroids of scikit-learn's K-means (k-means++, one initialisation)."""
    from sklearn.cluster import KMeans

    if len(particles) < num_clusters:
        raise ValueError(f"K-means: {len(particles)} training particles for objective.num_clusters={num_clusters}; "
                         "raise objective.kmeans_jets or lower objective.num_clusters")
    return KMeans(num_clusters, n_init=1, random_state=seed).fit(particles).cluster_centers_.astype(np.float32)


def masked_mean(x, mask):
    """Mean of x (B, P, d) over the real slots of each jet (B, d); 0 for a jet without particles."""
    weight = jnp.asarray(mask, jnp.float32)[..., None]
    return jnp.sum(x * weight, axis=1) / jnp.maximum(jnp.sum(weight, axis=1), 1.0)


class VQVAEObjective(nn.Module, EncoderLengths):
    """The tokenizer stage (objective 'vqvae'): loss = L1 reconstruction of every input feature of the real
    particles (`losses.masked_particle` over all of them) + codebook + commitment x |z_e - sg(e)|^2.
    Metrics: `reco` (and per channel), `codebook`, `commitment`, `usage`, `perplexity`, `restarted_codes`.
    The jet representation `z` is the mean of the particles' quantised latents (the run's embeddings)."""

    tokenizer: tokenizers.ParticleVQVAE
    feature_names: tuple
    encoder = None  # no ParT encoder: nothing for the kNN probe or fine-tuning

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        mask = jnp.asarray(batch["mask"], bool)
        recon, z_q, _, vq_total, vq_metrics = self.tokenizer(batch["features"], mask, key, train)
        reco, reco_metrics = losses.masked_particle(recon, batch["features"], mask, feature_names=self.feature_names)
        loss = reco + vq_total
        metrics = {**{k: v for k, v in reco_metrics.items() if k != "masked_particles"}, **vq_metrics,
                   "total": loss}
        return loss, metrics, {"z": masked_mean(z_q, mask)}


class TokenMaskedParticleModel(nn.Module, EncoderLengths):
    """MPM with discrete targets: masked particles leave the encoder's mask (as in objectives.MaskedParticleModel,
    so nothing of them reaches the encoder); the MPM decoder's `num_tokens` logits at each masked particle are
    scored by cross-entropy against the particle's token (`losses.masked_token_cross_entropy`). The frozen
    tokenizer `targets` sees the whole jet, but only the loss reads its output."""

    encoder: nn.Module
    source: object
    max_particles: int
    targets: object = None
    num_tokens: int = 0
    mask_fraction: float = 0.3
    decoder_width: int = 64
    decoder_layers: int = 2
    decoder_heads: int = 4

    @nn.nowrap
    def prepare_targets(self, workdir, data, seed):
        """This objective with its token targets resolved (`source.load`)."""
        targets, num_tokens = self.source.load(workdir, data, seed)
        return self.clone(targets=targets, num_tokens=num_tokens)

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        if self.targets is None:
            raise RuntimeError("token targets not loaded: call jetjax.objectives.prepare(model, workdir, data, seed) "
                               "before initialising the model")
        mask = jnp.asarray(batch["mask"], bool)
        masked = choose_masked(key, mask, self.mask_fraction)
        out = encode(self.encoder, batch, train, plan, mask=mask & ~masked)
        decoder = MaskedParticleDecoder(self.num_tokens, self.max_particles, self.decoder_width, self.decoder_layers,
                                        self.decoder_heads, 0, name="decoder")
        logits = decoder(out["tokens"], mask, masked, train=train)["features"]
        token_ids = jax.lax.stop_gradient(self.targets(batch["features"], mask))
        loss, metrics = losses.masked_token_cross_entropy(logits, token_ids, masked)
        return loss, {**metrics, "total": loss}, {"z": out["z"]}


def build_tokenizer_stage(encoder, feature_set, num_particles, **settings):
    """The VQ-VAE tokenizer stage ('vqvae'; `encoder` unused): `settings` are jetjax.tokenizers.build_tokenizer's."""
    return VQVAEObjective(tokenizers.build_tokenizer(feature_set, **settings), FEATURE_SETS[feature_set])


def build_mpm_vq(encoder, feature_set, num_particles, tokenizer_run=None, **settings):
    """MPM with the codes of the VQ-VAE of the run `tokenizer_run` as targets."""
    if not tokenizer_run:
        raise ValueError("objective 'mpm_vq' needs objective.tokenizer_run, the workdir of a 'vqvae' run")
    return TokenMaskedParticleModel(encoder, VQVAETokens(str(tokenizer_run), feature_set), num_particles, **settings)


def build_mpm_kmeans(encoder, feature_set, num_particles, num_clusters=512, kmeans_jets=20_000, **settings):
    """MPM with the nearest of `num_clusters` K-means centroids (fitted on `kmeans_jets` training jets) as targets."""
    source = KMeansTokens(num_clusters, kmeans_jets, feature_set)
    return TokenMaskedParticleModel(encoder, source, num_particles, **settings)
