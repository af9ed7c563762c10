"""AdamW with linear warm-up, cosine/linear decay, gradient clipping and a weight-decay mask."""
from __future__ import annotations

import jax
import optax


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


def make_optimizer(opt_config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(opt_config, total_steps)
    parts = []
    if opt_config.clip_norm and opt_config.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(opt_config.clip_norm)))
    parts.append(optax.adamw(schedule, b1=float(opt_config.b1), b2=float(opt_config.b2),
                             eps=float(opt_config.eps), weight_decay=float(opt_config.weight_decay),
                             mask=decay_mask))
    return optax.chain(*parts), schedule
