"""The precision of a run, which each objective passes to its modules.

* `config.train.compute_dtype`: activations and matmuls (float32 on CPU; bfloat16 on TPU/GPU).
* `config.train.matmul_dtype`: the operands of the encoders' and decoder's matmuls when the compute
  dtype is float32. "bfloat16" rounds them to bfloat16 and keeps float32 results, ~1.8x the matmul
  throughput on CPUs with AVX512-BF16 or AMX (`models/mixed_matmul.py`); "float32" (default) leaves
  them alone. Ignored when the compute dtype is not float32.
"""

from __future__ import annotations

import jax.numpy as jnp

from audiossl_jax.models import mixed_matmul


def compute_dtype(config) -> jnp.dtype:
    """`config.train.compute_dtype` as a dtype (float32 on CPU; bfloat16 on TPU/GPU)."""
    name = config.train.compute_dtype
    try:
        return jnp.dtype(name)
    except TypeError as e:
        raise ValueError(f"config.train.compute_dtype={name!r} is not a dtype name") from e


def matmul_dtype(config):
    """`config.train.matmul_dtype` for the modules' `matmul_dtype`: None (plain matmuls in the compute
    dtype) or jnp.bfloat16 (bf16 operands, float32 results)."""
    name = config.train.get("matmul_dtype", "float32")
    try:
        resolved = mixed_matmul.resolve(name)
    except ValueError as e:
        raise ValueError(f"config.train.matmul_dtype={name!r} is not one of {mixed_matmul.MATMUL_DTYPES}") from e
    return resolved if compute_dtype(config) == jnp.float32 else None
