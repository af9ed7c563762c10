"""Audio ViT: the EAT / data2vec 2.0 encoder on 16x16 patches of a [time, mel] spectrogram.

Features [batch, time, mel] are cut into patches of `patch_size` frames x `patch_size` mel bins (time is
zero-padded up to a multiple of the patch size), flattened time-major (patch index = time_patch *
mel_patches + mel_patch, as in Audio-MAE / EAT) and embedded by one dense layer (the same map as a
stride-16 conv, without the conv). Fixed 2-D sin-cos positions are added, then (optionally) only the
`visible` patches are gathered - the masked student encodes ~20% of the tokens, which is where EAT's
speed comes from - and a CLS token is prepended.

Blocks follow EAT's code (`AltBlock` with `layer_norm_first=False`): post-LN, `x = LN1(x + attn(x));
x = LN2(x + mlp(x))`, with a LayerNorm on the input tokens; `pre_norm=True` gives the usual pre-LN ViT
(`x + attn(LN(x))`, final LayerNorm). Each block also returns its feed-forward output before the
residual, which is what EAT's teacher averages into targets (`end_of_block_targets=False`).

Attention (`models/attention.py`, params `attn/qkv/{kernel,bias}`, `attn/out/{kernel,bias}`), LayerNorm and
the exact GELU (`models/layers.py`) are the modules the Conformer uses too.

Padding: a patch whose frames are all padding (`valid` False) is invalid; attention never attends to
invalid tokens (the CLS token is always valid), and the objective leaves invalid patches out of targets
and losses.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audiossl_jax.models import mixed_matmul, posemb
from audiossl_jax.models.attention import SelfAttention
from audiossl_jax.models.layers import gelu_exact, layer_norm

Dtype = Any

_dense_init = nn.initializers.normal(stddev=0.02)  # fairseq init_bert_params
_zeros = nn.initializers.zeros


def patch_grid(frames: int, mel: int, patch_size: int) -> tuple[int, int]:
    """(time patches, mel patches) for an input of `frames` x `mel` (time padded up to a multiple)."""
    if mel % patch_size:
        raise ValueError(f"mel bins ({mel}) must be a multiple of model.patch_size ({patch_size})")
    return -(-frames // patch_size), mel // patch_size


def patchify(features: jax.Array, patch_size: int) -> jax.Array:
    """[batch, time, mel] -> [batch, time_patches * mel_patches, patch_size**2], time-major patches,
    pixels ordered (frame, mel bin) within a patch like a conv kernel [patch, patch]."""
    b, t, m = features.shape
    h, w = patch_grid(t, m, patch_size)
    if h * patch_size != t:
        features = jnp.pad(features, ((0, 0), (0, h * patch_size - t), (0, 0)))
    x = features.reshape(b, h, patch_size, w, patch_size).transpose(0, 1, 3, 2, 4)
    return x.reshape(b, h * w, patch_size * patch_size)


def patch_validity(valid: jax.Array, patch_size: int, mel_patches: int) -> jax.Array:
    """[batch, time] frame validity -> [batch, patches]: a patch is valid if any of its frames is."""
    b, t = valid.shape
    h = -(-t // patch_size)
    valid = jnp.pad(valid, ((0, 0), (0, h * patch_size - t)))
    rows = valid.reshape(b, h, patch_size).any(axis=-1)
    return jnp.repeat(rows, mel_patches, axis=1)


class MlpBlock(nn.Module):
    """Dense -> GELU (exact, as torch nn.GELU) -> Dense."""

    mlp_dim: int  # hidden width
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None  # bfloat16: bf16 operands, float32 results (models/mixed_matmul.py)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        dot = mixed_matmul.dot_general_for(self.matmul_dtype)
        h = nn.Dense(
            self.mlp_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            dot_general=dot,
            name="fc1",
            kernel_init=nn.with_logical_partitioning(_dense_init, ("embed", "mlp")),
            bias_init=nn.with_logical_partitioning(_zeros, ("mlp",)),
        )(x)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = gelu_exact(h)
        return nn.Dense(
            dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            dot_general=dot,
            name="fc2",
            kernel_init=nn.with_logical_partitioning(_dense_init, ("mlp", "embed")),
            bias_init=nn.with_logical_partitioning(_zeros, ("embed",)),
        )(h)


def _drop_path(x: jax.Array, rate, rng: jax.Array) -> jax.Array:
    """Stochastic depth: zero a whole residual branch per example, scale the kept ones by 1/(1-rate)."""
    keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class EncoderBlock(nn.Module):
    """A transformer block with a scan-shaped signature: (x, drop_rate, key_valid) -> (x, (x, ffn)).

    `ffn` is the feed-forward output before the residual (EAT's per-layer target); `drop_rate` is this
    layer's stochastic depth rate (a float, or a traced scalar under `scan`).
    """

    num_heads: int
    mlp_dim: int
    pre_norm: bool = False  # False: EAT's post-LN block; True: pre-LN
    ln_eps: float = 1e-6
    deterministic: bool = True  # no stochastic depth (inference, teacher)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None  # bfloat16: bf16 operands, float32 results (models/mixed_matmul.py)

    @nn.compact
    def __call__(self, x, drop_rate, key_valid):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, matmul_dtype=self.matmul_dtype)
        ln = lambda name: layer_norm(name, eps=self.ln_eps, dtype=self.dtype, param_dtype=self.param_dtype)  # noqa: E731
        attn = SelfAttention(self.num_heads, qkv_init=_dense_init, out_init=_dense_init, name="attn", **kw)
        mlp = MlpBlock(self.mlp_dim, name="mlp", **kw)
        use_drop = not self.deterministic and not (isinstance(drop_rate, float) and drop_rate == 0.0)
        branch = (lambda y: _drop_path(y, drop_rate, self.make_rng("dropout"))) if use_drop else (lambda y: y)
        if self.pre_norm:
            x = x + branch(attn(ln("norm1")(x), key_valid))
            ffn = mlp(ln("norm2")(x))
            x = x + branch(ffn)
        else:
            x = ln("norm1")(x + branch(attn(x, key_valid)))
            ffn = mlp(x)
            x = ln("norm2")(x + branch(ffn))
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, (x, ffn)


class AudioViT(nn.Module):
    """Audio ViT encoder. Call: (features, valid=None, visible=None, *, train, return_layers) -> dict.

    * features [B, T, mel]; valid [B, T] bool (None = all valid).
    * visible: int [B, C, K] patch indices (C masked copies per clip, K visible patches each) or None for
      the full input. With `visible`, the output batch is B*C (clip-major: row b*C + c).
    Returns the encoder interface (`models/factory.py`): `frames` [B', n, dim] (final outputs of the
    encoded patch tokens, time-major: n = time patches x mel patches, or K with `visible`), `valid`
    [B', n] (patch validity), `clip` [B', dim] (the CLS output), and `cls` (the same CLS output: the
    encoder has a CLS token); with `return_layers`, also `layer_ffn` and `layer_out`, each
    [depth, B', 1 + n, dim] (feed-forward outputs and block outputs of every layer, CLS first).
    """

    dim: int = 768  # model width
    depth: int = 12  # transformer blocks
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16  # square patches: frames x mel bins
    pre_norm: bool = False  # False: EAT's post-LN blocks with an input LayerNorm
    ln_eps: float = 1e-6
    drop_path: float = 0.0  # stochastic depth, rising linearly from 0 to this over the blocks
    cls_init_std: float = 1.0  # EAT draws the CLS token from N(0, 1)
    scan: bool = False  # nn.scan over blocks (fast compile, params stacked on a `layers` axis)
    remat: bool = False  # recompute block activations in the backward pass
    dtype: Dtype = jnp.float32  # compute dtype
    param_dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None  # bfloat16: bf16 operands, float32 results (models/mixed_matmul.py)

    def grid(self, frames: int, mel: int) -> tuple[int, int]:
        return patch_grid(frames, mel, self.patch_size)

    @nn.compact
    def __call__(
        self,
        features: jax.Array,
        valid: jax.Array | None = None,
        visible: jax.Array | None = None,
        *,
        train: bool = False,
        return_layers: bool = False,
    ) -> dict[str, jax.Array]:
        b, t, m = features.shape
        h, w = self.grid(t, m)
        if valid is None:
            valid = jnp.ones((b, t), bool)
        patches = patchify(features.astype(self.dtype), self.patch_size)
        x = nn.Dense(
            self.dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            dot_general=mixed_matmul.dot_general_for(self.matmul_dtype),
            name="patch_embed",
            kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("kernel", "embed")),
            bias_init=nn.with_logical_partitioning(_zeros, ("embed",)),
        )(patches)
        x = x + jnp.asarray(posemb.sincos_2d(self.dim, h, w), self.dtype)[None]
        token_valid = patch_validity(valid, self.patch_size, w)
        if visible is not None:
            rows = jnp.arange(b)[:, None, None]
            x = x[rows, visible].reshape(-1, visible.shape[-1], self.dim)  # [B*C, K, dim]
            token_valid = token_valid[rows, visible].reshape(-1, visible.shape[-1])
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        cls = self.param(
            "cls_token",
            nn.with_logical_partitioning(nn.initializers.normal(self.cls_init_std), (None, None, "embed")),
            (1, 1, self.dim),
            self.param_dtype,
        )
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.dim)), x], axis=1)
        key_valid = jnp.concatenate([jnp.ones((x.shape[0], 1), bool), token_valid], axis=1)
        if not self.pre_norm:
            x = layer_norm("input_norm", eps=self.ln_eps, dtype=self.dtype, param_dtype=self.param_dtype)(x)

        x, (layer_out, layer_ffn) = self._blocks(x, key_valid, train)
        if self.pre_norm:
            x = layer_norm("final_norm", eps=self.ln_eps, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        out = {"frames": x[:, 1:], "valid": token_valid, "clip": x[:, 0], "cls": x[:, 0]}
        if return_layers:
            out.update(layer_out=layer_out, layer_ffn=layer_ffn)
        return out

    def _blocks(self, x, key_valid, train):
        rates = np.linspace(0.0, self.drop_path, self.depth)  # EAT fine-tuning: linspace(0, rate, depth)
        kwargs = dict(
            num_heads=self.num_heads,
            mlp_dim=int(self.dim * self.mlp_ratio),
            pre_norm=self.pre_norm,
            ln_eps=self.ln_eps,
            deterministic=not train or self.drop_path == 0.0,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            matmul_dtype=self.matmul_dtype,
        )
        block = nn.remat(EncoderBlock, prevent_cse=not self.scan) if self.remat else EncoderBlock
        if self.scan:
            stack = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast),
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            return stack(**kwargs, name="blocks")(x, jnp.asarray(rates, jnp.float32), key_valid)
        outs, ffns = [], []
        for i in range(self.depth):
            x, (o, f) = block(**kwargs, name=f"block_{i}")(x, float(rates[i]), key_valid)
            outs.append(o)
            ffns.append(f)
        return x, (jnp.stack(outs), jnp.stack(ffns))
