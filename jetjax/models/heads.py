"""Heads attached to the ParT jet representation z."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from jetjax.models.layers import Block, Dropout, MaskedBatchNorm, gelu, torch_linear_init
from jetjax.models.layout import DenseLayout


class Classifier(nn.Module):
    """Classifier on z: 'linear' (the ParT reference) or 'mlp' (the study's 2-layer head:
    Dense -> GELU -> Dropout -> Dense, docs/formulas.md §8.3)."""

    num_classes: int
    kind: str = "linear"
    hidden: int = 256
    dropout: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z, train: bool = False):
        if self.kind == "mlp":
            z = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=torch_linear_init, name="hidden")(z)
            z = Dropout(self.dropout)(gelu(z), deterministic=not train)
        elif self.kind != "linear":
            raise ValueError(f"model.head must be 'linear' or 'mlp', got {self.kind!r}")
        return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=torch_linear_init, name="out")(z)


class BlockMixClassifier(nn.Module):
    """Adapter on a frozen encoder (seed 003's design): every block's output (`blocks` (B, L, E), ParT's
    `block_outputs`) standardised per block and dimension (BatchNorm without scale or offset: batch statistics
    in training, running ones in evaluation, as the linear probes of MAE), a learned softmax-weighted mix of
    the blocks (starting uniform), then a `Classifier` ('linear' or 'mlp'). A frozen encoder's outputs carry
    large offsets and a small spread across jets; standardised, a head trains on them at usual rates."""

    num_classes: int
    kind: str = "linear"
    hidden: int = 256
    dropout: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, blocks, train: bool = False):
        blocks = nn.BatchNorm(use_running_average=not train, momentum=0.9, use_bias=False, use_scale=False,
                              axis=(1, 2), name="standardise")(blocks)
        mix_logits = self.param("mix_logits", nn.initializers.zeros, (blocks.shape[1],))
        mixed = jnp.einsum("l,ble->be", jax.nn.softmax(mix_logits), blocks)
        return Classifier(self.num_classes, self.kind, self.hidden, self.dropout, self.dtype, name="classifier")(
            mixed, train)


class ProjectionHead(nn.Module):
    """Contrastive projection: Dense -> ReLU -> Dense (the JetCLR / SupCon heads, docs/formulas.md §4.8, §5).
    The loss normalises the output."""

    hidden: int = 128
    features: int = 128

    @nn.compact
    def __call__(self, z):
        z = nn.relu(nn.Dense(self.hidden, kernel_init=torch_linear_init, name="hidden")(z))
        return nn.Dense(self.features, kernel_init=torch_linear_init, name="out")(z)


class MLPHead(nn.Module):
    """The projectors and predictors of VICReg, SimSiam and MoCo v3: for each hidden width Dense -> BatchNorm
    -> ReLU, then a Dense of the last width (the output, not normalised). BatchNorm as the encoder's
    (PyTorch running averages) over the jets of the batch."""

    widths: tuple

    @nn.compact
    def __call__(self, x, train: bool = False):
        every_jet = jnp.ones(x.shape[:-1], bool)
        for i, width in enumerate(self.widths[:-1]):
            x = nn.Dense(width, kernel_init=torch_linear_init, name=f"hidden_{i}")(x)
            x = nn.relu(MaskedBatchNorm(name=f"norm_{i}")(x, every_jet, train))
        return nn.Dense(self.widths[-1], kernel_init=torch_linear_init, name="out")(x)


def sinusoidal_positions(slots, width):
    """Fixed sinusoidal encoding of the slot index (slots, width)."""
    position = jnp.arange(slots, dtype=jnp.float32)[:, None]
    frequency = jnp.exp(-jnp.log(10000.0) * jnp.arange(0, width, 2, dtype=jnp.float32) / width)
    angles = position * frequency
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)[:, :width]


class MaskedParticleDecoder(nn.Module):
    """MPM decoder (MAE variant, docs/formulas.md §6.2, §6.5).

    Encoder tokens of visible particles are projected to the decoder width; the k-th masked particle of a
    jet (in slot order, i.e. pT order) receives the learned null token T[k], which is how the decoder knows
    which particle to reconstruct. A few ParT blocks without pair bias run over all real slots, then linear
    heads predict the masked particles' features and (optionally) their 8-class particle ID. There is one
    null token per possible particle (`max_particles`, the config's P), whatever slot count a batch has.
    With `positions` (B, P, n) given, each null token also gets a linear map of its particle's position (JEPA's
    predictor: I-JEPA's mask tokens carry the positional embedding of their target).
    """

    num_features: int
    max_particles: int
    width: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_pid_classes: int = 8

    @nn.compact
    def __call__(self, tokens, mask, masked, train: bool = False, positions=None):
        slots = tokens.shape[1]
        null_tokens = self.param("null_tokens", nn.initializers.normal(1e-3), (self.max_particles, self.width))
        order = jnp.clip(jnp.cumsum(masked, axis=1) - 1, 0, slots - 1)
        queries = null_tokens[order]
        if positions is not None:
            queries = queries + nn.Dense(self.width, kernel_init=torch_linear_init, name="position")(positions)
        x = nn.Dense(self.width, kernel_init=torch_linear_init, name="project")(tokens)
        x = jnp.where(masked[..., None], queries, x)
        x = jnp.where(mask[..., None], x, 0.0)
        for i in range(self.num_layers):
            x = Block(self.num_heads, "gelu", 4.0, 0.0, 0.0, 0.0, 0.0, None, jnp.float32, name=f"blocks_{i}")(
                x, DenseLayout(mask), train=train)
        x = nn.LayerNorm(epsilon=1e-5, name="norm")(x)
        out = {"features": nn.Dense(self.num_features, kernel_init=torch_linear_init, name="features")(x)}
        if self.num_pid_classes:
            out["pid_logits"] = nn.Dense(self.num_pid_classes, kernel_init=torch_linear_init, name="pid")(x)
        return out


class VAEHead(nn.Module):
    """CLIP-VAE on the jet representation (docs/formulas.md §7.2, §7.4): mu, log sigma^2 = Dense(z); a latent sample
    (noise scaled by `noise_scale`, the KL warm-up weight) is decoded into one particle per slot.

    The decoder broadcasts Dense(latent) to every slot, adds a sinusoidal slot encoding, and runs ParT
    blocks with self-attention over the real slots. The reference's cross-attention to the latent has a
    single key, so its softmax is 1 and it reduces exactly to adding a linear map of the latent, which is
    what each layer does here. Output per slot: (10 pT/pT_jet, deta, dphi), the first channel exponentiated.
    """

    latent: int = 16
    width: int = 128
    num_layers: int = 2
    num_heads: int = 4

    @nn.compact
    def __call__(self, z, mask, noise_key=None, noise_scale=1.0, train: bool = False):
        mu = nn.Dense(self.latent, kernel_init=torch_linear_init, name="mu")(z)
        logvar = nn.Dense(self.latent, kernel_init=torch_linear_init, name="logvar")(z)
        latent = mu
        if noise_key is not None:
            latent = mu + jnp.exp(0.5 * logvar) * jax.random.normal(noise_key, mu.shape) * noise_scale
        slots = mask.shape[1]
        x = nn.Dense(self.width, kernel_init=torch_linear_init, name="expand")(latent)[:, None, :]
        x = x + sinusoidal_positions(slots, self.width)[None]
        for i in range(self.num_layers):
            x = x + nn.Dense(self.width, kernel_init=torch_linear_init, name=f"latent_{i}")(latent)[:, None, :]
            x = Block(self.num_heads, "gelu", 1.0, 0.0, 0.0, 0.0, 0.0, None, jnp.float32, name=f"blocks_{i}")(
                x, DenseLayout(mask), train=train)
        x = nn.leaky_relu(nn.Dense(self.width, kernel_init=torch_linear_init, name="out_hidden")(x))
        out = nn.Dense(3, kernel_init=torch_linear_init, name="out")(x)
        recon = jnp.concatenate([jnp.exp(jnp.clip(out[..., :1], -20.0, 10.0)), out[..., 1:]], axis=-1)
        return {"recon": jnp.where(mask[..., None], recon, 0.0), "mu": mu, "logvar": logvar}
