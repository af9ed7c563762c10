"""Multi-head self-attention with key padding and optional rotary position embedding: the one
attention module of every encoder (the Conformer with rotary positions, the audio ViT without).

Rotary embedding (RoPE, Su et al. 2021) rotates each (query, key) pair of channels by an angle
proportional to the frame index, so `q_t . k_s` depends on positions only through `t - s`: relative
positions, as in the Conformer's relative-position attention, at O(T d) cost instead of the
O(T^2 d) of Transformer-XL style relative terms, with no parameters and no maximum length (crops at
pre-training and full clips at embedding time both work). fairseq's wav2vec2-conformer offers it as
`pos_enc_type="rope"`. We use the "rotate half" layout (channel `i` pairs with `i + head_dim / 2`).

The attention itself is two plain einsums with a float32 softmax (measured ~3% faster on XLA:CPU
than `jax.nn.dot_product_attention`'s xla path).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiossl_jax.models import mixed_matmul
from audiossl_jax.models.layers import Dropout

NEG_INF = -1e9  # finite: a clip with no valid frame gives a uniform softmax instead of NaN


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
    matmul_dtype: Any = None  # bfloat16: bf16 operands, float32 result (models/mixed_matmul.py)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.kernel_names),
            self.kernel_shape,
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, self.bias_names),
            self.kernel_shape[len(self.kernel_shape) - len(self.bias_names) :],
            self.param_dtype,
        )
        y = mixed_matmul.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype), self.matmul_dtype)
        return y.astype(self.dtype) + bias.astype(self.dtype)


def xavier_qkv_init(key, shape, dtype=jnp.float32):
    """Xavier-uniform of the stacked [3 * embed, embed] matrix, as torch MultiheadAttention's in_proj."""
    embed = shape[0]
    bound = (6.0 / (embed + 3 * embed)) ** 0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    key_valid: jax.Array,
    dropout: nn.Module | None = None,
    deterministic: bool = True,
    matmul_dtype: Any = None,
) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim)) v over the valid keys; q, k, v [batch, length, heads, head_dim],
    key_valid [batch, length]. Logits and softmax in float32, the einsums in the inputs' dtype;
    `dropout` (a `Dropout`) acts on the attention weights; `matmul_dtype` bfloat16 rounds the einsums'
    operands to bfloat16 with a float32 result (models/mixed_matmul.py)."""
    query = query * jnp.asarray(query.shape[-1] ** -0.5, query.dtype)
    logits = mixed_matmul.einsum("bqhd,bkhd->bhqk", query, key, matmul_dtype).astype(jnp.float32)
    logits = jnp.where(key_valid[:, None, None, :], logits, NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    if dropout is not None:
        weights = dropout(weights, deterministic=deterministic)
    return mixed_matmul.einsum("bhqk,bkhd->bqhd", weights, value, matmul_dtype).astype(value.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention over [batch, length, embed]; padded keys get no attention weight.

    One fused projection to (query, key, value), scaled dot-product attention in `dtype` with a
    float32 softmax, dropout on the attention weights, output projection. Layout matches
    `torch.nn.MultiheadAttention` (used by torchaudio's Conformer and by EAT) so weights map one to
    one: qkv/kernel [embed, 3, heads, head_dim], qkv/bias [3, heads, head_dim], out/kernel [heads,
    head_dim, embed], out/bias [embed].
    """

    num_heads: int
    rotary: bool = False  # rotary position embedding on queries and keys
    dropout_rate: float = 0.0  # on attention weights
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32
    qkv_init: Any = xavier_qkv_init  # torch MultiheadAttention's; EAT's ViT: normal(0.02)
    out_init: Any = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    matmul_dtype: Any = None  # bfloat16: bf16 operands, float32 results (models/mixed_matmul.py)

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array, deterministic: bool = True) -> jax.Array:
        embed = x.shape[-1]
        if embed % self.num_heads:
            raise ValueError(f"model width {embed} is not divisible by num_heads={self.num_heads}")
        head_dim = embed // self.num_heads
        qkv = Projection(
            "ble,ethd->blthd",
            (embed, 3, self.num_heads, head_dim),
            ("embed", None, "heads", "kv"),
            (None, "heads", "kv"),
            self.qkv_init,
            self.dtype,
            self.param_dtype,
            self.matmul_dtype,
            name="qkv",
        )(x)
        # split, not indexing: the backward pass then concatenates instead of padding and adding
        query, key, value = (a[:, :, 0] for a in jnp.split(qkv, 3, axis=2))  # [batch, length, heads, head_dim]
        if self.rotary:
            cos, sin = rotary_angles(x.shape[1], head_dim)
            query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        out = dot_product_attention(
            query, key, value, valid, Dropout(self.dropout_rate), deterministic, self.matmul_dtype
        )
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        return Projection(
            "blhd,hde->ble",
            (self.num_heads, head_dim, embed),
            ("heads", "kv", "embed"),
            ("embed",),
            self.out_init,
            self.dtype,
            self.param_dtype,
            self.matmul_dtype,
            name="out",
        )(out)
