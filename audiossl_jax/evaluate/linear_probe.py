"""A linear classifier trained in JAX on frozen, standardised clip embeddings.

Multi-label tasks get sigmoid cross-entropy, multi-class (single-label) tasks softmax cross-entropy.
The compiled epoch is cached by its hyperparameters and shapes, so the evaluations inside
pre-training (`evaluate/evaluator.py`) fit one probe per task and step without recompiling.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _optimizer(lr: float, weight_decay: float, total_steps: int):
    return optax.adamw(optax.cosine_decay_schedule(lr, total_steps), weight_decay=weight_decay)


@functools.lru_cache(maxsize=32)
def _epoch_fn(lr: float, weight_decay: float, total_steps: int, multiclass: bool):
    tx = _optimizer(lr, weight_decay, total_steps)

    def loss_fn(p, xb, yb, wb):
        logits = xb @ p["w"] + p["b"]
        if multiclass:
            per_example = optax.softmax_cross_entropy(logits, yb)
        else:
            per_example = optax.sigmoid_binary_cross_entropy(logits, yb).mean(-1)
        return jnp.sum(per_example * wb) / jnp.maximum(wb.sum(), 1.0)

    @jax.jit
    def epoch(p, s, xs_e, ys_e, ws_e):
        def body(carry, batch):
            p, s = carry
            grads = jax.grad(loss_fn)(p, *batch)
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        (p, s), _ = jax.lax.scan(body, (p, s), (xs_e, ys_e, ws_e))
        return p, s

    return tx, epoch


def train_linear_probe(
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int = 0,
    multiclass: bool = False,
):
    """Fits logits = standardise(x) @ w + b; returns predict(x) -> scores [N, classes] (sigmoid
    probabilities, or softmax probabilities when `multiclass`)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = (x - mean) / std
    params = {"w": jnp.zeros((x.shape[1], y.shape[1])), "b": jnp.zeros((y.shape[1],))}
    steps_per_epoch = max(1, -(-len(xs) // batch_size))
    tx, epoch = _epoch_fn(float(lr), float(weight_decay), int(epochs * steps_per_epoch), bool(multiclass))
    opt_state = tx.init(params)

    rng = np.random.default_rng(seed)
    padded = steps_per_epoch * batch_size
    for _ in range(epochs):
        order = rng.permutation(len(xs))
        order = np.r_[order, np.zeros(padded - len(order), dtype=order.dtype)]
        weights = np.r_[np.ones(len(xs)), np.zeros(padded - len(xs))].astype(np.float32)
        shape = (steps_per_epoch, batch_size)
        params, opt_state = epoch(
            params,
            opt_state,
            xs[order].reshape(shape + xs.shape[1:]),
            y[order].reshape(shape + y.shape[1:]),
            weights.reshape(shape),
        )

    def predict(x_new: np.ndarray) -> np.ndarray:
        logits = ((x_new - mean) / std) @ params["w"] + params["b"]
        return np.asarray(jax.nn.softmax(logits) if multiclass else jax.nn.sigmoid(logits))

    return predict
