"""EAT's lightweight CNN decoder (data2vec 2.0 `Decoder2d`) on the 2-D patch grid.

Each of `num_layers` layers: grouped 2-D conv (kernel k, `groups` groups, 'same' padding) -> LayerNorm
over channels without affine -> GELU -> + the layer's input; then one dense projection to `out_dim`.

Grouped convolution has three numerically equal implementations (`conv_impl`):
* `feature_group_count`: one XLA grouped conv; the natural choice on GPU/TPU, but on XLA:CPU its weight
  gradient is ~75x slower than dense convs.
* `per_group`: one dense `lax.conv_general_dilated` per group on a channel slice (fastest on XLA:CPU).
* `block_diagonal`: one dense conv with a block-diagonal kernel (groups x the FLOPs).
`auto` picks `per_group` on CPU and `feature_group_count` elsewhere. Measured on this project's 2-core
CPU, one layer's forward + backward on [16, 64, 8, 384] with 16 groups: per_group 0.12 s,
block_diagonal 0.80 s, feature_group_count 9.0 s (CPU time; docs/methods/eat.md, Speed). All share one
kernel parameter of shape [k, k, in_channels / groups, out_channels] (XLA's grouped-conv layout, torch's transposed).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from audiossl_jax.models import mixed_matmul
from audiossl_jax.models.layers import gelu_exact

Dtype = Any
CONV_IMPLS = ("auto", "per_group", "block_diagonal", "feature_group_count")
_DIMS = ("NHWC", "HWIO", "NHWC")


def resolve_conv_impl(impl: str) -> str:
    if impl not in CONV_IMPLS:
        raise ValueError(f"model.decoder_conv_impl={impl!r} is not one of {CONV_IMPLS}")
    if impl == "auto":
        return "per_group" if jax.default_backend() == "cpu" else "feature_group_count"
    return impl


def grouped_conv2d(x: jax.Array, kernel: jax.Array, groups: int, impl: str) -> jax.Array:
    """'Same'-padded stride-1 grouped conv. x [B, H, W, Cin], kernel [k, k, Cin/groups, Cout]."""
    impl = resolve_conv_impl(impl)
    cin, cout = x.shape[-1], kernel.shape[-1]
    if cin % groups or cout % groups or kernel.shape[2] * groups != cin:
        raise ValueError(
            f"grouped conv: {cin} input / {cout} output channels and kernel {kernel.shape} "
            f"do not split into {groups} groups"
        )

    def conv(a, k, **kw):
        return lax.conv_general_dilated(a, k, (1, 1), "SAME", dimension_numbers=_DIMS, **kw)

    if impl == "feature_group_count":
        return conv(x, kernel, feature_group_count=groups)
    go = cout // groups
    if impl == "per_group":  # split (not slices): its transpose is a concatenate, not pad + add
        return jnp.concatenate(
            [conv(xg, kg) for xg, kg in zip(jnp.split(x, groups, axis=-1), jnp.split(kernel, groups, axis=-1))], axis=-1
        )
    # block_diagonal: dense kernel [k, k, Cin, Cout], zero outside the diagonal blocks
    k = kernel.reshape(kernel.shape[:3] + (groups, go))
    dense = jnp.einsum("abigo,hg->abhigo", k, jnp.eye(groups, dtype=kernel.dtype))
    return conv(x, dense.reshape(kernel.shape[:2] + (cin, cout)))


def _torch_conv_init(fan_in: int):
    """torch's default conv/linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform, a=sqrt(5))."""
    bound = fan_in**-0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class GroupedConv2D(nn.Module):
    """Grouped 2-D conv with bias, 'same' padding, stride 1."""

    features: int  # output channels
    kernel_size: int = 3
    groups: int = 16
    conv_impl: str = "auto"  # see module docstring
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        fan_in = cin // self.groups * self.kernel_size**2
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(_torch_conv_init(fan_in), (None, None, None, "channels")),
            (self.kernel_size, self.kernel_size, cin // self.groups, self.features),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(_torch_conv_init(fan_in), ("channels",)),
            (self.features,),
            self.param_dtype,
        )
        y = grouped_conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.groups, self.conv_impl)
        return y + bias.astype(self.dtype)


class CNNDecoder2D(nn.Module):
    """x [B, H, W, C] (tokens laid on the patch grid) -> predictions [B, H, W, out_dim]."""

    dim: int = 768  # decoder channels (EAT: the encoder width)
    out_dim: int = 768  # prediction width (the target width)
    num_layers: int = 6
    kernel_size: int = 3
    groups: int = 16
    ln_eps: float = 1e-5  # fairseq LayerNorm default
    conv_impl: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    # bfloat16: bf16 operands, float32 results for the final projection (models/mixed_matmul.py); the
    # grouped convs stay in `dtype` (bf16 operands make them no faster on XLA:CPU)
    matmul_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        for i in range(self.num_layers):
            y = GroupedConv2D(
                self.dim,
                self.kernel_size,
                self.groups,
                self.conv_impl,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"conv_{i}",
            )(x)
            y = nn.LayerNorm(epsilon=self.ln_eps, use_scale=False, use_bias=False, dtype=self.dtype, name=f"norm_{i}")(
                y
            )
            y = gelu_exact(y)
            x = y + x if y.shape[-1] == x.shape[-1] else y  # data2vec: residual only when widths match
            x = nn.with_logical_constraint(x, ("batch", "length", "mel", "channels"))
        fan_in = x.shape[-1]
        return nn.Dense(
            self.out_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            dot_general=mixed_matmul.dot_general_for(self.matmul_dtype),
            name="proj",
            kernel_init=nn.with_logical_partitioning(_torch_conv_init(fan_in), ("channels", "embed")),
            bias_init=nn.with_logical_partitioning(_torch_conv_init(fan_in), ("embed",)),
        )(x)
