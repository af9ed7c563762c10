"""The compute dtype of a run (`config.train.compute_dtype`), which each objective passes to its modules."""

from __future__ import annotations

import jax.numpy as jnp


def compute_dtype(config) -> jnp.dtype:
    """`config.train.compute_dtype` as a dtype (float32 on CPU; bfloat16 on TPU/GPU)."""
    name = config.train.compute_dtype
    try:
        return jnp.dtype(name)
    except TypeError as e:
        raise ValueError(f"config.train.compute_dtype={name!r} is not a dtype name") from e
