"""BYOL-A "AudioNTT2020" CNN encoder (Niizumi et al. 2021), the encoder of SLICER (Seth et al. 2023).

features [batch, time, mel] -> 3 x (3x3 conv, BatchNorm, ReLU, 2x2 max-pool) -> per frame: flatten
(mel/8 x channels) -> Linear -> ReLU -> Dropout -> Linear -> ReLU -> frames [batch, time/8, dim];
clip = max over valid frames + mean over valid frames (BYOL-A's pooling).

The flatten order (mel outer, channel inner) equals the PyTorch reference's `permute(0, 3, 2, 1)`
+ reshape, so weights can be ported. Layout is NHWC with H = time, W = mel.
BatchNorm running statistics live in the `batch_stats` collection (the objective keeps them in
`aux`); padded frames (valid == False) are zeroed and excluded from the BatchNorm statistics.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiossl_jax.models import mixed_matmul
from audiossl_jax.models.layers import masked_max_plus_mean

POOL = 2  # every block halves time and mel


def pool_valid(valid: jax.Array, factor: int, out_frames: int) -> jax.Array:
    """A pooled frame is valid if any of the `factor` input frames it covers is valid."""
    batch = valid.shape[0]
    return valid[:, : out_frames * factor].reshape(batch, out_frames, factor).any(-1)


def max_pool(x: jax.Array, window: int = POOL) -> jax.Array:
    """Non-overlapping `window` x `window` max-pool of x [B, H, W, C] ('VALID': trailing rows dropped).

    Same values as `nn.max_pool(x, (w, w), strides=(w, w))`, and the same gradient where no window
    ties (a tie sends it all to the first maximum in row-major order; after a ReLU only all-zero
    windows tie, and the ReLU passes no gradient to those). Written as elementwise maxima over the
    window's strided slices with a custom VJP: the forward records which input won (int8), and the
    backward routes the gradient there. XLA's select-and-scatter (`nn.max_pool`'s backward) was 3.4x
    slower on XLA:CPU for [16, 400, 64, 32] (docs/methods/slicer.md, Speed); and an autodiff backward
    that compares the input with the pooled maximum again breaks when XLA recomputes the input in a
    different fusion with different rounding (measured at --xla_backend_optimization_level=0: 28% of
    the gradient lost after the fused BatchNorm).
    """
    b, h, w, c = x.shape
    return _max_pool_whole(x[:, : h // window * window, : w // window * window], window)


def _window_slices(x: jax.Array, window: int) -> list[jax.Array]:
    """The window x window strided slices of x [B, H, W, C] (H, W multiples of window), row-major."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return [x[:, :, i, :, j] for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_whole(x: jax.Array, window: int) -> jax.Array:
    return _max_pool_fwd(x, window)[0]


def _max_pool_fwd(x, window):
    slices = _window_slices(x, window)
    best, winner = slices[0], jnp.zeros(slices[0].shape, jnp.int8)
    for k, candidate in enumerate(slices[1:], 1):
        take = candidate > best
        best, winner = jnp.where(take, candidate, best), jnp.where(take, jnp.int8(k), winner)
    return best, winner


def _max_pool_bwd(window, winner, g):
    b, h, w, c = g.shape
    parts = [jnp.where(winner == k, g, jnp.zeros_like(g)) for k in range(window * window)]
    rows = [jnp.stack(parts[i * window : (i + 1) * window], axis=3) for i in range(window)]  # [B, H, W, window, C]
    return (jnp.stack(rows, axis=2).reshape(b, h * window, w * window, c),)


_max_pool_whole.defvjp(_max_pool_fwd, _max_pool_bwd)


def conv_block_clips(block_outputs: list[jax.Array], valid: jax.Array) -> list[jax.Array]:
    """Clip features of conv block outputs: each [B, T_i, M_i, C] (block i of `CNNEncoder`, in order
    from block 0) flattened per frame to M_i x C (mel outer, as the encoder's flatten) and max + mean
    pooled over its valid frames ([B, T] input `valid`, halved per block as in the encoder)."""
    clips = []
    for x in block_outputs:
        valid = pool_valid(valid, POOL, x.shape[1])
        batch, frames, mel, channels = x.shape
        clips.append(masked_max_plus_mean(x.reshape(batch, frames, mel * channels), valid))
    return clips


class Conv3x3(nn.Module):
    """3x3 'SAME' convolution that returns its bias instead of adding it: (conv(x) [B, H, W, C], bias
    [C]). Params `kernel` [3, 3, in, C] (Kaiming-uniform) and `bias` [C] (zeros): the names, shapes and
    initial values of the `nn.Conv(C, (3, 3), padding="SAME", kernel_init=kaiming_uniform())` that
    BYOL-A's block is ported from."""

    channels: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.kaiming_uniform(), ("kernel", None, None, "channels")),
            (3, 3, x.shape[-1], self.channels),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("channels",)),
            (self.channels,),
            self.param_dtype,
        )
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y, bias.astype(self.dtype)


class MaskedBatchNorm(nn.Module):
    """BatchNorm over (batch, time, mel) of the valid frames, for an input whose per-channel `offset`
    (the conv bias) is not yet added: y = BN(x + offset), the same function, params (`scale`, `bias`)
    and running statistics (`batch_stats`: `mean`, `var`, biased variance, flax's momentum
    convention) as `nn.BatchNorm(mask=...)` on x + offset.

    Faster on XLA:CPU than `nn.BatchNorm` after `nn.Conv`: in train mode the offset cancels (it only
    shifts the running mean), the statistics are one fused sum / sum-of-squares pass with the [B, T]
    mask broadcast on the fly (no [B, T, mel, C] mask), and the output is one multiply-add.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, offset: jax.Array, valid: jax.Array, train: bool) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), ("channels",)),
            (channels,),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("channels",)),
            (channels,),
            self.param_dtype,
        )
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))
        if train:
            weight = valid.astype(jnp.float32)[:, :, None, None]  # [B, T, 1, 1]
            count = jnp.maximum(weight.sum() * x.shape[2], 1.0)
            x32 = x.astype(jnp.float32)
            mean = (x32 * weight).sum((0, 1, 2)) / count  # of x, without the offset
            var = jnp.maximum((jnp.square(x32) * weight).sum((0, 1, 2)) / count - jnp.square(mean), 0.0)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * (mean + offset)
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        else:
            mean, var = ra_mean.value - offset, ra_var.value
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        return x * mul.astype(self.dtype) + (bias - mean * mul).astype(self.dtype)


class ConvBlock(nn.Module):
    """3x3 conv (same padding) -> BatchNorm -> ReLU -> 2x2 max-pool (BYOL-A's block; params `conv`
    and `bn` as `nn.Conv` and `nn.BatchNorm`; the conv bias is applied inside the BatchNorm)."""

    channels: int  # output channels
    bn_momentum: float = 0.9  # running-statistics momentum (0.9 == PyTorch BatchNorm2d's 0.1)
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array, train: bool) -> jax.Array:
        x, conv_bias = Conv3x3(self.channels, self.dtype, self.param_dtype, name="conv")(x)
        # momentum 0.9 / eps 1e-5 == PyTorch BatchNorm2d defaults (momentum 0.1).
        x = MaskedBatchNorm(self.bn_momentum, 1e-5, self.dtype, self.param_dtype, name="bn")(x, conv_bias, valid, train)
        x = nn.relu(x)
        x = max_pool(x)
        return nn.with_logical_constraint(x, ("batch", "length", "mel", "channels"))


class CNNEncoder(nn.Module):
    """AudioNTT2020 (BYOL-A) encoder with the encoder interface (`models/factory.py`): (features, valid,
    *, train) -> {"frames": [B, T/8, dim], "valid": [B, T/8], "clip": [B, dim] (max + mean)}."""

    num_mel_bins: int = 64  # input mel bins (must be >= 8)
    channels: int = 64  # conv channels of every block
    blocks: int = 3  # conv blocks; time and mel shrink by 2**blocks
    dim: int = 2048  # width of the two FC layers = embedding size
    dropout: float = 0.3  # between the two FC layers
    bn_momentum: float = 0.9  # BatchNorm running-statistics momentum of every block
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32
    # bfloat16: bf16 operands, float32 results for the two FC layers (models/mixed_matmul.py); the convs
    # stay in `dtype` (bf16 operands make them no faster on XLA:CPU)
    matmul_dtype: Any = None

    @property
    def downsample(self) -> int:
        return POOL**self.blocks

    @nn.compact
    def __call__(
        self, features: jax.Array, valid: jax.Array | None = None, *, train: bool = False
    ) -> dict[str, jax.Array]:
        batch, time, mel = features.shape
        if mel != self.num_mel_bins:
            raise ValueError(f"CNNEncoder.num_mel_bins={self.num_mel_bins} but features have {mel} mel bins")
        if time < self.downsample or mel < self.downsample:
            raise ValueError(f"CNNEncoder needs >= {self.downsample} frames and mel bins, got {features.shape}")
        if valid is None:
            valid = jnp.ones((batch, time), bool)
        x = jnp.where(valid[..., None], features, 0).astype(self.dtype)[..., None]
        x = nn.with_logical_constraint(x, ("batch", "length", "mel", None))  # one input channel
        for i in range(self.blocks):
            x = ConvBlock(self.channels, self.bn_momentum, self.dtype, self.param_dtype, name=f"block{i}")(
                x, valid, train
            )
            valid = pool_valid(valid, POOL, x.shape[1])
        _, frames, mel_out, channels = x.shape
        x = x.reshape(batch, frames, mel_out * channels)  # (mel outer, channel inner) as in BYOL-A
        dense = dict(
            dtype=self.dtype, param_dtype=self.param_dtype, dot_general=mixed_matmul.dot_general_for(self.matmul_dtype)
        )
        x = nn.Dense(
            self.dim,
            **dense,
            name="fc1",
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
        )(x)
        x = nn.relu(nn.with_logical_constraint(x, ("batch", "length", "mlp")))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(
            self.dim,
            **dense,
            name="fc2",
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        )(x)
        x = nn.relu(x)
        frames_out = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        clip = nn.with_logical_constraint(masked_max_plus_mean(frames_out, valid), ("batch", "embed"))
        return {"frames": frames_out, "clip": clip, "valid": valid}
