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

    Same values as `nn.max_pool(x, (w, w), strides=(w, w))`, written as a reshape + max: its backward
    is an elementwise select instead of XLA's select-and-scatter, 3.4x faster forward + backward on
    XLA:CPU for [16, 400, 64, 32] (docs/methods/slicer.md, Speed). Where several inputs of a window
    tie for the max, the gradient is split between them (after a ReLU only all-zero windows tie, and
    the ReLU passes no gradient to those).
    """
    b, h, w, c = x.shape
    x = x[:, : h // window * window, : w // window * window]
    return x.reshape(b, h // window, window, w // window, window, c).max(axis=(2, 4))


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


class ConvBlock(nn.Module):
    """3x3 conv (same padding) -> BatchNorm -> ReLU -> 2x2 max-pool."""

    channels: int  # output channels
    bn_momentum: float = 0.9  # running-statistics momentum (0.9 == PyTorch BatchNorm2d's 0.1)
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array, train: bool) -> jax.Array:
        x = nn.Conv(
            self.channels,
            (3, 3),
            padding="SAME",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.kaiming_uniform(), ("kernel", None, None, "channels")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("channels",)),
            name="conv",
        )(x)
        mask = jnp.broadcast_to(valid[:, :, None, None], x.shape)
        # momentum 0.9 / eps 1e-5 == PyTorch BatchNorm2d defaults (momentum 0.1).
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=1e-5,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("channels",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("channels",)),
            name="bn",
        )(x, mask=mask)
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
