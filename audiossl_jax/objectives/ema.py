"""Exponential moving average (EMA) teacher: decay schedule and parameter update.

Generic over pytrees; used by EAT (teacher = EMA of the student encoder) and reusable by SLICER.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def ema_decay(step, start: float, end: float, anneal_steps: int) -> jax.Array:
    """Decay annealed linearly from `start` at step 0 to `end` at `anneal_steps`, then held at `end`.

    fairseq's `get_annealed_rate` (data2vec / EAT: 0.9998 -> 0.99999 over 100k updates). `step` may be
    traced; `anneal_steps <= 0` means constant `end`.
    """
    if anneal_steps <= 0:
        return jnp.asarray(end, jnp.float32)
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / anneal_steps, 0.0, 1.0)
    return jnp.asarray(start, jnp.float32) + (end - start) * frac


def ema_update(teacher: PyTree, student: PyTree, decay) -> PyTree:
    """teacher * decay + student * (1 - decay), leaf by leaf, in the teacher's dtype (no gradient)."""
    decay = jax.lax.stop_gradient(jnp.asarray(decay, jnp.float32))

    def update(t, s):
        new = t.astype(jnp.float32) * decay + jax.lax.stop_gradient(s).astype(jnp.float32) * (1.0 - decay)
        return new.astype(t.dtype)

    return jax.tree.map(update, teacher, student)
