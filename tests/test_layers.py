"""The shared layers (models/layers.py) and the one attention module (models/attention.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiossl_jax.models import attention, layers

VALID = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 1, 0, 1, 0]], bool)


def _frames(seed=0):
    return np.random.default_rng(seed).normal(size=(4, 5, 3)).astype(np.float32)


def test_masked_mean_matches_numpy():
    frames = _frames()
    got = np.asarray(layers.masked_mean(jnp.asarray(frames), jnp.asarray(VALID)))
    for b in (0, 1, 3):
        np.testing.assert_allclose(got[b], frames[b][VALID[b]].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(got[2], 0.0)  # no valid frame: zeros, not NaN


def test_masked_mean_ignores_non_finite_padding():
    frames = _frames()
    frames[0, 3:] = np.nan
    frames[3, 0] = np.inf
    got = np.asarray(layers.masked_mean(jnp.asarray(frames), jnp.asarray(VALID)))
    np.testing.assert_allclose(got[0], frames[0, :3].mean(0), rtol=1e-6)
    np.testing.assert_allclose(got[3], frames[3, [1, 3]].mean(0), rtol=1e-6)


def test_masked_mean_bfloat16_counts_exactly():
    frames = jnp.ones((1, 600, 2), jnp.bfloat16)
    valid = jnp.arange(600)[None] < 513  # 513 is not a bfloat16 number; the count must not round
    got = layers.masked_mean(frames * 2, valid)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), 2.0, rtol=1e-2)


def test_masked_max_plus_mean_matches_numpy():
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(3, 5, 4)).astype(np.float32)
    valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    got = np.asarray(layers.masked_max_plus_mean(jnp.asarray(frames), jnp.asarray(valid)))
    for b in range(2):
        kept = frames[b][valid[b]]
        np.testing.assert_allclose(got[b], kept.max(0) + kept.mean(0), rtol=1e-6)
    np.testing.assert_array_equal(got[2], 0.0)


def test_gelu_exact_value_and_gradient_match_jax():
    x = jnp.linspace(-6.0, 6.0, 101)
    np.testing.assert_allclose(layers.gelu_exact(x), jax.nn.gelu(x, approximate=False), atol=1e-7)
    ours = jax.grad(lambda y: jnp.sum(jnp.sin(layers.gelu_exact(y))))(x)
    ref = jax.grad(lambda y: jnp.sum(jnp.sin(jax.nn.gelu(y, approximate=False))))(x)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_layer_norm_names_and_eps():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 8)), jnp.float32)
    norm = layers.layer_norm("ln", eps=1e-6, axis="channels")
    boxed = norm.init(jax.random.key(0), x)["params"]
    assert boxed["scale"].names == ("channels",) and boxed["bias"].names == ("channels",)
    y = np.asarray(norm.apply(nn.unbox({"params": boxed}), x))
    xn = np.asarray(x, np.float64)
    ref = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(y, ref, atol=1e-5)
    assert layers.layer_norm("ln").epsilon == 1e-5  # torch's default, the Conformer's


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dot_product_attention_matches_jax_reference(dtype):
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 6, 2, 4)), dtype) for _ in range(3))
    key_valid = jnp.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    got = attention.dot_product_attention(q, k, v, key_valid)
    assert got.dtype == dtype
    want = jax.nn.dot_product_attention(
        q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), mask=key_valid[:, None, None, :]
    )
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=tol, rtol=tol)


def test_self_attention_params_and_padding():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 7, 8)), jnp.float32)
    valid = jnp.asarray(np.arange(7)[None] < np.array([[7], [4]]))
    for rotary in (False, True):
        model = attention.SelfAttention(num_heads=2, rotary=rotary)
        boxed = model.init(jax.random.key(0), x, valid)["params"]
        shapes = jax.tree.map(lambda a: a.value.shape, boxed, is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
        assert shapes == {
            "qkv": {"kernel": (8, 3, 2, 4), "bias": (3, 2, 4)},
            "out": {"kernel": (2, 4, 8), "bias": (8,)},
        }
        params = nn.unbox(boxed)
        a = model.apply({"params": params}, x, valid)
        b = model.apply({"params": params}, x.at[1, 4:].set(1e3), valid)
        np.testing.assert_allclose(a[1, :4], b[1, :4], atol=1e-5)  # padded keys get no weight
