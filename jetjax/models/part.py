"""Particle Transformer (ParT) encoder in flax.linen.

Faithful to the public PyTorch reference (weaver-core v0.4.17 `ParticleTransformer`, the model of the ParT
paper; formulas in docs/formulas.md §2), with channel-last inputs and zero padding:

  features (B, P, C), vectors (B, P, 4) = (px, py, pz, E), mask (B, P) bool (True = real particle).

Differences from the reference, all deliberate:
- BatchNorm statistics are taken over real particles (embedding) and real pairs (pair embedding) only
  (`MaskedBatchNorm`), so zero padding never changes a real output or a running statistic. The reference
  wrap-pads instead (docs/formulas.md §1.5). In eval mode both use the running statistics and agree exactly.
- Padded slots of the inputs are zeroed first, so garbage there cannot leak into anything.
- HeadScale scales output channel k of the attention by c[k mod H]; the reference scales head groups and
  then permutes channels (docs/formulas.md §2.8). The two are the same model family; `convert.py` absorbs the
  permutation into the output projection, so reference checkpoints load exactly.
- Linear biases start at zero (PyTorch draws them uniformly); weights use PyTorch's default schemes.
- The training-time SequenceTrimmer of the reference is not part of the model: shapes stay static.

The study's upgrades (docs/formulas.md §8) are switches: `ffn='geglu'`, `ffn_ratio`, `drop_path` (per-sample
stochastic depth), `layer_scale_init` (LayerScale on both residual branches; None = off), `head='mlp'`. So are
the options of weaver-core 0.5.3's ParT versions 2 and 3 (docs/formulas.md §8.5): `ffn='swiglu'`, `norm='rms'`,
`bias`, `qk_norm`, `attn_gate`, `scale_attn`, `scale_fc`, `scale_heads`, `scale_resids` (layers.BlockStyle). `lora_rank`,
`lora_alpha`, `lora_targets`: low-rank updates of the blocks' Dense layers for LoRA fine-tuning (jetjax/finetune.py).
"""
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jetjax import physics
from jetjax.models.heads import Classifier
from jetjax.models.layers import GATED_FFNS, Block, BlockStyle, MaskedBatchNorm, dense, gelu, layer_norm, norm_layer
from jetjax.models.layout import DenseLayout, LayoutPlan, PackedLayout


class ParticleEmbed(nn.Module):
    """BatchNorm of the input features, then [LayerNorm, Dense, GELU] per width, on the particle rows;
    rows of no particle zeroed."""

    dims: Sequence[int]
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, features, mask, train):
        x = MaskedBatchNorm(name="input_bn")(features, mask, train)
        for i, width in enumerate(self.dims):
            x = layer_norm(f"norm_{i}", self.dtype)(x)
            x = gelu(dense(width, f"dense_{i}", self.dtype)(x))
        return jnp.where(mask[..., None], x, 0).astype(self.dtype)


class PairEmbed(nn.Module):
    """Attention bias U (per attention group: (..., H, S, S)) from the pairwise features (ln kT, ln z, ln dR,
    ln m^2).

    A per-pair MLP [Dense, BatchNorm, GELU] x len(dims), the last width being the number of heads, after a
    BatchNorm of the raw features. As in the reference, the MLP runs on unordered pairs i >= j only (U is
    symmetric): on the layout's pair rows (every slot pair of the triangle, or the real pairs only), with
    BatchNorm statistics counting each unordered pair of real particles once. Each particle's pT, rapidity
    and phi are computed once and shared by its pairs. Features, BatchNorm and the output are float32; the
    Dense layers run in `dtype`. In eval mode every BatchNorm is an affine map with the running statistics
    and is folded into its Dense layer (`folded_layers`): [Dense, GELU] per pair, the same function.
    """

    dims: Sequence[int]
    dtype: jnp.dtype
    pair_mass: str = "reference"
    bias: bool = True

    @nn.compact
    def __call__(self, vectors, layout, train):
        (v_i, kin_i), (v_j, kin_j) = zip(*(layout.pair_rows(x) for x in (vectors, physics.pair_kinematics(vectors))))
        pair_mask = layout.pair_mask
        x = physics.pair_features(v_i, v_j, kin_i, kin_j, self.pair_mass)
        if train or self.is_initializing():
            x = MaskedBatchNorm(name="input_bn")(x, pair_mask, train)
            for n, width in enumerate(self.dims):
                x = dense(width, f"dense_{n}", self.dtype, use_bias=self.bias)(x)
                x = gelu(MaskedBatchNorm(name=f"bn_{n}")(x, pair_mask, train))
        else:
            for kernel, bias in self.folded_layers():
                x = gelu(jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype))
        return layout.pair_bias(x.astype(jnp.float32))

    def folded_layers(self):
        """[(kernel, bias)] of the eval-mode MLP with each BatchNorm, BN(x) = s x + t with s = scale /
        sqrt(running var + eps) and t = bias - s running mean, folded into the Dense beside it: the input BN
        into dense_0 (W -> diag(s) W, b -> b + t W), bn_n into dense_n (W -> W diag(s), b -> s b + t)."""
        params, stats = self.variables["params"], self.variables["batch_stats"]

        def affine(name):
            s = params[name]["scale"] / jnp.sqrt(stats[name]["var"] + MaskedBatchNorm.epsilon)
            return s, params[name]["bias"] - s * stats[name]["mean"]

        layers = []
        for n in range(len(self.dims)):
            kernel = params[f"dense_{n}"]["kernel"]
            bias = params[f"dense_{n}"].get("bias", jnp.zeros(kernel.shape[1], kernel.dtype))
            if n == 0:
                s, t = affine("input_bn")
                kernel, bias = s[:, None] * kernel, bias + t @ kernel
            s, t = affine(f"bn_{n}")
            layers.append((kernel * s, bias * s + t))
        return layers


class ParT(nn.Module):
    """The ParT encoder (+ optional classifier head). Defaults are the reference ParT of the JetClass paper.

    Returns a dict: `z` (B, E) jet representation (final LayerNorm of the class token), `tokens` (B, P, E)
    particle tokens after the last particle block, and `logits` (B, num_classes) when num_classes is set.
    With a `plan` (models/layout.py) the encoder computes on real particles and pairs only (same results;
    the batch must fit the plan: layout.fits, which the engine's feeder guarantees).
    Stage outputs are sown into the 'intermediates' collection (embedding, pair_bias, block_i, cls_block_i).

    Call options for reusing a trained encoder (jetjax.finetune):
    - `block_outputs`: also return `blocks` (B, num_layers + num_cls_layers, E), one vector per block: the mean
      of each particle block's output tokens over the jet's real particles (exact in every layout, and a
      reduction of what the block computed anyway), then the class token after each class block.
    - `unfrozen_blocks` k (None: the whole encoder follows `train`): the embeddings and all particle blocks but
      the last k run in eval mode (running BatchNorm statistics, no dropout) and pass no gradient back; the
      last k particle blocks and the class blocks follow `train`.
    """

    num_classes: Optional[int] = 10
    embed_dims: Sequence[int] = (128, 512, 128)
    pair_embed_dims: Sequence[int] = (64, 64, 64)
    pair_mass: str = "reference"
    num_heads: int = 8
    num_layers: int = 8
    num_cls_layers: int = 2
    ffn: str = "gelu"
    ffn_ratio: float = 4.0
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation_dropout: float = 0.1
    drop_path: float = 0.0
    layer_scale_init: Optional[float] = None
    head: str = "linear"
    head_hidden: int = 256
    head_dropout: float = 0.1
    norm: str = "layer"
    bias: bool = True
    qk_norm: bool = False
    attn_gate: str = "none"
    scale_attn: bool = True
    scale_fc: bool = True
    scale_heads: bool = True
    scale_resids: bool = True
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: Sequence[str] = ("query", "key", "value", "out")
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        if self.pair_mass not in physics.PAIR_MASSES:
            raise ValueError(f"model.pair_mass must be one of {physics.PAIR_MASSES}, got {self.pair_mass!r}")
        if self.ffn not in ("gelu", *GATED_FFNS):
            raise ValueError(f"model.ffn must be one of {('gelu', *GATED_FFNS)}, got {self.ffn!r}")
        self.style()  # a wrong norm or attn_gate fails here
        if self.embed_dims[-1] % self.num_heads:
            raise ValueError(f"model.embed_dims[-1]={self.embed_dims[-1]} is not divisible by "
                             f"model.num_heads={self.num_heads}")

    def style(self):
        return BlockStyle(self.norm, self.bias, self.qk_norm, self.attn_gate, self.scale_attn, self.scale_fc,
                          self.scale_heads, self.scale_resids, self.lora_rank, self.lora_alpha, tuple(self.lora_targets))

    def block(self, name, dropouts, drop_path):
        return Block(self.num_heads, self.ffn, self.ffn_ratio, *dropouts, drop_path, self.layer_scale_init,
                     self.dtype, self.style(), name=name)

    def first_trained_block(self, unfrozen_blocks):
        """Index of the first particle block that trains when the last `unfrozen_blocks` do (None: none frozen)."""
        if unfrozen_blocks is None:
            return None
        if not 0 <= unfrozen_blocks <= self.num_layers:
            raise ValueError(f"config.finetune.unfreeze_blocks={unfrozen_blocks} must be between 0 and "
                             f"model.num_layers={self.num_layers}")
        return self.num_layers - unfrozen_blocks

    @nn.compact
    def __call__(self, features, vectors, mask, train: bool = False, plan: Optional[LayoutPlan] = None,
                 block_outputs: bool = False, unfrozen_blocks: Optional[int] = None):
        first_trained = self.first_trained_block(unfrozen_blocks)
        stem_train = train and first_trained is None

        def detached_before(block, x):
            """x, with no gradient flowing back when `block` is the first one that trains."""
            return jax.lax.stop_gradient(x) if block == first_trained else x

        mask = mask.astype(bool)
        features = jnp.where(mask[..., None], features, 0).astype(jnp.float32)
        vectors = jnp.where(mask[..., None], vectors, 0).astype(jnp.float32)
        layout = DenseLayout(mask) if plan is None else PackedLayout(mask, plan)

        x = ParticleEmbed(self.embed_dims, self.dtype, name="embed")(layout.rows(features), layout.row_mask,
                                                                     stem_train)
        self.sow("intermediates", "embedding", layout.to_dense(x))
        pair_biases = None
        if self.pair_embed_dims:
            pair_biases = PairEmbed((*self.pair_embed_dims, self.num_heads), self.dtype, self.pair_mass, self.bias,
                                    name="pair_embed")(
                layout.rows(vectors), layout, stem_train)
            if first_trained is not None:
                pair_biases = jax.lax.stop_gradient(pair_biases)
            if plan is None:
                self.sow("intermediates", "pair_bias", pair_biases[0])
        biases = layout.attention_bias(pair_biases)

        dropouts = (self.dropout, self.attn_dropout, self.activation_dropout)
        pooled, real = [], jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1).astype(jnp.float32)
        for i in range(self.num_layers):
            x = detached_before(i, x)
            trains = train and (first_trained is None or i >= first_trained)
            x = self.block(f"blocks_{i}", dropouts, self.drop_path)(x, layout, biases, train=trains)
            self.sow("intermediates", f"block_{i}", layout.to_dense(x))
            if block_outputs:
                tokens = jnp.where(mask[..., None], layout.to_dense(x), 0).astype(jnp.float32)
                pooled.append(jnp.sum(tokens, axis=1) / real)
        x = detached_before(self.num_layers, x)

        cls = self.param("cls_token", nn.initializers.truncated_normal(0.02), (1, 1, x.shape[-1]))
        t = jnp.broadcast_to(cls, (mask.shape[0], 1, x.shape[-1])).astype(self.dtype)
        for i in range(self.num_cls_layers):
            t = self.block(f"cls_blocks_{i}", (0.0, 0.0, 0.0), 0.0)(x, layout, cls=t, train=train)
            self.sow("intermediates", f"cls_block_{i}", t)
            if block_outputs:
                pooled.append(t[:, 0].astype(jnp.float32))
        z = norm_layer(self.norm, "norm", self.dtype)(t)[:, 0].astype(jnp.float32)

        out = {"z": z, "tokens": layout.to_dense(x)}
        if block_outputs:
            out["blocks"] = jnp.stack(pooled, axis=1)
        if self.num_classes:
            out["logits"] = Classifier(self.num_classes, self.head, self.head_hidden, self.head_dropout,
                                       self.dtype, name="head")(z, train).astype(jnp.float32)
        return out
