"""Shifted-sum depthwise conv vs XLA's grouped convolution (values and gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiossl_jax.models.depthwise_conv import DepthwiseConv1D, depthwise_conv1d, depthwise_conv1d_autodiff


def _grouped_conv(x, kernel):
    """Reference: lax.conv_general_dilated with feature_group_count=C (as torch Conv1d(groups=C))."""
    taps, channels = kernel.shape
    half = (taps - 1) // 2
    return jax.lax.conv_general_dilated(
        x,
        kernel[:, None, :],
        window_strides=(1,),
        padding=[(half, half)],
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=channels,
        precision=jax.lax.Precision.HIGHEST,
    )


def _value_and_vjp(conv):
    @jax.jit
    def run(x, w, g):
        y, vjp = jax.vjp(conv, x, w)
        return y, vjp(g)

    return run


@pytest.mark.parametrize("conv", [depthwise_conv1d, depthwise_conv1d_autodiff])
@pytest.mark.parametrize("taps,length", [(1, 6), (5, 9), (7, 4)])
def test_matches_grouped_conv_values_and_gradients(conv, taps, length):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, length, 3))
    w = jax.random.normal(kw, (taps, 3))
    g = jax.random.normal(kg, (2, length, 3))
    y, grads = _value_and_vjp(conv)(x, w, g)
    y_ref, grads_ref = _value_and_vjp(_grouped_conv)(x, w, g)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_tap_alignment_is_cross_correlation():
    # kernel [0, 0, 1] picks x[t + 1]; the last frame sees zero padding.
    x = jnp.arange(5.0).reshape(1, 5, 1)
    w = jnp.array([[0.0], [0.0], [1.0]])
    np.testing.assert_array_equal(depthwise_conv1d(x, w)[0, :, 0], [1, 2, 3, 4, 0])


def test_even_taps_rejected():
    with pytest.raises(ValueError, match="odd"):
        depthwise_conv1d(jnp.ones((1, 4, 2)), jnp.ones((4, 2)))


def test_module_adds_bias_and_has_logical_axes():
    module = DepthwiseConv1D(kernel_size=3)
    variables = module.init(jax.random.key(0), jnp.ones((1, 4, 2)))
    assert variables["params"]["kernel"].names == ("kernel", "channels")
    params = jax.tree.map(jnp.zeros_like, nn.unbox(variables["params"]))
    params["bias"] = jnp.array([1.0, -2.0])
    out = module.apply({"params": params}, jnp.ones((1, 4, 2)))
    np.testing.assert_array_equal(out, np.broadcast_to([1.0, -2.0], (1, 4, 2)))
