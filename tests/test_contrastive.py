"""Instance InfoNCE with a queue and the cluster-level contrastive loss vs numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from audiossl_jax.objectives import contrastive


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _cross_entropy_first(logits):
    """Mean CE with target 0 (torch F.cross_entropy(logits, zeros)), in float64."""
    logits = logits.astype(np.float64)
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    return float(np.mean(lse - logits[:, 0]))


def numpy_moco(q, k, queue, t):
    """MoCo's loss (facebookresearch/moco builder.py): l_pos, l_neg, cat, / T, CE with label 0."""
    q, k = _normalize(q), _normalize(k)
    logits = np.concatenate([np.sum(q * k, -1, keepdims=True), q @ queue.T], axis=1) / t
    return _cross_entropy_first(logits), float(np.mean(logits.argmax(-1) == 0))


def numpy_cluster_loss(c_i, c_j, t, entropy=False):
    """LAPE's / Contrastive Clustering's ClusterLoss, written out with its explicit masks."""
    k = c_i.shape[1]
    p_i, p_j = c_i.sum(0) / c_i.sum(), c_j.sum(0) / c_j.sum()
    ne = math.log(k) + (p_i * np.log(p_i)).sum() + math.log(k) + (p_j * np.log(p_j)).sum()
    c = np.concatenate([c_i.T, c_j.T], 0).astype(np.float64)
    n = 2 * k
    sim = (c @ c.T) / np.outer(np.linalg.norm(c, axis=1), np.linalg.norm(c, axis=1)) / t
    positives = np.concatenate([np.diag(sim, k), np.diag(sim, -k)])[:, None]
    mask = np.ones((n, n), bool)
    np.fill_diagonal(mask, False)
    for i in range(k):
        mask[i, k + i] = mask[k + i, i] = False
    negatives = sim[mask].reshape(n, -1)
    loss = _cross_entropy_first(np.concatenate([positives, negatives], 1))
    return loss + ne if entropy else loss


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_infonce_matches_moco_numpy():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    k[:3] = q[:3] + 0.05 * rng.normal(size=(3, 5))  # some positives ranked first, some not
    queue = _normalize(rng.normal(size=(11, 5)))
    loss, acc = contrastive.infonce_with_queue(
        jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), jnp.asarray(queue, jnp.float32), 0.07
    )
    ref_loss, ref_acc = numpy_moco(q, k, queue, 0.07)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    assert float(acc) == ref_acc and 0.0 < ref_acc < 1.0


def test_infonce_gives_no_gradient_to_keys_or_queue():
    rng = np.random.default_rng(1)
    q, k, queue = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((4, 3), (4, 3), (7, 3)))
    grads = jax.grad(lambda q, k, z: contrastive.infonce_with_queue(q, k, z, 0.1)[0], argnums=(0, 1, 2))(q, k, queue)
    assert float(jnp.abs(grads[0]).sum()) > 0
    assert float(jnp.abs(grads[1]).sum()) == 0 and float(jnp.abs(grads[2]).sum()) == 0


def test_symmetric_infonce_is_symmetric_in_the_views():
    rng = np.random.default_rng(2)
    q1, k1, q2, k2 = (jnp.asarray(rng.normal(size=(5, 4)), jnp.float32) for _ in range(4))
    queue = jnp.asarray(_normalize(rng.normal(size=(9, 4))), jnp.float32)
    a = contrastive.symmetric_infonce(q1, k1, q2, k2, queue, 0.07)
    b = contrastive.symmetric_infonce(q2, k2, q1, k1, queue, 0.07)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    ref = (
        numpy_moco(np.asarray(q1), np.asarray(k2), np.asarray(queue), 0.07)[0]
        + numpy_moco(np.asarray(q2), np.asarray(k1), np.asarray(queue), 0.07)[0]
    )
    np.testing.assert_allclose(float(a[0]), ref, rtol=1e-5)


def test_cluster_loss_matches_reference_and_is_symmetric():
    rng = np.random.default_rng(3)
    c_i, c_j = _softmax(rng.normal(size=(7, 4))), _softmax(rng.normal(size=(7, 4)))
    for t, entropy_weight in ((1.0, 0.0), (0.5, 1.0)):
        loss, h = contrastive.cluster_contrastive(
            jnp.asarray(c_i, jnp.float32), jnp.asarray(c_j, jnp.float32), t, entropy_weight
        )
        np.testing.assert_allclose(float(loss), numpy_cluster_loss(c_i, c_j, t, entropy_weight > 0), rtol=1e-5)
        swapped, _ = contrastive.cluster_contrastive(
            jnp.asarray(c_j, jnp.float32), jnp.asarray(c_i, jnp.float32), t, entropy_weight
        )
        np.testing.assert_allclose(float(swapped), float(loss), rtol=1e-6)
    p_i, p_j = c_i.sum(0) / c_i.sum(), c_j.sum(0) / c_j.sum()
    expected_h = -0.5 * ((p_i * np.log(p_i)).sum() + (p_j * np.log(p_j)).sum())
    np.testing.assert_allclose(float(h), expected_h, rtol=1e-5)


def test_marginal_entropy_extremes():
    uniform = jnp.full((4, 8), 1 / 8)
    np.testing.assert_allclose(float(contrastive.marginal_entropy(uniform)), math.log(8), rtol=1e-6)
    collapsed = jax.nn.one_hot(jnp.zeros(4, jnp.int32), 8)
    assert float(contrastive.marginal_entropy(collapsed)) == 0.0


def test_l2_normalize_is_torch_normalize_with_a_finite_gradient_at_zero():
    x = jnp.asarray([[3.0, 4.0], [0.0, 0.0], [1e-13, 0.0]], jnp.float32)
    np.testing.assert_allclose(
        np.asarray(contrastive.l2_normalize(x)), [[0.6, 0.8], [0.0, 0.0], [0.1, 0.0]], rtol=1e-6, atol=1e-7
    )
    grad = jax.grad(lambda v: jnp.sum(contrastive.l2_normalize(v) * jnp.asarray([1.0, 2.0])))(x)
    assert np.isfinite(np.asarray(grad)).all()


def test_cluster_loss_gradient_is_finite_when_a_cluster_column_underflows():
    """A confident cluster head: every clip's probability of cluster 0 underflows to exactly 0 in
    float32, so that column of the [B, K] assignments is a zero vector (a NaN step of SLICER before
    `l2_normalize` floored under the square root)."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 6, 4)).astype(np.float32)
    logits[:, :, 0] -= 200.0

    def loss(lg):
        a, b = jax.nn.softmax(lg[0]), jax.nn.softmax(lg[1])
        return contrastive.cluster_contrastive(a, b, 1.0, 1.0)[0]

    assert float(jax.nn.softmax(jnp.asarray(logits[0]))[:, 0].max()) == 0.0
    value, grad = jax.value_and_grad(loss)(jnp.asarray(logits))
    assert np.isfinite(float(value))
    assert np.isfinite(np.asarray(grad)).all()
