"""EAT's CNN decoder: grouped-conv implementations agree with feature_group_count; numpy reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from audiossl_jax.models import cnn_decoder
from audiossl_jax.parallel.rules import DEFAULT_RULES, LOGICAL_AXES


def _rand(shape, seed, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def np_grouped_conv(x, kernel, bias, groups):
    """'Same' grouped conv as an explicit sum over taps (torch Conv2d(groups=...), padding k // 2)."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    k, cin, cout = kernel.shape[0], x.shape[-1], kernel.shape[-1]
    gi, go = cin // groups, cout // groups
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (cout,))
    for g in range(groups):
        for a in range(k):
            for b in range(k):
                out[..., g * go : (g + 1) * go] += (
                    xp[:, a : a + h, b : b + w, g * gi : (g + 1) * gi] @ kernel[a, b, :, g * go : (g + 1) * go]
                )
    return out + np.asarray(bias)


@pytest.mark.parametrize("impl", ["per_group", "block_diagonal"])
def test_grouped_conv_impls_equal_feature_group_count(impl):
    x = _rand((2, 6, 4, 16), 0)
    kernel = _rand((3, 3, 4, 16), 1, 0.2)  # 4 groups of 4 -> 4 channels each
    ref = cnn_decoder.grouped_conv2d(x, kernel, 4, "feature_group_count")
    np.testing.assert_allclose(ref, np_grouped_conv(x, kernel, 0.0, 4), atol=1e-5)
    np.testing.assert_allclose(cnn_decoder.grouped_conv2d(x, kernel, 4, impl), ref, atol=1e-5)
    cot = _rand(ref.shape, 2)

    def grad_of(i):
        loss = lambda a, b: jnp.sum(cnn_decoder.grouped_conv2d(a, b, 4, i) * cot)  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)

    grads = [grad_of("feature_group_count"), grad_of(impl)]
    for ref_g, g in zip(*grads):
        np.testing.assert_allclose(g, ref_g, atol=1e-4)


def test_grouped_conv_validates_shapes():
    with pytest.raises(ValueError, match="groups"):
        cnn_decoder.grouped_conv2d(jnp.zeros((1, 4, 4, 6)), jnp.zeros((3, 3, 1, 6)), 4, "per_group")
    with pytest.raises(ValueError, match="decoder_conv_impl"):
        cnn_decoder.resolve_conv_impl("depthwise")
    assert cnn_decoder.resolve_conv_impl("auto") == "per_group"  # tests run on CPU


def np_decoder(params, x, groups, layers):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x, np.float64)
    for i in range(layers):
        y = np_grouped_conv(x, p[f"conv_{i}"]["kernel"], p[f"conv_{i}"]["bias"], groups)
        y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-5)
        y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
        x = y + x if y.shape[-1] == x.shape[-1] else y
    return x @ p["proj"]["kernel"] + p["proj"]["bias"]


@pytest.mark.parametrize("in_dim,kernel", [(16, 3), (8, 5)])
def test_decoder_matches_numpy_reference(in_dim, kernel):
    """Data2vec Decoder2d: conv -> LayerNorm (no affine) -> GELU -> residual (when widths match)."""
    dec = cnn_decoder.CNNDecoder2D(dim=16, out_dim=12, num_layers=3, kernel_size=kernel, groups=4)
    x = _rand((2, 5, 3, in_dim), 3)
    boxed = jax.eval_shape(dec.init, jax.random.key(0), x)["params"]
    for leaf in jax.tree.leaves(boxed, is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned)):
        assert isinstance(leaf, nn.LogicallyPartitioned)
        assert all(n is None or n in LOGICAL_AXES for n in leaf.names)
        nn.logical_to_mesh_axes(leaf.names, DEFAULT_RULES)  # each name at most once per array
    rng = np.random.default_rng(4)
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), nn.unbox(boxed))
    assert "norm_0" not in params  # LayerNorm without affine
    assert params["conv_0"]["kernel"].shape == (kernel, kernel, in_dim // 4, 16)
    out = jax.jit(dec.apply)({"params": params}, x)
    np.testing.assert_allclose(out, np_decoder(params, x, 4, 3), atol=2e-4)
