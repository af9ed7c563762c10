"""Conformer encoder for log-mel features (Gulati et al. 2020; Srivastava et al., ICASSP 2022).

features [B, T, mel] + valid [B, T]
  -> zero padded frames, pad T to a multiple of `stack` (4), stack 4 frames -> [B, T/4, 4 * mel]
     (a stacked frame is valid if ANY of its frames is valid: no real frame is dropped, and the
     padded sub-frames of the last stacked frame are zeros)
  -> linear to d_model -> LayerNorm = `latent` (wav2vec 2.0's feature-encoder output, the
     quantizer's input)
  -> dropout -> masked positions replaced by the learned `mask_emb`
  -> N Conformer blocks -> `frames` [B, T/4, d]; `clip` = mean of frames over valid positions.

Block (torchaudio.models.ConformerLayer layout): x + FFN/2 -> [conv module] -> x + MHSA ->
[conv module] -> x + FFN/2 -> LayerNorm, with the convolution module before (`conv_first=True`, the
seed paper) or after the attention. Convolution module: LayerNorm -> pointwise to 2d + GLU -> zero
padded frames -> depthwise conv -> norm -> swish -> pointwise -> dropout.

Choices (see docs/methods/wav2vec2_conformer.md):
* Positions: rotary embedding in the attention (relative, O(T d); see models/attention.py). The
  depthwise convolutions add local relative position information too.
* Norm inside the convolution module: `conv_norm="layer"` (default; LayerNorm over channels per
  frame: no batch statistics, no dependence on padding or on the other clips) or `"group"`
  (GroupNorm with one group = normalise each clip over (valid time, channels); equals torchaudio's
  `use_group_norm=True` when no frame is padded). BatchNorm is not offered: it needs running
  statistics in `aux` and mixes clips. A BatchNorm model in eval mode is an affine map per channel
  and could be folded into the depthwise conv's weights and bias if one had to import one.
* Padding: attention gives padded keys no weight, the depthwise conv sees padded frames as zeros,
  the group norm's statistics use valid frames only; so outputs at valid frames do not depend on the
  values at padded frames (tested).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiossl_jax.models import mixed_matmul
from audiossl_jax.models.attention import SelfAttention
from audiossl_jax.models.depthwise_conv import DepthwiseConv1D
from audiossl_jax.models.layers import Dropout, layer_norm, masked_mean

# Encoder sizes. S and the kernels (31 in the first block, 15 after) follow the seed paper
# (Srivastava et al. 2022); L's depth (12) is an assumption (see docs/methods/wav2vec2_conformer.md).
SIZES = {
    "tiny": dict(d_model=32, num_layers=2, num_heads=2, mlp_dim=64, first_kernel_size=7, kernel_size=5),
    "S": dict(d_model=256, num_layers=12, num_heads=8, mlp_dim=1024, first_kernel_size=31, kernel_size=15),
    "L": dict(d_model=768, num_layers=12, num_heads=12, mlp_dim=3072, first_kernel_size=31, kernel_size=15),
}

LN_EPS = 1e-5  # torch's GroupNorm default (and LayerNorm's: `layers.layer_norm`)
BLE = ("batch", "length", "embed")


def _dense(features: int, names: tuple[str, str], dtype, param_dtype, name: str, matmul_dtype=None) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        dot_general=mixed_matmul.dot_general_for(matmul_dtype),
        name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
    )


def stack_frames(features: jax.Array, valid: jax.Array, stack: int) -> tuple[jax.Array, jax.Array]:
    """[B, T, mel], [B, T] -> [B, ceil(T / stack), stack * mel], [B, ceil(T / stack)].

    Padded frames are zeroed first; a stacked frame is valid if any of its frames is valid.
    `stacked[b, t, j * mel + m] = features[b, stack * t + j, m]`.
    """
    batch, length, mel = features.shape
    pad = (-length) % stack
    features = jnp.where(valid[..., None], features, 0.0)
    features = jnp.pad(features, ((0, 0), (0, pad), (0, 0)))
    valid = jnp.pad(valid, ((0, 0), (0, pad)))
    stacked_length = (length + pad) // stack
    return (
        features.reshape(batch, stacked_length, stack * mel),
        valid.reshape(batch, stacked_length, stack).any(axis=-1),
    )


def stacked_valid(valid: jax.Array, stack: int) -> jax.Array:
    """The validity mask [B, ceil(T / stack)] that `stack_frames` returns (to mask before the model)."""
    pad = (-valid.shape[1]) % stack
    return jnp.pad(valid, ((0, 0), (0, pad))).reshape(valid.shape[0], -1, stack).any(axis=-1)


class MaskedGroupNorm(nn.Module):
    """GroupNorm with one group over (valid time, channels) of each clip, per-channel affine.

    Equals `torch.nn.GroupNorm(1, C)` on [B, C, T] when all frames are valid; padded frames are left
    out of the statistics.
    """

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("channels",)), (channels,), self.param_dtype
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("channels",)), (channels,), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        weights = valid.astype(jnp.float32)[..., None]
        count = jnp.maximum(jnp.sum(weights, axis=(1, 2), keepdims=True) * channels, 1.0)
        mean = jnp.sum(x32 * weights, axis=(1, 2), keepdims=True) / count
        var = jnp.sum(jnp.square(x32 - mean) * weights, axis=(1, 2), keepdims=True) / count
        y = (x32 - mean) * jax.lax.rsqrt(var + LN_EPS)
        return (y * scale + bias).astype(self.dtype)


class FeedForward(nn.Module):
    """LayerNorm -> Dense(mlp_dim) -> swish -> dropout -> Dense(d) -> dropout (caller halves it)."""

    mlp_dim: int
    dropout_rate: float = 0.0  # on the output
    activation_dropout_rate: float = 0.0  # on the hidden activations
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    matmul_dtype: Any = None  # bfloat16: bf16 operands, float32 results (models/mixed_matmul.py)

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        embed = x.shape[-1]
        h = layer_norm("norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        h = _dense(self.mlp_dim, ("embed", "mlp"), self.dtype, self.param_dtype, "up", self.matmul_dtype)(h)
        h = nn.with_logical_constraint(nn.swish(h), ("batch", "length", "mlp"))
        h = Dropout(self.activation_dropout_rate)(h, deterministic=deterministic)
        h = _dense(embed, ("mlp", "embed"), self.dtype, self.param_dtype, "down", self.matmul_dtype)(h)
        return Dropout(self.dropout_rate)(h, deterministic=deterministic)


class ConvModule(nn.Module):
    """LayerNorm -> pointwise(2d) + GLU -> zero padded frames -> depthwise conv -> norm -> swish ->
    pointwise(d) -> dropout."""

    kernel_size: int  # depthwise taps, odd
    norm: str = "layer"  # "layer" (per frame over channels) | "group" (per clip, one group)
    dropout_rate: float = 0.0
    custom_vjp: bool = True  # depthwise conv's shifted-sum backward
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    matmul_dtype: Any = None  # bfloat16: bf16 operands, float32 results (models/mixed_matmul.py)

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array, deterministic: bool) -> jax.Array:
        embed = x.shape[-1]
        h = layer_norm("norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        h = _dense(2 * embed, ("embed", "channels"), self.dtype, self.param_dtype, "pointwise_in", self.matmul_dtype)(h)
        h = nn.glu(h, axis=-1)
        h = jnp.where(valid[..., None], h, jnp.zeros((), h.dtype))
        h = DepthwiseConv1D(
            self.kernel_size,
            custom_vjp=self.custom_vjp,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="depthwise",
        )(h)
        if self.norm == "layer":
            h = layer_norm("conv_norm", axis="channels", dtype=self.dtype, param_dtype=self.param_dtype)(h)
        elif self.norm == "group":
            h = MaskedGroupNorm(self.dtype, self.param_dtype, name="conv_norm")(h, valid)
        else:
            raise ValueError(f"conv_norm={self.norm!r} is not one of ('layer', 'group')")
        h = nn.swish(h)
        h = _dense(embed, ("channels", "embed"), self.dtype, self.param_dtype, "pointwise_out", self.matmul_dtype)(h)
        return Dropout(self.dropout_rate)(h, deterministic=deterministic)


class ConformerBlock(nn.Module):
    """One Conformer block in torchaudio's ConformerLayer layout (see module docstring)."""

    num_heads: int
    mlp_dim: int
    kernel_size: int
    conv_first: bool = True  # convolution module before the attention (seed paper) or after
    conv_norm: str = "layer"
    rotary: bool = True
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    activation_dropout_rate: float = 0.0
    conv_custom_vjp: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    matmul_dtype: Any = None  # bfloat16: bf16 operands, float32 results (models/mixed_matmul.py)

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array, deterministic: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, matmul_dtype=self.matmul_dtype)
        ffn = dict(
            mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate,
            activation_dropout_rate=self.activation_dropout_rate,
            **kw,
        )
        conv = ConvModule(self.kernel_size, self.conv_norm, self.dropout_rate, self.conv_custom_vjp, name="conv", **kw)
        x = x + 0.5 * FeedForward(name="ffn1", **ffn)(x, deterministic)
        if self.conv_first:
            x = x + conv(x, valid, deterministic)
        h = layer_norm("attention_norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        h = SelfAttention(self.num_heads, self.rotary, self.attention_dropout_rate, name="attention", **kw)(
            h, valid, deterministic
        )
        x = x + Dropout(self.dropout_rate)(h, deterministic=deterministic)
        if not self.conv_first:
            x = x + conv(x, valid, deterministic)
        x = x + 0.5 * FeedForward(name="ffn2", **ffn)(x, deterministic)
        x = layer_norm("final_norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return nn.with_logical_constraint(x, BLE)


class _ScannedBlock(nn.Module):
    """ConformerBlock with the (carry, x) -> (carry, out) signature `nn.scan` needs."""

    block_kwargs: dict
    deterministic: bool
    remat: bool

    @nn.compact
    def __call__(self, x, valid):
        cls = nn.remat(ConformerBlock, static_argnums=(3,)) if self.remat else ConformerBlock
        return cls(**self.block_kwargs, name="block")(x, valid, self.deterministic), None


class ConformerLayers(nn.Module):
    """The stack of `num_layers` Conformer blocks over [B, T, d] (first block's kernel may differ)."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    kernel_size: int  # depthwise taps of blocks 2..N
    first_kernel_size: int  # depthwise taps of block 1
    conv_first: bool = True
    conv_norm: str = "layer"
    rotary: bool = True
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    activation_dropout_rate: float = 0.0
    conv_custom_vjp: bool = True
    scan: bool = False  # nn.scan over blocks 2..N (faster compile; ~10% slower steps on CPU)
    remat: bool = False  # recompute each block's activations in the backward pass
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    matmul_dtype: Any = None  # bfloat16: bf16 operands, float32 results (models/mixed_matmul.py)

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array, deterministic: bool) -> jax.Array:
        kw = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            conv_first=self.conv_first,
            conv_norm=self.conv_norm,
            rotary=self.rotary,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            activation_dropout_rate=self.activation_dropout_rate,
            conv_custom_vjp=self.conv_custom_vjp,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            matmul_dtype=self.matmul_dtype,
        )
        block_cls = nn.remat(ConformerBlock, static_argnums=(3,)) if self.remat else ConformerBlock
        if not self.scan:
            for i in range(self.num_layers):
                size = self.first_kernel_size if i == 0 else self.kernel_size
                x = block_cls(kernel_size=size, name=f"block_{i}", **kw)(x, valid, deterministic)
            return x
        x = block_cls(kernel_size=self.first_kernel_size, name="block_0", **kw)(x, valid, deterministic)
        if self.num_layers > 1:
            scanned = nn.scan(
                _ScannedBlock,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=self.num_layers - 1,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = scanned(dict(kernel_size=self.kernel_size, **kw), deterministic, self.remat, name="blocks")(x, valid)
        return x


class Conformer(nn.Module):
    """Frame stacking + projection + Conformer blocks (see module docstring).

    Call: (features [B, T, mel], valid [B, T] or None, span_mask [B, T'] or None, *, train) -> dict,
    the encoder interface (`models/factory.py`) plus wav2vec 2.0's extras; `span_mask` True = replace
    that stacked frame by `mask_emb`; `train` turns dropout on (rng collection 'dropout').
    Output: `frames` [B, T', d] (zeros at padded positions), `valid` [B, T'], `clip` [B, d] (mean of
    the valid frames); extras: `stacked` [B, T', stack * mel] (the stacked input frames), `latent`
    [B, T', d] (pre-mask, pre-encoder features), `latent_penalty` (mean square of the projection
    before its LayerNorm over valid frames: wav2vec 2.0's feature penalty), with T' = ceil(T / stack).
    """

    d_model: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    kernel_size: int  # depthwise taps of blocks 2..N
    first_kernel_size: int  # depthwise taps of block 1
    stack: int = 4  # input frames stacked into one token
    conv_first: bool = True
    conv_norm: str = "layer"  # "layer" | "group"
    rotary: bool = True
    dropout_rate: float = 0.1  # residual branches (FFN, attention, conv module outputs)
    attention_dropout_rate: float = 0.1  # attention weights
    activation_dropout_rate: float = 0.0  # FFN hidden activations
    input_dropout_rate: float = 0.1  # on the latent before masking (wav2vec 2.0's dropout_input)
    conv_custom_vjp: bool = True
    scan: bool = False
    remat: bool = False
    # "frame_mean": subtract each input frame's mean over the mel bins before the projection. On
    # log-mel, loudness is an offset shared by all bins; the linear projection turns it into one fixed
    # latent direction that LayerNorm does not remove, and wav2vec 2.0's quantizer then codes loudness
    # (docs/methods/wav2vec2_conformer.md). "none": the input as is.
    input_norm: str = "none"
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32
    matmul_dtype: Any = None  # bfloat16: bf16 operands, float32 results (models/mixed_matmul.py)

    @nn.compact
    def __call__(
        self,
        features: jax.Array,
        valid: jax.Array | None = None,
        span_mask: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> dict[str, jax.Array]:
        deterministic = not train
        if valid is None:
            valid = jnp.ones(features.shape[:2], bool)
        if self.input_norm == "frame_mean":
            features = features - jnp.mean(features, axis=-1, keepdims=True)
        elif self.input_norm != "none":
            raise ValueError(f"Conformer.input_norm={self.input_norm!r} is not 'none' or 'frame_mean'")
        stacked, valid = stack_frames(features, valid.astype(bool), self.stack)
        stacked = nn.with_logical_constraint(stacked.astype(self.dtype), ("batch", "length", "mel"))
        projected = _dense(
            self.d_model, ("mel", "embed"), self.dtype, self.param_dtype, "input_projection", self.matmul_dtype
        )(stacked)
        weights = valid.astype(jnp.float32)[..., None]
        latent_penalty = jnp.sum(jnp.square(projected.astype(jnp.float32)) * weights) / jnp.maximum(
            jnp.sum(weights) * self.d_model, 1.0
        )
        latent = layer_norm("latent_norm", dtype=self.dtype, param_dtype=self.param_dtype)(projected)
        latent = nn.with_logical_constraint(latent, BLE)

        x = Dropout(self.input_dropout_rate)(latent, deterministic=deterministic)
        mask_emb = self.param(
            "mask_emb",
            nn.with_logical_partitioning(nn.initializers.uniform(1.0), ("embed",)),
            (self.d_model,),
            self.param_dtype,
        )
        if span_mask is not None:
            x = jnp.where(span_mask[..., None], mask_emb.astype(self.dtype), x)

        x = ConformerLayers(
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            kernel_size=self.kernel_size,
            first_kernel_size=self.first_kernel_size,
            conv_first=self.conv_first,
            conv_norm=self.conv_norm,
            rotary=self.rotary,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            activation_dropout_rate=self.activation_dropout_rate,
            conv_custom_vjp=self.conv_custom_vjp,
            scan=self.scan,
            remat=self.remat,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            matmul_dtype=self.matmul_dtype,
            name="layers",
        )(x, valid, deterministic)
        frames = jnp.where(valid[..., None], x, jnp.zeros((), x.dtype))
        return {
            "frames": frames,
            "clip": masked_mean(frames, valid),
            "latent": latent,
            "valid": valid,
            "latent_penalty": latent_penalty,
            "stacked": stacked,
        }
