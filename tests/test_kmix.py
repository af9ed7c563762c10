"""k-mix: log-mixup-exp, spherical k-means vs numpy, farthest non-empty cluster partner, memory bank."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiossl_jax.objectives import kmix

EPS = np.finfo(np.float32).eps
partners = jax.jit(kmix.kmix_partners, static_argnames="min_bank")


def _unbox(tree):
    return jax.tree.map(
        lambda x: getattr(x, "value", x), tree, is_leaf=lambda x: hasattr(x, "names") and hasattr(x, "value")
    )


def _bank_with(features, valid=None, size=None, clusters=3):
    n, t, mel = features.shape
    bank = _unbox(kmix.init_bank(size or n, t, mel, clusters))
    valid = np.ones((n, t), bool) if valid is None else valid
    return kmix.push(bank, jnp.asarray(features, jnp.float32), jnp.asarray(valid))


def test_log_mixup_exp_matches_byol_a_formula():
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5, 4))
    ratio = np.array([0.0, 0.25, 0.4])
    got = kmix.log_mixup_exp(jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32), jnp.asarray(ratio))
    # BYOL-A: log_mixup_exp(x, z, 1 - a) = log((1 - a) e^x + a e^z + eps)
    ref = np.log((1 - ratio)[:, None, None] * np.exp(x) + ratio[:, None, None] * np.exp(z) + EPS)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)


def numpy_spherical_lloyd(vectors, weights, centroids, iters):
    for _ in range(iters):
        labels = np.argmax(vectors @ centroids.T, axis=1)
        new = centroids.copy()
        for c in range(len(centroids)):
            members = (labels == c) & (weights > 0)
            if members.any():
                s = vectors[members].sum(0)
                new[c] = s / np.linalg.norm(s)
        centroids = new
    return centroids


def test_spherical_kmeans_matches_numpy_lloyd_from_the_same_init():
    rng = np.random.default_rng(1)
    centres = np.eye(6)[:3] * 5
    vectors = np.concatenate([c + rng.normal(size=(20, 6)) for c in centres])
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    weights = np.ones(60, np.float32)
    weights[-5:] = 0  # ignored rows (empty bank slots)
    key = jax.random.key(3)
    init = np.asarray(kmix.spherical_kmeans(key, jnp.asarray(vectors), jnp.asarray(weights), 3, 0))
    rows = [int(np.argmin(np.abs(vectors - c).sum(1))) for c in init]
    assert len(set(rows)) == 3 and all(weights[r] > 0 for r in rows)  # distinct, filled rows
    got = np.asarray(kmix.spherical_kmeans(key, jnp.asarray(vectors), jnp.asarray(weights), 3, 10))
    np.testing.assert_allclose(got, numpy_spherical_lloyd(vectors, weights, init, 10), rtol=1e-5, atol=1e-6)
    # it recovers the three blobs
    np.testing.assert_array_equal(np.sort(np.argmax(got, axis=1)), [0, 1, 2])


def test_farthest_nonempty_cluster():
    angles = np.deg2rad([0.0, 40.0, 100.0, 180.0])
    centroids = jnp.asarray(np.stack([np.cos(angles), np.sin(angles)], 1), jnp.float32)
    source = jnp.asarray([0, 1, 3, 2], jnp.int32)
    all_there = jnp.ones(4, bool)
    np.testing.assert_array_equal(
        np.asarray(kmix.farthest_nonempty_cluster(source, centroids, all_there)), [3, 3, 0, 0]
    )
    # cluster 3 empty: next farthest from 0 is 2; from 1 it is 2 (140 deg) ... from 3 itself 0
    nonempty = jnp.asarray([True, True, True, False])
    np.testing.assert_array_equal(np.asarray(kmix.farthest_nonempty_cluster(source, centroids, nonempty)), [2, 2, 0, 0])
    only_own = jnp.asarray([False, True, False, False])
    np.testing.assert_array_equal(np.asarray(kmix.farthest_nonempty_cluster(source, centroids, only_own)), [1, 1, 1, 1])


def _cluster_clips(rng, centre_bins, per_cluster, frames=6, mel=8):
    """Clips whose time-mean points at mel bin `centre_bins[c]` (one cluster per bin)."""
    clips, labels = [], []
    for c, b in enumerate(centre_bins):
        base = np.zeros(mel)
        base[b] = 3.0
        for _ in range(per_cluster):
            clips.append(base + 0.3 * rng.normal(size=(frames, mel)))
            labels.append(c)
    return np.asarray(clips, np.float32), np.asarray(labels)


def test_kmix_partner_comes_from_the_farthest_nonempty_cluster():
    rng = np.random.default_rng(2)
    clips, labels = _cluster_clips(rng, [0, 1, 2], per_cluster=4)  # clusters peak at mel bins 0, 1, 2
    bank = _bank_with(clips, size=16)
    centroids = np.zeros((3, 8), np.float32)
    centroids[0, 0] = 1.0
    centroids[1, :2] = np.sqrt(0.5)  # 45 deg from cluster 0
    centroids[2, 1:3] = [-0.3, 1.0]
    centroids[2] /= np.linalg.norm(centroids[2])  # 90 deg from 0, ~102 deg from 1: farthest pairs 0-2, 1-2
    bank = {**bank, "centroids": jnp.asarray(centroids), "fitted": jnp.ones((), bool)}
    queries, q_labels = _cluster_clips(rng, [0, 1, 2], per_cluster=3)
    dist = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    expected_target = dist.argmax(1)  # all clusters non-empty
    np.testing.assert_array_equal(expected_target, [2, 2, 1])
    for seed in range(4):
        idx = np.asarray(
            partners(jax.random.key(seed), jnp.asarray(queries), jnp.ones(queries.shape[:2], bool), bank, min_bank=4)
        )
        np.testing.assert_array_equal(labels[idx], expected_target[q_labels])
    # Remove cluster 2 from the bank (overwrite its slots with cluster 1 clips): the farthest
    # non-empty cluster of a cluster-0 clip is then 1, of a cluster-1 clip it is 0.
    more, _ = _cluster_clips(rng, [1], per_cluster=4)
    bank2 = _bank_with(np.concatenate([clips[:8], more]), size=16)
    bank2 = {**bank2, "centroids": jnp.asarray(centroids), "fitted": jnp.ones((), bool)}
    idx = np.asarray(partners(jax.random.key(0), jnp.asarray(queries[:6]), jnp.ones((6, 6), bool), bank2, min_bank=4))
    bank2_labels = np.concatenate([labels[:8], [1] * 4])
    np.testing.assert_array_equal(bank2_labels[idx], [1, 1, 1, 0, 0, 0])
    assert idx.max() < 12  # never an empty slot


def test_kmix_partner_is_uniform_before_fitting_or_with_a_small_bank():
    rng = np.random.default_rng(3)
    clips, _ = _cluster_clips(rng, [0, 1], per_cluster=3)
    bank = _bank_with(clips, size=10)  # 6 of 10 slots filled, not fitted
    draws = np.concatenate(
        [
            np.asarray(partners(jax.random.key(s), jnp.asarray(clips), jnp.ones((6, 6), bool), bank, min_bank=1))
            for s in range(30)
        ]
    )
    assert set(draws.tolist()) == set(range(6))  # every filled slot, nothing else


def test_bank_push_fill_and_fit_once():
    rng = np.random.default_rng(4)
    clips, _ = _cluster_clips(rng, [0, 3], per_cluster=3)
    bank = _unbox(kmix.init_bank(4, 6, 8, 2))
    fit = jax.jit(lambda b, k: kmix.maybe_fit(b, k, fit_examples=4, iters=5))
    bank = kmix.push(bank, jnp.asarray(clips[:3]), jnp.ones((3, 6), bool))
    bank = fit(bank, jax.random.key(0))
    assert int(bank["count"]) == 3 and not bool(bank["fitted"])
    bank = kmix.push(bank, jnp.asarray(clips[3:]), jnp.ones((3, 6), bool))  # wraps: slots 3, 0, 1
    assert int(bank["count"]) == 4 and int(bank["ptr"]) == 2
    np.testing.assert_array_equal(np.asarray(bank["features"][0]), clips[4])
    bank = fit(bank, jax.random.key(0))
    assert bool(bank["fitted"])
    centroids = np.asarray(bank["centroids"])
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    again = fit(kmix.push(bank, jnp.asarray(clips[:2]), jnp.ones((2, 6), bool)), jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(again["centroids"]), centroids)  # fitted once only
    with pytest.raises(ValueError, match="fit_examples"):
        kmix.maybe_fit(bank, jax.random.key(0), fit_examples=9, iters=1)


def test_mixing_is_deterministic_and_respects_empty_bank_and_padding():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(3, 6, 8)), jnp.float32)
    empty = _unbox(kmix.init_bank(4, 6, 8, 2))
    np.testing.assert_array_equal(np.asarray(kmix.random_mixup(jax.random.key(0), x, empty, 0.4)), np.asarray(x))
    partner_valid = np.ones((1, 6), bool)
    partner_valid[0, 4:] = False
    bank = _bank_with(np.full((1, 6, 8), 5.0, np.float32), partner_valid, size=4, clusters=2)
    a = np.asarray(kmix.kmix(jax.random.key(1), x, jnp.ones((3, 6), bool), bank, 0.4, min_bank=1))
    b = np.asarray(kmix.kmix(jax.random.key(1), x, jnp.ones((3, 6), bool), bank, 0.4, min_bank=1))
    np.testing.assert_array_equal(a, b)
    assert np.all(a[:, :4] > np.asarray(x)[:, :4])  # a louder partner raises the mix
    np.testing.assert_array_equal(a[:, 4:], np.asarray(x)[:, 4:])  # partner's padded frames: untouched
    mixed = np.asarray(kmix.random_mixup(jax.random.key(2), x, bank, 0.4))
    alpha_bound = np.log(0.6 * np.exp(np.asarray(x)[:, :4]) + 0.4 * np.exp(np.asarray(bank["features"][0, :4])) + EPS)
    assert np.all(mixed[:, :4] <= alpha_bound + 1e-5)  # a ~ U(0, 0.4)
