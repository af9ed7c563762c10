"""Multi-head self-attention with key padding and optional rotary position embedding.

Rotary embedding (RoPE, Su et al. 2021) rotates each (query, key) pair of channels by an angle
proportional to the frame index, so `q_t . k_s` depends on positions only through `t - s`: relative
positions, as in the Conformer's relative-position attention, at O(T d) cost instead of the
O(T^2 d) of Transformer-XL style relative terms, with no parameters and no maximum length (crops at
pre-training and full clips at embedding time both work). fairseq's wav2vec2-conformer offers it as
`pos_enc_type="rope"`. We use the "rotate half" layout (channel `i` pairs with `i + head_dim / 2`).

Also here: the `Dropout` the Conformer uses everywhere (8 random bits per element); its largest user
is the attention weights [batch, heads, T, T].
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NEG_INF = -1e9  # finite: a clip with no valid frame gives a uniform softmax instead of NaN


def byte_keep_mask(rng: jax.Array, shape: tuple[int, ...], rate: float) -> tuple[jax.Array, float]:
    """Bernoulli keep mask from 8 random bits per element, and the exact drop rate it realises.

    One 32-bit word from the PRNG serves 4 elements (flax's Dropout draws a word per element; random
    bits cost ~8 ns per word on XLA:CPU, see /work/shared/ENV.md). The rate is rounded to a multiple of
    1/256 (0.1 -> 26/256 = 0.1016); callers rescale by 1 / (1 - realised rate), so the output stays
    unbiased.
    """
    threshold = min(max(round(rate * 256), 0), 256)
    size = math.prod(shape)
    words = jax.random.bits(rng, ((size + 3) // 4,), jnp.uint32)
    bytes_ = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:size].reshape(shape)
    return bytes_ >= threshold, threshold / 256


class Dropout(nn.Module):
    """Inverted dropout with 8 random bits per element (`byte_keep_mask`); rng collection 'dropout'."""
    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate <= 0.0:
            return x
        keep, realised = byte_keep_mask(self.make_rng("dropout"), x.shape, self.rate)
        if realised >= 1.0:
            return jnp.zeros_like(x)
        return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - realised), x.dtype), jnp.zeros((), x.dtype))


def rotary_angles(length: int, head_dim: int, base: float = 10_000.0) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables [length, head_dim] for rotary embedding ("rotate half" layout)."""
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [batch, length, heads, head_dim] by position (cos, sin: [length, head_dim])."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, None, :].astype(x.dtype)
    sin = sin[:, None, :].astype(x.dtype)
    return x * cos + rotated * sin


class Projection(nn.Module):
    """`einsum(equation, x, kernel) + bias` with explicit params "kernel" / "bias", each axis named.

    Stands in for a multi-axis `nn.DenseGeneral`, whose kernel is initialised flat and reshaped:
    with logical axis rules bound, flax then constrains the flat kernel with the names of the
    reshaped one and fails (flax issue #3676). Same param names, shapes and init values.
    """
    equation: str  # e.g. "ble,ethd->blthd": input, kernel -> output
    kernel_shape: tuple[int, ...]
    kernel_names: tuple[str | None, ...]  # logical axis per kernel dimension
    bias_names: tuple[str | None, ...]  # the bias has the kernel's trailing len(bias_names) dims
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_names),
                            self.kernel_shape, self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.bias_names),
                          self.kernel_shape[len(self.kernel_shape) - len(self.bias_names):], self.param_dtype)
        return jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention over [batch, length, embed]; padded keys get no attention weight.

    One fused projection to (query, key, value), scaled dot-product attention in `dtype` with a
    float32 softmax, dropout on the attention weights, output projection. Layout matches
    `torch.nn.MultiheadAttention` (used by torchaudio's Conformer) so weights map one to one:
    qkv/kernel [embed, 3, heads, head_dim], qkv/bias [3, heads, head_dim], out/kernel [heads,
    head_dim, embed], out/bias [embed].
    """
    num_heads: int
    rotary: bool = True  # rotary position embedding on queries and keys
    dropout_rate: float = 0.0  # on attention weights
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array, deterministic: bool) -> jax.Array:
        embed = x.shape[-1]
        if embed % self.num_heads:
            raise ValueError(f"model width {embed} is not divisible by num_heads={self.num_heads}")
        head_dim = embed // self.num_heads
        qkv = Projection("ble,ethd->blthd", (embed, 3, self.num_heads, head_dim), ("embed", None, "heads", "kv"),
                         (None, "heads", "kv"), _qkv_init, self.dtype, self.param_dtype, name="qkv")(x)
        # split, not indexing: the backward pass then concatenates instead of padding and adding
        query, key, value = (a[:, :, 0] for a in jnp.split(qkv, 3, axis=2))  # [batch, length, heads, head_dim]
        if self.rotary:
            cos, sin = rotary_angles(x.shape[1], head_dim)
            query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        query = query * jnp.asarray(head_dim ** -0.5, self.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32)
        logits = jnp.where(valid[:, None, None, :], logits, NEG_INF)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        weights = Dropout(self.dropout_rate)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        return Projection("blhd,hde->ble", (self.num_heads, head_dim, embed), ("heads", "kv", "embed"), ("embed",),
                          nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2), self.dtype, self.param_dtype,
                          name="out")(out)


def _qkv_init(key, shape, dtype=jnp.float32):
    """Xavier-uniform of the stacked [3 * embed, embed] matrix, as torch MultiheadAttention's in_proj."""
    embed = shape[0]
    bound = (6.0 / (embed + 3 * embed)) ** 0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)
