"""AdamW with linear warm-up, cosine/linear decay, gradient clipping, a weight-decay mask and
optional per-parameter LR multipliers (layer-wise LR decay for fine-tuning)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def learning_rate_schedule(opt_config, total_steps: int) -> optax.Schedule:
    warmup = min(int(opt_config.warmup_steps), max(total_steps - 1, 0))
    peak, end = float(opt_config.lr), float(opt_config.lr) * float(opt_config.end_lr_ratio)
    decay_steps = max(total_steps - warmup, 1)
    if opt_config.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
    elif opt_config.decay == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif opt_config.decay == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"config.optimizer.decay={opt_config.decay!r}: use cosine, linear or constant")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
    """Weight decay on matrices and conv kernels only, not on biases, norm scales or embeddings of rank 1."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def scale_by_tree(scales: PyTree | Callable[[PyTree], PyTree]) -> optax.GradientTransformation:
    """Multiplies each update by a fixed per-leaf scale (placed after the optimizer: an LR multiplier).
    `scales`: a tree like the params, or a function of the updates tree giving one (evaluated while
    tracing, from the tree's paths and shapes only)."""

    def update(updates, state, params=None):
        tree = scales(updates) if callable(scales) else scales
        return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, tree), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
    opt_config, total_steps: int, lr_scales: Callable[[PyTree], PyTree] | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW from `config.optimizer`. `lr_scales(params)` gives a per-leaf LR multiplier (an
    objective's `lr_scales`, e.g. fine-tuning's layer-wise decay); None: every leaf 1."""
    schedule = learning_rate_schedule(opt_config, total_steps)
    parts = []
    if opt_config.clip_norm and opt_config.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(opt_config.clip_norm)))
    parts.append(
        optax.adamw(
            schedule,
            b1=float(opt_config.b1),
            b2=float(opt_config.b2),
            eps=float(opt_config.eps),
            weight_decay=float(opt_config.weight_decay),
            mask=decay_mask,
        )
    )
    if lr_scales is not None:
        parts.append(scale_by_tree(lr_scales))
    return optax.chain(*parts), schedule
