"""Building blocks of the ParT encoder and of the heads: masked BatchNorm, attention with an additive
bias, the ParT feed-forward and block, with PyTorch's default initialisations (PART_SPEC.md §2.7-2.12).
"""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

LN_EPS = 1e-5
NEG_INF = -1e9  # additive logit for masked keys: exp underflows to exactly 0 in float32

# PyTorch default initialisations (PART_SPEC §2.12).
torch_linear_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # U(+-1/sqrt(fan_in))
torch_qkv_init = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")  # Xavier over the packed (3E, E)


def gelu(x):
    return nn.gelu(x, approximate=False)


def layer_norm(name, dtype):
    return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name)


def dense(features, name, dtype, kernel_init=torch_linear_init):
    return nn.Dense(features, dtype=dtype, kernel_init=kernel_init, name=name)


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


class Attention(nn.Module):
    """Multi-head attention with an optional additive bias (B, H, Q, K) and a key mask (B, K).

    Logits, bias and softmax are float32. The bias is added after the 1/sqrt(head_dim) scaling.
    q, k, v and output projections are separate 2-D kernels (so Muon can treat them as matrices).
    """

    num_heads: int
    attn_dropout: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, query, key_value, key_mask, bias, train):
        embed = query.shape[-1]
        head_dim = embed // self.num_heads

        def project(x, name):
            y = dense(embed, name, self.dtype, torch_qkv_init)(x)
            return y.reshape(*y.shape[:-1], self.num_heads, head_dim)

        q = project(query, "query") * (head_dim ** -0.5)
        k = project(key_value, "key")
        v = project(key_value, "value")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        if bias is not None:
            logits = logits + bias
        logits = jnp.where(key_mask[:, None, None, :], logits, NEG_INF)
        weights = nn.softmax(logits, axis=-1)
        weights = nn.Dropout(self.attn_dropout)(weights, deterministic=not train).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(*query.shape[:-1], embed)
        return dense(embed, "out", self.dtype)(out)


class FeedForward(nn.Module):
    """ParT FFN: Dense -> GELU (or GEGLU) -> dropout -> LayerNorm on the hidden layer -> Dense."""

    hidden: int
    ffn: str
    activation_dropout: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, train):
        h = dense(self.hidden, "fc1", self.dtype)(x)
        if self.ffn == "geglu":
            h = h * gelu(dense(self.hidden, "fc1_gate", self.dtype)(x))
        else:
            h = gelu(h)
        h = nn.Dropout(self.activation_dropout)(h, deterministic=not train)
        h = layer_norm("post_fc_norm", self.dtype)(h)
        return dense(x.shape[-1], "fc2", self.dtype)(h)


class Block(nn.Module):
    """ParT block (NormFormer-like pre-LN). Particle attention when `context` is None, otherwise
    class attention: the class token (query, not normalised) attends to [class token, context]."""

    num_heads: int
    ffn: str
    ffn_ratio: float
    dropout: float
    attn_dropout: float
    activation_dropout: float
    drop_path: float
    layer_scale_init: Optional[float]
    dtype: jnp.dtype

    def residual_branch(self, y, name, train):
        """Dropout, optional LayerScale and per-sample DropPath on a residual branch."""
        y = nn.Dropout(self.dropout)(y, deterministic=not train)
        if self.layer_scale_init is not None:
            gamma = self.param(name, nn.initializers.constant(self.layer_scale_init), (y.shape[-1],))
            y = y * gamma
        return nn.Dropout(self.drop_path, broadcast_dims=(1, 2))(y, deterministic=not train)

    @nn.compact
    def __call__(self, x, mask, bias=None, context=None, train=False):
        embed = x.shape[-1]
        pre_attn_norm = layer_norm("pre_attn_norm", self.dtype)
        if context is None:
            query = key_value = pre_attn_norm(x)
            key_mask = mask
        else:
            query = x
            key_value = pre_attn_norm(jnp.concatenate([x, context], axis=1))
            key_mask = jnp.concatenate([jnp.ones_like(mask[:, :1]), mask], axis=1)
        a = Attention(self.num_heads, self.attn_dropout, self.dtype, name="attn")(
            query, key_value, key_mask, bias, train)
        head_scale = self.param("head_scale", nn.initializers.ones, (self.num_heads,))
        a = (a.reshape(*a.shape[:-1], -1, self.num_heads) * head_scale).reshape(a.shape)
        a = layer_norm("post_attn_norm", self.dtype)(a)
        x = x + self.residual_branch(a, "layer_scale_attn", train)

        f = layer_norm("pre_fc_norm", self.dtype)(x)
        f = FeedForward(int(self.ffn_ratio * embed), self.ffn, self.activation_dropout, self.dtype,
                        name="ffn")(f, train)
        resid_scale = self.param("resid_scale", nn.initializers.ones, (embed,))
        return resid_scale * x + self.residual_branch(f, "layer_scale_ffn", train)
