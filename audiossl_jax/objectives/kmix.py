"""k-mix (SLICER, Seth et al. 2023) and BYOL-A mixup, in JAX with the memory bank as state.

k-mix mixes each clip x with a partner z from a memory bank of recent training clips, picked from
the k-means cluster *farthest* from x's own cluster, in the linear-power domain of the log-mel:
    x' = log((1 - a) exp(x) + a exp(z) + eps),  a ~ U(0, ratio)        ("log-mixup-exp", BYOL-A)
Clusters come from spherical k-means on time-averaged log-mel vectors; distances between clusters are
distances between their (unit) centroids; the partner is drawn uniformly from the bank entries that
fall in the farthest cluster that has any. BYOL-A mixup is the same mix with a uniformly drawn partner.

Where it runs (a design choice, see docs/methods/slicer.md): inside the jitted train step, with the
bank in the objective's `aux` (so it is checkpointed, sharded and deterministic given the step rng).
The k-means centroids are fitted once, in JAX, on the bank itself (a sample of the shuffled training
stream) as soon as it holds `fit_examples` clips; until then k-mix falls back to a uniform partner,
as the reference implementation does while its bank is small. No host-side state, no loop hook.

Bank state (a dict of arrays; the large ones boxed with the logical axis 'queue'):
  features [M, T, mel], valid [M, T], means [M, mel] (unit time-averages), ptr, count,
  centroids [C, mel] (unit), fitted (bool).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiossl_jax.models.layers import masked_mean
from audiossl_jax.objectives import contrastive
from audiossl_jax.objectives import queue as fifo

EPS = float(jnp.finfo(jnp.float32).eps)  # as BYOL-A's torch.finfo(float32).eps
NEG_INF = -jnp.inf


# ----------------------------------------------------------------------------- mixing
def log_mixup_exp(x: jax.Array, partner: jax.Array, ratio: jax.Array) -> jax.Array:
    """log((1 - ratio) * exp(x) + ratio * exp(partner) + eps); ratio broadcasts from [B] to x."""
    ratio = jnp.asarray(ratio, jnp.float32)
    ratio = ratio.reshape(ratio.shape + (1,) * (x.ndim - ratio.ndim))
    return jnp.log((1.0 - ratio) * jnp.exp(x) + ratio * jnp.exp(partner) + EPS)


def time_mean(features: jax.Array, valid: jax.Array) -> jax.Array:
    """Unit-norm mean over valid frames, [B, T, mel] -> [B, mel] (the vector k-means clusters)."""
    return contrastive.l2_normalize(masked_mean(features.astype(jnp.float32), valid))


# ----------------------------------------------------------------------------- spherical k-means
def assign(vectors: jax.Array, centroids: jax.Array) -> jax.Array:
    """Nearest centroid by cosine (= Euclidean for unit vectors), [N, D] x [C, D] -> int32 [N]."""
    return jnp.argmax(vectors @ centroids.T, axis=-1).astype(jnp.int32)


def spherical_kmeans(rng: jax.Array, vectors: jax.Array, weights: jax.Array, clusters: int, iters: int) -> jax.Array:
    """Lloyd's k-means on unit vectors with unit centroids (faiss `spherical=True`), in JAX.

    vectors [N, D] unit rows; weights [N] (0 = ignore the row, e.g. an empty bank slot). Initial
    centroids: `clusters` distinct rows with weight > 0 drawn uniformly (needs at least that many).
    An empty cluster keeps its previous centroid. Returns unit centroids [clusters, D].
    """
    weights = weights.astype(jnp.float32)
    scores = jnp.where(weights > 0, jax.random.gumbel(rng, weights.shape), NEG_INF)
    init = vectors[jax.lax.top_k(scores, clusters)[1]]

    def step(_, centroids):
        onehot = jax.nn.one_hot(assign(vectors, centroids), clusters) * weights[:, None]
        sums = onehot.T @ vectors
        norms = jnp.linalg.norm(sums, axis=-1, keepdims=True)
        return jnp.where(norms > 1e-12, sums / jnp.maximum(norms, 1e-12), centroids)

    return jax.lax.fori_loop(0, iters, step, init)


def farthest_nonempty_cluster(source: jax.Array, centroids: jax.Array, nonempty: jax.Array) -> jax.Array:
    """For each source cluster id [B], the non-empty cluster whose centroid is farthest from it.

    `nonempty` [C] bool. Ties go to the lowest cluster id. If only the source's own cluster is
    non-empty, that is the answer (distance 0).
    """
    dist = jnp.linalg.norm(centroids[:, None, :] - centroids[None, :, :], axis=-1)  # [C, C]
    scores = jnp.where(nonempty[None, :], dist[source], NEG_INF)
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)


def _draw(rng: jax.Array, candidates: jax.Array) -> jax.Array:
    """One index per row drawn uniformly among the True entries of `candidates` [B, M]."""
    scores = jnp.where(candidates, jax.random.gumbel(rng, candidates.shape), NEG_INF)
    return jnp.argmax(scores, axis=-1)


# ----------------------------------------------------------------------------- memory bank
def init_bank(size: int, frames: int, mel: int, clusters: int) -> dict[str, jax.Array]:
    """An empty bank of `size` clips of [frames, mel] and `clusters` (not yet fitted) centroids."""
    box = nn.LogicallyPartitioned
    return {
        "features": box(jnp.zeros((size, frames, mel), jnp.float32), (fifo.QUEUE_AXIS, "length", "mel")),
        "valid": box(jnp.zeros((size, frames), bool), (fifo.QUEUE_AXIS, "length")),
        "means": box(jnp.zeros((size, mel), jnp.float32), (fifo.QUEUE_AXIS, "mel")),
        "ptr": jnp.zeros((), jnp.int32),
        "count": jnp.zeros((), jnp.int32),
        "centroids": jnp.zeros((clusters, mel), jnp.float32),
        "fitted": jnp.zeros((), bool),
    }


def filled(bank: dict[str, jax.Array]) -> jax.Array:
    """[M] bool: which slots hold a clip (slots fill from 0 and are then overwritten in place)."""
    return jnp.arange(bank["means"].shape[0]) < bank["count"]


def push(bank: dict[str, jax.Array], features: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
    """FIFO-pushes clean clips [n, T, mel] (+ valid [n, T]) into the bank."""
    size, n = bank["means"].shape[0], features.shape[0]
    features = jax.lax.stop_gradient(features)
    out = dict(bank)
    out["features"] = fifo.push(bank["features"], features, bank["ptr"])
    out["valid"] = fifo.push(bank["valid"], valid, bank["ptr"])
    out["means"] = fifo.push(bank["means"], time_mean(features, valid), bank["ptr"])
    out["ptr"] = fifo.advance(bank["ptr"], n, size)
    out["count"] = jnp.minimum(bank["count"] + n, size)
    return out


def maybe_fit(bank: dict[str, jax.Array], rng: jax.Array, fit_examples: int, iters: int) -> dict[str, jax.Array]:
    """Fits the centroids on the bank's clips once it holds `fit_examples` of them (then never again)."""
    clusters = bank["centroids"].shape[0]
    if not clusters <= fit_examples <= bank["means"].shape[0]:
        raise ValueError(
            f"k-mix fit_examples={fit_examples} must lie between the number of clusters "
            f"({clusters}) and the bank size ({bank['means'].shape[0]})"
        )
    due = jnp.logical_and(~bank["fitted"], bank["count"] >= fit_examples)

    def fit(b):
        centroids = spherical_kmeans(rng, b["means"], filled(b), clusters, iters)
        return {**b, "centroids": centroids, "fitted": jnp.ones((), bool)}

    return jax.lax.cond(due, fit, lambda b: b, bank)


# ----------------------------------------------------------------------------- augmentations
def _mix_with(
    rng: jax.Array, x: jax.Array, bank: dict[str, jax.Array], index: jax.Array, has_partner: jax.Array, ratio: float
) -> jax.Array:
    alpha = ratio * jax.random.uniform(rng, (x.shape[0],))
    partner = bank["features"][index]
    partner_valid = bank["valid"][index]
    mixed = log_mixup_exp(x, partner, alpha)
    use = jnp.logical_and(has_partner[:, None], partner_valid)[..., None]
    return jnp.where(use, mixed, x)


def random_mixup(rng: jax.Array, x: jax.Array, bank: dict[str, jax.Array], ratio: float) -> jax.Array:
    """BYOL-A mixup: log-mixup-exp with a uniformly drawn bank clip, a ~ U(0, ratio); identity if empty."""
    pick_rng, mix_rng = jax.random.split(rng)
    slots = filled(bank)
    index = _draw(pick_rng, jnp.broadcast_to(slots, (x.shape[0],) + slots.shape))
    has_partner = jnp.broadcast_to(bank["count"] > 0, (x.shape[0],))
    return _mix_with(mix_rng, x, bank, index, has_partner, ratio)


def kmix_partners(
    rng: jax.Array, x: jax.Array, valid: jax.Array, bank: dict[str, jax.Array], min_bank: int
) -> jax.Array:
    """Bank index of each clip's k-mix partner [B].

    Once the centroids are fitted and the bank holds >= min_bank clips: uniform among the bank clips
    of the farthest non-empty cluster from x's cluster; before that: uniform among all bank clips.
    """
    slots = filled(bank)
    bank_cluster = assign(bank["means"], bank["centroids"])
    clusters = bank["centroids"].shape[0]
    nonempty = (jax.nn.one_hot(bank_cluster, clusters) * slots[:, None]).sum(0) > 0
    target = farthest_nonempty_cluster(assign(time_mean(x, valid), bank["centroids"]), bank["centroids"], nonempty)
    in_target = slots[None, :] & (bank_cluster[None, :] == target[:, None])
    use_clusters = jnp.logical_and(bank["fitted"], bank["count"] >= min_bank)
    candidates = jnp.where(use_clusters, in_target, jnp.broadcast_to(slots, in_target.shape))
    return _draw(rng, candidates)


def kmix(
    rng: jax.Array, x: jax.Array, valid: jax.Array, bank: dict[str, jax.Array], ratio: float, min_bank: int
) -> jax.Array:
    """k-mix: log-mixup-exp of x [B, T, mel] with its farthest-cluster partner, a ~ U(0, ratio)."""
    pick_rng, mix_rng = jax.random.split(rng)
    index = kmix_partners(pick_rng, x, valid, bank, min_bank)
    has_partner = jnp.broadcast_to(bank["count"] > 0, (x.shape[0],))
    return _mix_with(mix_rng, x, bank, index, has_partner, ratio)
