"""Contrastive losses as pure functions (SLICER, Seth et al. 2023).

* `infonce_with_queue`: MoCo-style instance-level InfoNCE. Each query's positive is the key of the
  same clip (other view, teacher); the negatives are the queue of past teacher keys.
* `cluster_contrastive`: Contrastive Clustering's cluster-level loss (Li et al. 2021): the columns of
  the two views' [batch, K] soft-assignment matrices are "cluster representations"; column k of one
  view is pulled towards column k of the other and pushed from the other 2K - 2 columns (cosine
  similarity / temperature), with an optional entropy regulariser against collapse.

Everything is computed in float32; the batch axis may be sharded (the reductions are global).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NORM_EPS = 1e-12  # as torch.nn.functional.normalize


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / max(||x||, eps), as torch's F.normalize, with a finite gradient at x = 0.

    The floor goes under the square root: the gradient of `jnp.linalg.norm` at 0 is 0 / 0, and
    `jnp.maximum` multiplies it by 0, which gives NaN. Zero vectors do occur: a cluster column of
    softmax assignments underflows to exact zeros once the head is confident (a NaN step of SLICER)."""
    x = x.astype(jnp.float32)
    squared = jnp.sum(x * x, axis=axis, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(squared, NORM_EPS**2))


def infonce_with_queue(
    query: jax.Array, key: jax.Array, queue: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
    """Mean InfoNCE of queries [B, D] vs their keys [B, D] and the negatives `queue` [Q, D].

    query and key are L2-normalised here; the queue is assumed normalised already (it holds normalised
    keys) and gets no gradient, nor does `key`. Logits are [q.k, q.queue] / temperature with the
    positive at index 0. Returns (loss, accuracy) where accuracy is the fraction of queries whose
    positive has the largest logit.
    """
    q = l2_normalize(query)
    k = jax.lax.stop_gradient(l2_normalize(key))
    negatives = jax.lax.stop_gradient(queue.astype(jnp.float32))
    positive = jnp.sum(q * k, axis=-1, keepdims=True)
    logits = jnp.concatenate([positive, q @ negatives.T], axis=-1) / temperature
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])
    accuracy = jnp.mean((logits[:, 0] >= logits[:, 1:].max(axis=-1)).astype(jnp.float32))
    return loss, accuracy


def symmetric_infonce(
    q1: jax.Array, k1: jax.Array, q2: jax.Array, k2: jax.Array, queue: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
    """SLICER's symmetric instance loss: InfoNCE(q1 -> k2) + InfoNCE(q2 -> k1), both vs `queue`.

    q = student queries, k = teacher keys of views 1 and 2. Returns (summed loss, mean accuracy).
    """
    loss_12, acc_12 = infonce_with_queue(q1, k2, queue, temperature)
    loss_21, acc_21 = infonce_with_queue(q2, k1, queue, temperature)
    return loss_12 + loss_21, 0.5 * (acc_12 + acc_21)


def marginal_entropy(assignments: jax.Array) -> jax.Array:
    """Entropy H(p) of the batch's cluster marginal p = column sums / total, assignments [B, K].

    log K when the clusters are used uniformly, 0 when every clip falls in one cluster.
    """
    p = assignments.astype(jnp.float32).sum(axis=0)
    p = p / p.sum()
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))


def cluster_contrastive(
    assign_a: jax.Array, assign_b: jax.Array, temperature: float = 1.0, entropy_weight: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Cluster-level contrastive loss between two views' soft assignments [B, K] (rows sum to 1).

    loss = mean over the 2K columns c of  -log softmax_{j != c}(cos(c, j) / temperature)[partner(c)]
           + entropy_weight * sum over views of (log K - H(p_view)).
    Returns (loss, mean over the two views of H(p_view)).
    """
    clusters = assign_a.shape[-1]
    columns = jnp.concatenate([assign_a.T, assign_b.T], axis=0)  # [2K, B]
    z = l2_normalize(columns)
    sim = (z @ z.T) / temperature  # [2K, 2K]
    n = 2 * clusters
    index = jnp.arange(n)
    partner = (index + clusters) % n
    masked = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, sim)
    loss = jnp.mean(jax.nn.logsumexp(masked, axis=-1) - sim[index, partner])
    h_a, h_b = marginal_entropy(assign_a), marginal_entropy(assign_b)
    if entropy_weight:
        loss = loss + entropy_weight * (2 * math.log(clusters) - h_a - h_b)
    return loss, 0.5 * (h_a + h_b)
