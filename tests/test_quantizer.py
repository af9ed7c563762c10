"""Gumbel product quantizer: temperature schedule, perplexities vs numpy, straight-through gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audiossl_jax.models.quantizer import GumbelQuantizer, gumbel_temperature, perplexity, straight_through_gumbel


def _np_perplexity(probs, weights):
    """fairseq: exp(-sum p log(p + 1e-7)) of the mean distribution over the selected frames, summed
    over groups."""
    mean = probs[weights.astype(bool)].mean(axis=0)  # [G, V]
    return float(np.exp(-np.sum(mean * np.log(mean + 1e-7), axis=-1)).sum())


def test_temperature_schedule():
    for step in (0, 1000, 100_000, 10_000_000):
        want = max(2.0 * 0.999995**step, 0.5)
        got = gumbel_temperature(jnp.int32(step), 2.0, 0.5, 0.999995)
        np.testing.assert_allclose(got, want, rtol=1e-4)
    assert float(jax.jit(gumbel_temperature, static_argnums=(1, 2, 3))(0, 2.0, 0.5, 0.9)) == 2.0


def test_perplexity_matches_numpy_and_ignores_unselected_frames():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 2, 7)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    weights = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])
    np.testing.assert_allclose(
        perplexity(jnp.asarray(probs), jnp.asarray(weights)), _np_perplexity(probs, weights), rtol=1e-5
    )
    hard = np.eye(7)[probs.argmax(-1)]
    np.testing.assert_allclose(
        perplexity(jnp.asarray(hard), jnp.asarray(weights)), _np_perplexity(hard, weights), rtol=1e-5
    )
    # uniform codes -> perplexity G * V; one code -> G
    np.testing.assert_allclose(perplexity(jnp.full((4, 2, 7), 1 / 7), jnp.ones(4)), 14.0, rtol=1e-5)
    np.testing.assert_allclose(perplexity(jnp.asarray(np.eye(7)[np.zeros((4, 2), int)]), jnp.ones(4)), 2.0, rtol=1e-5)


def test_straight_through_forward_is_one_hot_and_gradient_is_soft():
    logits = jax.random.normal(jax.random.key(0), (6, 2, 5))
    rng, temperature = jax.random.key(1), 0.7
    probe = jax.random.normal(jax.random.key(2), (6, 2, 5))
    sample = jax.jit(straight_through_gumbel)(logits, rng, temperature)
    np.testing.assert_allclose(sample.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.sort(np.asarray(sample), -1)[..., :-1], 0.0, atol=1e-6)
    np.testing.assert_allclose(sample.max(-1), 1.0, atol=1e-6)

    gumbel = jax.random.gumbel(rng, logits.shape)
    np.testing.assert_array_equal(sample.argmax(-1), (logits + gumbel).argmax(-1))

    def hard_fn(x):
        return jnp.sum(straight_through_gumbel(x, rng, temperature) * probe)

    def soft_fn(x):
        return jnp.sum(jax.nn.softmax((x + gumbel) / temperature) * probe)

    grad = jax.jit(jax.grad(hard_fn))(logits)
    soft_grad = jax.jit(jax.grad(soft_fn))(logits)
    np.testing.assert_allclose(grad, soft_grad, rtol=1e-5, atol=1e-6)
    assert np.abs(grad).max() > 1e-3


def test_quantizer_eval_picks_argmax_codewords_and_train_passes_gradient():
    module = GumbelQuantizer(num_groups=2, num_vars=4, code_dim=6, out_dim=5)
    x = jax.random.normal(jax.random.key(0), (2, 3, 8))
    weights = jnp.array([[1, 1, 0], [1, 0, 1]], bool)
    init = jax.jit(module.init, static_argnums=(4,))
    params = nn.unbox(init(jax.random.key(1), x, weights, 1.0, True)["params"])
    out = jax.jit(module.apply, static_argnums=(4,))({"params": params}, x, weights, 1.0, True)
    assert out["quantized"].shape == (2, 3, 5) and out["codes"].shape == (2, 3, 2)

    logits = (x @ params["logits"]["kernel"] + params["logits"]["bias"]).reshape(2, 3, 2, 4)
    codes = np.asarray(logits.argmax(-1))
    np.testing.assert_array_equal(out["codes"], codes)
    book = np.asarray(params["codebook"]).reshape(2, 4, 3)
    words = np.concatenate([book[0][codes[..., 0]], book[1][codes[..., 1]]], axis=-1)
    want = words @ params["out_projection"]["kernel"] + params["out_projection"]["bias"]
    np.testing.assert_allclose(out["quantized"], want, rtol=1e-5, atol=1e-5)
    probs = np.asarray(jax.nn.softmax(logits))
    w = np.asarray(weights)
    np.testing.assert_allclose(out["prob_perplexity"], _np_perplexity(probs, w), rtol=1e-5)
    np.testing.assert_allclose(out["code_perplexity"], _np_perplexity(np.eye(4)[codes], w), rtol=1e-5)

    def train_sum(p):
        y = module.apply({"params": p}, x, weights, 2.0, False, rngs={"gumbel": jax.random.key(3)})
        return jnp.sum(y["quantized"] ** 2)

    grads = jax.jit(jax.grad(train_sum))(params)
    assert np.abs(grads["logits"]["kernel"]).max() > 1e-4  # straight-through reaches the logits
    assert np.abs(grads["codebook"]).max() > 1e-4
