"""Small layers every encoder shares: LayerNorm, exact GELU, dropout, masked pooling over time.

* `layer_norm`: `nn.LayerNorm` with logically partitioned scale and bias (one axis name).
* `gelu_exact`: erf GELU (torch `nn.GELU`) with a hand-written derivative (faster on XLA:CPU).
* `Dropout`: inverted dropout from 8 random bits per element (`byte_keep_mask`).
* `masked_mean`, `masked_max_plus_mean`: clip vectors [B, D] of frames [B, T, D] over the valid
  frames [B, T] (zeros for a clip without any valid frame).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def layer_norm(
    name: str, *, eps: float = 1e-5, axis: str = "embed", dtype: Any = jnp.float32, param_dtype: Any = jnp.float32
) -> nn.LayerNorm:
    """LayerNorm over the last axis; scale and bias carry the logical axis name `axis`.
    eps 1e-5 is torch's default (the Conformer's); EAT's ViT uses 1e-6."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis,)),
    )


# ----------------------------------------------------------------------------- activations
@jax.custom_vjp
def gelu_exact(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as torch nn.GELU, with a hand-written derivative.

    Numerically `jax.nn.gelu(x, approximate=False)`; its autodiff backward fused with a neighbouring
    LayerNorm runs ~4x slower on XLA:CPU than this explicit x-saving VJP (docs/methods/eat.md, Speed).
    """
    return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x):
    return gelu_exact(x), x


def _gelu_bwd(x, g):
    cdf = 0.5 * (1.0 + jax.lax.erf(x * np.float32(1 / np.sqrt(2))))
    pdf = jnp.exp(-0.5 * jnp.square(x)) * np.float32(1 / np.sqrt(2 * np.pi))
    return (g * (cdf + x * pdf).astype(g.dtype),)


gelu_exact.defvjp(_gelu_fwd, _gelu_bwd)


# ----------------------------------------------------------------------------- dropout
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


# ----------------------------------------------------------------------------- pooling over time
def masked_mean(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of x [B, T, D] over the valid frames [B, T] of each clip -> [B, D] (zeros if none).

    Padded frames are selected out (not multiplied by 0), so NaN or inf there cannot leak in; the
    count is an integer sum (exact in bfloat16 too).
    """
    total = jnp.sum(jnp.where(valid[..., None], x, jnp.zeros((), x.dtype)), axis=1)
    count = jnp.sum(valid, axis=1, dtype=jnp.int32)[:, None]
    return total / jnp.maximum(count, 1).astype(x.dtype)


def masked_max_plus_mean(frames: jax.Array, valid: jax.Array) -> jax.Array:
    """max over valid frames + mean over valid frames (BYOL-A's pooling), [B, T, D] -> [B, D].

    A clip without any valid frame gets zeros (not NaN/-inf).
    """
    neg = jnp.asarray(jnp.finfo(frames.dtype).min, frames.dtype)
    peak = jnp.where(valid[..., None], frames, neg).max(axis=1)
    return jnp.where(valid.any(axis=1)[:, None], peak + masked_mean(frames, valid), jnp.zeros((), frames.dtype))
