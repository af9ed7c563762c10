"""Projection heads on a clip embedding (SLICER / Contrastive Clustering style).

* `InstanceHead`: one linear layer dim -> out (SLICER: 2048 -> 128), or with `hidden` > 0 MoCo v2's
  MLP (Linear dim -> hidden, ReLU, Linear hidden -> out); the loss L2-normalises.
* `ClusterHead`: Linear dim -> dim, ReLU, Linear dim -> K, softmax over the K clusters
  (SLICER: 2048 -> 2048 -> 128), giving each clip a soft cluster assignment.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _dense(features: int, names: tuple, dtype, param_dtype, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), names[1:]),
    )


class InstanceHead(nn.Module):
    """Projection [batch, dim] -> [batch, out] for the instance-level contrastive loss: linear (SLICER,
    MoCo v1), or an MLP with one ReLU hidden layer of `hidden` units (MoCo v2) when `hidden` > 0."""

    out: int = 128  # projection size
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32
    hidden: int = 0  # 0: linear

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.hidden:
            x = _dense(self.hidden, ("embed", "mlp"), self.dtype, self.param_dtype, "hidden")(x)
            x = nn.relu(nn.with_logical_constraint(x, ("batch", "mlp")))
            return _dense(self.out, ("mlp", None), self.dtype, self.param_dtype, "proj")(x)
        return _dense(self.out, ("embed", None), self.dtype, self.param_dtype, "proj")(x)


class ClusterHead(nn.Module):
    """MLP + softmax [batch, dim] -> [batch, clusters] soft assignments (rows sum to 1)."""

    clusters: int = 128  # K, number of clusters
    hidden: int = 2048  # hidden width
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _dense(self.hidden, ("embed", "mlp"), self.dtype, self.param_dtype, "hidden")(x)
        x = nn.relu(nn.with_logical_constraint(x, ("batch", "mlp")))
        logits = _dense(self.clusters, ("mlp", "classes"), self.dtype, self.param_dtype, "logits")(x)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
