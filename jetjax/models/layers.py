"""Building blocks of the ParT encoder and of the heads: masked BatchNorm, attention with an additive
bias, the ParT feed-forward and block, with PyTorch's default initialisations (docs/formulas.md §2.7-2.12), and
the options of weaver-core 0.5.3's ParT versions 2 and 3 (`BlockStyle`, docs/formulas.md §8.5).
"""
import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

LN_EPS = 1e-5
RMS_EPS = float(jnp.finfo(jnp.float32).eps)
"""torch.nn.RMSNorm's epsilon when none is given: the machine epsilon of its (float32) input."""

# PyTorch default initialisations (docs/formulas.md §2.12).
torch_linear_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # U(+-1/sqrt(fan_in))
torch_qkv_init = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")  # Xavier over the packed (3E, E)


def _mix(h):
    """A 32-bit integer hash with full avalanche (the "lowbias32" mix of xor-shifts and odd multipliers)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


class Dropout(nn.Module):
    """Inverted dropout with a counter-based hash instead of threefry draws: each element keeps its value
    (scaled by 1 / (1 - rate)) unless the hash of (its index, two 32-bit seeds drawn from the module's
    'dropout' key) falls below rate x 2^32, so the keep probability is 1 - rate to within 2^-32 and the mask
    is a function of the key. Measured on a 2-core CPU: 30 ms for 9.4M elements, against 288 ms with
    `flax.linen.Dropout` (threefry), which made dropout 15% of a ParT training step."""

    rate: float

    @nn.compact
    def __call__(self, x, deterministic):
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        seed = jax.random.bits(self.make_rng("dropout"), (2,), jnp.uint32)
        index = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
        keep = _mix(_mix(index ^ seed[0]) + seed[1]) >= jnp.uint32(min(round(self.rate * 2 ** 32), 2 ** 32 - 1))
        return jnp.where(keep, x / (1.0 - self.rate), 0).astype(x.dtype)


SQRT_HALF = 0.7071067811865476


def gelu(x):
    """Exact GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2: PyTorch's formula. (jax.nn.gelu's exact form goes
    through erfc, which XLA's CPU backend evaluates with an exponential: a ParT training step on CPU is 8%
    faster with erf.)"""
    return 0.5 * x * (1 + jax.lax.erf(x * jnp.asarray(SQRT_HALF, x.dtype)))


def layer_norm(name, dtype):
    return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name)


def norm_layer(kind, name, dtype):
    """LayerNorm ('layer', PyTorch's epsilon 1e-5) or RMSNorm ('rms': x / sqrt(mean x^2 + eps) * scale)."""
    return layer_norm(name, dtype) if kind == "layer" else nn.RMSNorm(epsilon=RMS_EPS, dtype=dtype, name=name)


def dense(features, name, dtype, kernel_init=torch_linear_init, use_bias=True):
    return nn.Dense(features, dtype=dtype, kernel_init=kernel_init, use_bias=use_bias, name=name)


@dataclasses.dataclass(frozen=True)
class BlockStyle:
    """The block options of weaver-core 0.5.3's ParticleTransformer (its `block_params` / `version`), one for
    one: `norm` 'layer' | 'rms' (use_rmsnorm), `bias` of every Linear (use_bias), `qk_norm` (use_qk_norm: a
    norm of each head's queries and keys), `attn_gate` 'none' | 'headwise' | 'elementwise' (a sigmoid gate of
    the attention output from the query input), and the NormFormer scalings `scale_attn` (post_attn_norm),
    `scale_fc` (post_fc_norm), `scale_heads` (head_scale), `scale_resids` (resid_scale). The defaults are the
    reference ParT (version 1)."""

    norm: str = "layer"
    bias: bool = True
    qk_norm: bool = False
    attn_gate: str = "none"
    scale_attn: bool = True
    scale_fc: bool = True
    scale_heads: bool = True
    scale_resids: bool = True
    lora_rank: int = 0
    """LoRA (jetjax/finetune.py): a rank-`lora_rank` update (alpha / rank) A B beside each Dense named in
    `lora_targets` (query, key, value, out, fc1, fc1_gate, fc2); 0: none."""
    lora_alpha: float = 16.0
    lora_targets: tuple = ("query", "key", "value", "out")

    def __post_init__(self):
        if self.norm not in ("layer", "rms"):
            raise ValueError(f"model.norm must be 'layer' or 'rms', got {self.norm!r}")
        if self.attn_gate not in ("none", "headwise", "elementwise"):
            raise ValueError(f"model.attn_gate must be 'none', 'headwise' or 'elementwise', got {self.attn_gate!r}")
        unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if self.lora_rank < 0 or unknown:
            raise ValueError(f"config.finetune.lora_rank={self.lora_rank} must be >= 0 and lora_targets "
                             f"{tuple(self.lora_targets)} among {LORA_TARGETS}")


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the last axis whose batch statistics use only the entries where `mask` is True.

    Statistics are computed in float32. Running averages follow PyTorch: momentum 0.1 and the unbiased
    batch variance in the running estimate (the biased one normalises the batch). Under `jit` with a
    data-sharded batch the sums run over the global batch (synchronised BatchNorm).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, mask, train: bool):
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,))
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,))
        x32 = x.astype(jnp.float32)
        if train:
            weight = mask[..., None].astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            count = jnp.maximum(jnp.sum(weight), 1.0)
            mean = jnp.sum(jnp.where(weight > 0, x32, 0.0), axis=axes) / count
            var = jnp.sum(weight * (x32 - mean) ** 2, axis=axes) / count
            if not self.is_initializing():
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean
                unbiased = var * count / jnp.maximum(count - 1, 1.0)
                running_var.value = (1 - m) * running_var.value + m * unbiased
        else:
            mean, var = running_mean.value, running_var.value
        y = (x32 - mean) * (scale / jnp.sqrt(var + self.epsilon)) + bias
        return y.astype(x.dtype)


def attention_core(q, k, v, bias, dropout):
    """softmax(q.k + bias) v: q (N, T, H, D), k and v (N, S, H, D), bias broadcastable to (N, H, T, S), holding
    the pair bias and -1e9 at masked keys (models/layout.py); `dropout(weights)` applied to the attention
    weights. Logits, bias and softmax are float32; q must carry the 1/sqrt(head_dim) scaling. The heads are
    moved next to the batch axis first: with both batch axes leading, XLA's CPU batched matmuls run 4x faster
    (measured)."""
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    logits = jnp.einsum("nhqd,nhkd->nhqk", q, k, preferred_element_type=jnp.float32) + bias
    weights = dropout(nn.softmax(logits, axis=-1)).astype(v.dtype)
    return jnp.swapaxes(jnp.einsum("nhqk,nhkd->nhqd", weights, v), 1, 2)


LORA_TARGETS = ("query", "key", "value", "out", "fc1", "fc1_gate", "fc2")


def low_rank_update(module, name, in_features, features, style):
    """LoRA's update x -> (alpha / r) (x A) B of the Dense `name` of `module` (Hu et al. 2021): A (in, r) starts as
    PyTorch's Linear default, B (r, out) at zero, so the update starts at 0; kept as `{name}_lora_a`,
    `{name}_lora_b` beside the Dense. x -> 0 when `style` asks for no LoRA on `name`."""
    if not style.lora_rank or name not in style.lora_targets:
        return lambda x: 0
    a = module.param(f"{name}_lora_a", torch_linear_init, (in_features, style.lora_rank))
    b = module.param(f"{name}_lora_b", nn.initializers.zeros, (style.lora_rank, features))
    scale = style.lora_alpha / style.lora_rank
    return lambda x: jnp.dot(jnp.dot(x, a.astype(x.dtype)), b.astype(x.dtype)) * jnp.asarray(scale, x.dtype)


class Attention(nn.Module):
    """Multi-head attention with the pair bias, laid out by the encoder's layout (models/layout.py).

    Self-attention (`cls` None): the particles' rows attend to the particles of their jet, with the layout's
    bias. Class attention: the class token `cls` (B, 1, E) of each jet (the query, not normalised) attends to
    [itself, its particles]; `x` and `cls` arrive normalised as keys. q, k, v and output projections are
    separate 2-D kernels (so Muon can treat them as matrices); the bias is added after the 1/sqrt(head_dim)
    scaling.
    """

    num_heads: int
    attn_dropout: float
    dtype: jnp.dtype
    style: BlockStyle = BlockStyle()

    @nn.compact
    def __call__(self, x, layout, biases, train, cls=None, cls_query=None):
        embed = x.shape[-1]
        head_dim = embed // self.num_heads
        style = self.style
        projections = {name: dense(embed, name, self.dtype, torch_qkv_init, style.bias)
                       for name in ("query", "key", "value")}
        head_norms = {name: norm_layer(style.norm, f"{name[0]}_norm", self.dtype) for name in ("query", "key")}
        updates = {name: low_rank_update(self, name, embed, embed, style) for name in ("query", "key", "value", "out")}

        def project(y, name):
            y = projections[name](y) + updates[name](y)
            y = y.reshape(*y.shape[:-1], self.num_heads, head_dim)
            return head_norms[name](y) if style.qk_norm and name in head_norms else y

        dropout = Dropout(self.attn_dropout)
        core = functools.partial(attention_core, dropout=lambda w: dropout(w, deterministic=not train))
        k, v = project(x, "key"), project(x, "value")
        query = x if cls is None else cls_query
        if cls is None:
            out = layout.self_attention(core, project(x, "query") * (head_dim ** -0.5), k, v, biases)
        else:
            q = project(cls_query, "query") * (head_dim ** -0.5)
            out = layout.class_attention(core, q, project(cls, "key"), project(cls, "value"), k, v)
        if style.attn_gate != "none":
            gates = self.num_heads if style.attn_gate == "headwise" else embed
            gate = nn.sigmoid(dense(gates, "gate", self.dtype, use_bias=style.bias)(query))
            out = out * gate.reshape(*out.shape[:-2], self.num_heads, -1)
        out = out.reshape(*out.shape[:-2], embed)
        return dense(embed, "out", self.dtype, use_bias=style.bias)(out) + updates["out"](out)


GATED_FFNS = {"geglu": gelu, "swiglu": nn.silu}
"""Gated feed-forwards: fc1(x) * act(fc1_gate(x)) (GEGLU: the study's "Ours"; SwiGLU: weaver's ParT v2/v3)."""


class FeedForward(nn.Module):
    """ParT FFN: Dense -> GELU (or a gated GEGLU / SwiGLU) -> dropout -> norm on the hidden layer (`style`
    scale_fc) -> Dense."""

    hidden: int
    ffn: str
    activation_dropout: float
    dtype: jnp.dtype
    style: BlockStyle = BlockStyle()

    @nn.compact
    def __call__(self, x, train):
        style = self.style

        def linear(y, features, name):
            return (dense(features, name, self.dtype, use_bias=style.bias)(y)
                    + low_rank_update(self, name, y.shape[-1], features, style)(y))

        h = linear(x, self.hidden, "fc1")
        if self.ffn in GATED_FFNS:
            h = h * GATED_FFNS[self.ffn](linear(x, self.hidden, "fc1_gate"))
        else:
            h = gelu(h)
        h = Dropout(self.activation_dropout)(h, deterministic=not train)
        if style.scale_fc:
            h = norm_layer(style.norm, "post_fc_norm", self.dtype)(h)
        return linear(h, x.shape[-1], "fc2")


class Block(nn.Module):
    """ParT block (NormFormer-like pre-LN) on the rows of a layout (models/layout.py). Particle attention
    when `cls` is None: x holds the particles' rows, `biases` the layout's attention bias per group (default:
    the key mask alone), and the block returns their new rows. Class attention:
    x holds the (fixed) particle rows, `cls` the class tokens (B, 1, E), which attend to [class token,
    particles] and are returned."""

    num_heads: int
    ffn: str
    ffn_ratio: float
    dropout: float
    attn_dropout: float
    activation_dropout: float
    drop_path: float
    layer_scale_init: Optional[float]
    dtype: jnp.dtype
    style: BlockStyle = BlockStyle()

    def residual_branch(self, y, name, keep, train):
        """Dropout, optional LayerScale and per-jet DropPath (`keep`: 0 or 1/(1 - rate) per row) on a residual
        branch."""
        y = Dropout(self.dropout)(y, deterministic=not train)
        if self.layer_scale_init is not None:
            gamma = self.param(name, nn.initializers.constant(self.layer_scale_init), (y.shape[-1],))
            y = y * gamma
        return y if keep is None else y * keep.astype(y.dtype)

    def drop_path_keep(self, layout, jets, train):
        """Per-jet DropPath factors on the rows of the stream (None when off): the same draw for both branches
        of the block would tie them, so each branch draws its own."""
        if not train or self.drop_path == 0.0:
            return None
        keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.drop_path, (jets,))
        keep = keep.astype(jnp.float32) / (1.0 - self.drop_path)
        return keep[:, None, None] if layout is None else layout.per_jet(keep)

    @nn.compact
    def __call__(self, x, layout, biases=None, cls=None, train=False):
        embed, style = x.shape[-1], self.style
        pre_attn_norm = norm_layer(style.norm, "pre_attn_norm", self.dtype)
        stream = x if cls is None else cls
        jets = layout.mask.shape[0]
        rows_layout = layout if cls is None else None
        attention = Attention(self.num_heads, self.attn_dropout, self.dtype, style, name="attn")
        if cls is None:
            biases = layout.attention_bias() if biases is None else biases
            a = attention(pre_attn_norm(x), layout, biases, train)
        else:
            a = attention(pre_attn_norm(x), layout, None, train, cls=pre_attn_norm(cls), cls_query=cls)
        if style.scale_heads:
            head_scale = self.param("head_scale", nn.initializers.ones, (self.num_heads,))
            a = (a.reshape(*a.shape[:-1], -1, self.num_heads) * head_scale).reshape(a.shape)
        if style.scale_attn:
            a = norm_layer(style.norm, "post_attn_norm", self.dtype)(a)
        stream = stream + self.residual_branch(a, "layer_scale_attn", self.drop_path_keep(rows_layout, jets, train),
                                               train)

        f = norm_layer(style.norm, "pre_fc_norm", self.dtype)(stream)
        f = FeedForward(int(self.ffn_ratio * embed), self.ffn, self.activation_dropout, self.dtype, style,
                        name="ffn")(f, train)
        if style.scale_resids:
            stream = self.param("resid_scale", nn.initializers.ones, (embed,)) * stream
        return stream + self.residual_branch(f, "layer_scale_ffn", self.drop_path_keep(rows_layout, jets, train),
                                             train)
