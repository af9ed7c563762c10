"""FIFO ring buffers with a pointer (MoCo's queue of negative keys, k-mix's memory bank).

A buffer is a global array whose leading axis holds the entries (logical axis 'queue', so it can be
sharded); `push` overwrites the oldest entries with a new (global) batch of items and advances the
pointer modulo the size. Pure functions: they work unchanged inside a jitted, sharded step.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiossl_jax.objectives import contrastive

QUEUE_AXIS = "queue"


def push(buffer: jax.Array, items: jax.Array, ptr: jax.Array) -> jax.Array:
    """Writes `items` [n, ...] into `buffer` [size, ...] at rows ptr, ptr+1, ... (mod size).

    Uses one `lax.dynamic_update_slice` when the rows do not wrap past the end (always, when every
    push has the same n and n divides size, as in MoCo); a modular scatter otherwise.
    """
    size, n = buffer.shape[0], items.shape[0]
    if n > size:
        raise ValueError(
            f"cannot push {n} items into a buffer of {size} entries; make the queue/bank "
            f"size at least the number of items pushed per step"
        )
    if items.shape[1:] != buffer.shape[1:]:
        raise ValueError(f"items of shape {items.shape} do not fit a buffer of shape {buffer.shape}")
    items = items.astype(buffer.dtype)
    ptr = jnp.asarray(ptr, jnp.int32)

    def contiguous(b):
        return jax.lax.dynamic_update_slice(b, items, (ptr,) + (0,) * (b.ndim - 1))

    def wrapped(b):
        return b.at[(ptr + jnp.arange(n)) % size].set(items)

    return jax.lax.cond(ptr + n <= size, contiguous, wrapped, buffer)


def advance(ptr: jax.Array, n: int, size: int) -> jax.Array:
    return (jnp.asarray(ptr, jnp.int32) + n) % size


def init_key_queue(rng: jax.Array, size: int, dim: int) -> dict[str, jax.Array]:
    """MoCo's initial queue: `size` random unit vectors of `dim`, pointer 0.

    Returns {"keys": LogicallyPartitioned [size, dim] ('queue', None), "ptr": int32 scalar}.
    """
    keys = contrastive.l2_normalize(jax.random.normal(rng, (size, dim), jnp.float32))
    return {"keys": nn.LogicallyPartitioned(keys, (QUEUE_AXIS, None)), "ptr": jnp.zeros((), jnp.int32)}


def enqueue(state: dict[str, jax.Array], keys: jax.Array) -> dict[str, jax.Array]:
    """Pushes L2-normalised `keys` [n, dim] into a key queue {"keys", "ptr"} (FIFO)."""
    size, n = state["keys"].shape[0], keys.shape[0]
    keys = jax.lax.stop_gradient(contrastive.l2_normalize(keys))
    return {"keys": push(state["keys"], keys, state["ptr"]), "ptr": advance(state["ptr"], n, size)}
