"""Matmuls with bfloat16 operands and float32 results, for float32 models (`config.train.matmul_dtype`).

On CPUs with AVX512-BF16 or AMX, XLA:CPU runs a dot whose operands are bfloat16 and whose result is
float32 about 1.8x faster than the float32 dot (2048^3 on this project's 2-core machine: ~380 vs
~205 GFLOP/s), while a dot with a bfloat16 *result* runs at float32 speed or slower. Two things
stand in the way of using it from a float32 model:

* flax's `nn.Dense(dtype=bfloat16)` asks for a bfloat16 result (the slow kind);
* autodiff transposes a bf16 x bf16 -> f32 dot into f32 x bf16 dots, which XLA runs in float32.

`dot_general` (a drop-in for `lax.dot_general`, for `nn.Dense(dot_general=...)` and
`jnp.einsum(..., _dot_general=...)`) therefore has its own VJP: the forward dot and the gradient
with respect to the left operand (the activations, for a Dense layer) take bfloat16 operands with a
float32 result; the gradient with respect to the right operand (a Dense layer's kernel) is a float32
dot of the float32 cotangent and the bfloat16-rounded left operand (XLA:CPU has no fast form for that
transposed product in bfloat16 and fails to run some of them). Parameters, activations, LayerNorm,
softmax and the optimizer stay float32; only the operands of these matmuls are rounded to bfloat16,
as in TPU/GPU mixed precision. The residual saved for the backward pass is the bfloat16 copy of each
operand (half the memory of the float32 one).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_BF16 = jnp.bfloat16
_F32 = jnp.float32
MATMUL_DTYPES = ("float32", "bfloat16")


def _remaining(ndim: int, *removed) -> list[int]:
    drop = {int(i) for axes in removed for i in axes}
    return [i for i in range(ndim) if i not in drop]


def _ranges_like(*lists):
    start = 0
    for x in lists:
        yield tuple(range(start, start + len(x)))
        start += len(x)


def _grad_of_lhs(g, lhs_ndim: int, rhs, dims, *, swap_ans: bool = False):
    """d(dot_general(lhs, rhs, dims)) / d lhs contracted with the cotangent g: jax's own transpose
    rule (`lax._dot_general_transpose_lhs`, sharding left out) with a float32 result."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dims
    lhs_kept = _remaining(lhs_ndim, lhs_contract, lhs_batch)
    rhs_kept = _remaining(rhs.ndim, rhs_contract, rhs_batch)
    if swap_ans:
        ans_batch, ans_rhs, _ = _ranges_like(lhs_batch, rhs_kept, lhs_kept)
    else:
        ans_batch, _, ans_rhs = _ranges_like(lhs_batch, lhs_kept, rhs_kept)
    out = lax.dot_general(
        g, rhs, ((ans_rhs, tuple(rhs_kept)), (ans_batch, tuple(rhs_batch))), preferred_element_type=_F32
    )
    contract_sorted = [int(a) for a in np.take(lhs_contract, np.argsort(rhs_contract))]
    order = np.argsort(list(lhs_batch) + lhs_kept + contract_sorted)
    return lax.transpose(out, tuple(int(a) for a in order))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _bf16_dot(lhs, rhs, dims):
    return _bf16_dot_fwd(lhs, rhs, dims)[0]


def _bf16_dot_fwd(lhs, rhs, dims):
    lhs16, rhs16 = lhs.astype(_BF16), rhs.astype(_BF16)
    out = lax.dot_general(lhs16, rhs16, dims, preferred_element_type=_F32)
    return out, (lhs16, rhs16, jnp.zeros((), lhs.dtype), jnp.zeros((), rhs.dtype))


def _bf16_dot_bwd(dims, residuals, g):
    lhs16, rhs16, lhs_like, rhs_like = residuals
    (lc, rc), (lb, rb) = dims
    d_lhs = _grad_of_lhs(g.astype(_BF16), lhs16.ndim, rhs16, dims)
    d_rhs = _grad_of_lhs(g.astype(_F32), rhs16.ndim, lhs16.astype(_F32), ((rc, lc), (rb, lb)), swap_ans=True)
    return d_lhs.astype(lhs_like.dtype), d_rhs.astype(rhs_like.dtype)


_bf16_dot.defvjp(_bf16_dot_fwd, _bf16_dot_bwd)


def bf16_dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers,
    precision: Any = None,
    preferred_element_type: Any = None,
    out_sharding: Any = None,
) -> jax.Array:
    """`lax.dot_general` with bfloat16 operands and a float32 result (module docstring). `precision`
    is ignored (the operands are bfloat16); a `preferred_element_type` other than float32 or None, or
    an `out_sharding`, falls back to `lax.dot_general`."""
    if preferred_element_type not in (None, _F32) or out_sharding is not None:
        return lax.dot_general(
            lhs,
            rhs,
            dimension_numbers,
            precision=precision,
            preferred_element_type=preferred_element_type,
            out_sharding=out_sharding,
        )
    (lc, rc), (lb, rb) = dimension_numbers
    dims = (
        (tuple(int(i) for i in lc), tuple(int(i) for i in rc)),
        (tuple(int(i) for i in lb), tuple(int(i) for i in rb)),
    )
    return _bf16_dot(lhs, rhs, dims)


def resolve(matmul_dtype: Any) -> Any:
    """None for plain matmuls (None or float32), jnp.bfloat16 for bf16 operands; else an error."""
    if matmul_dtype is None:
        return None
    name = jnp.dtype(matmul_dtype).name if not isinstance(matmul_dtype, str) else matmul_dtype
    if name not in MATMUL_DTYPES:
        raise ValueError(f"matmul dtype {matmul_dtype!r} is not one of {MATMUL_DTYPES}")
    return None if name == "float32" else _BF16


def dot_general_for(matmul_dtype: Any) -> Callable:
    """The `dot_general` for `nn.Dense(dot_general=...)`: `lax.dot_general` or `bf16_dot_general`."""
    return bf16_dot_general if resolve(matmul_dtype) is not None else lax.dot_general


def einsum(equation: str, a: jax.Array, b: jax.Array, matmul_dtype: Any = None) -> jax.Array:
    """`jnp.einsum` of two operands whose dot runs through `dot_general_for(matmul_dtype)`."""
    return jnp.einsum(equation, a, b, _dot_general=dot_general_for(matmul_dtype))
