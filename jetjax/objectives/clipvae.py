"""CLIP-VAE on the jet representation (docs/formulas.md §7): a VAE head decodes the jet's particles from a
latent sample of z; pT-weighted Chamfer reconstruction + clipped KL."""
import flax.linen as nn
import jax.numpy as jnp

from jetjax import augment, losses
from jetjax.models.heads import VAEHead
from jetjax.objectives.base import EncoderLengths, encode


class ClipVAE(nn.Module, EncoderLengths):
    """CLIP-VAE; the latent noise is warmed up linearly over `kl_warmup_steps`."""

    encoder: nn.Module
    latent: int = 16
    decoder_width: int = 128
    decoder_layers: int = 2
    decoder_heads: int = 4
    beta: float = 0.08
    clip_fraction: float = 0.75
    r0: float = 0.1
    kl_warmup_steps: int = 10_000

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        out = encode(self.encoder, batch, train, plan)
        noise_scale = jnp.minimum(1.0, step / max(self.kl_warmup_steps, 1))
        head = VAEHead(self.latent, self.decoder_width, self.decoder_layers, self.decoder_heads, name="vae")
        vae = head(out["z"], batch["mask"], key if train else None, noise_scale, train=train)
        target = augment.vae_target(batch)
        loss, metrics = losses.vae(vae["recon"], target, batch["mask"], vae["mu"], vae["logvar"], self.beta,
                                   self.clip_fraction, self.r0)
        return loss, metrics, {"z": out["z"], "mu": vae["mu"]}


def build(encoder, feature_set, num_particles, **settings):
    return ClipVAE(encoder, **settings)
