"""bfloat16-operand matmuls with float32 results (`models/mixed_matmul.py`, `config.train.matmul_dtype`).

* `bf16_dot_general` == `lax.dot_general` of the bf16-rounded operands (forward), its gradient with
  respect to the right operand == autodiff of that float32 product, and with respect to the left one
  within bf16 rounding of the cotangent; for the dimension layouts the models use.
* One training step of each method's tiny config with `train.matmul_dtype=bfloat16`: the step's dots
  take bf16 operands, params and optimizer state stay float32; wav2vec2's loss / gradient norm stay
  close to the float32 step's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers_sharding import TINY_ONE_LAYER, build_objective, harness_config, one_step, synthetic_batch
from jax import lax

from audiossl_jax.models import mixed_matmul
from audiossl_jax.train import precision

# what users run: XLA's default optimisation level (tests/conftest.py)
pytestmark = pytest.mark.xla_default

BF16 = jnp.bfloat16

# (lhs shape, rhs shape, dimension numbers): Dense, Dense on a batch of sequences, the attention
# projections and both attention einsums (as jnp.einsum lowers them), a contraction over two axes.
LAYOUTS = [
    ((6, 8), (8, 5), (((1,), (0,)), ((), ()))),
    ((2, 6, 8), (8, 5), (((2,), (0,)), ((), ()))),
    ((2, 3, 7, 4), (2, 3, 9, 4), (((3,), (3,)), ((0, 1), (0, 1)))),
    ((2, 3, 7, 9), (2, 3, 9, 4), (((3,), (2,)), ((0, 1), (0, 1)))),
    ((2, 7, 3, 4), (3, 4, 6), (((2, 3), (0, 1)), ((), ()))),
]


def _operands(lhs_shape, rhs_shape, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, lhs_shape), jax.random.normal(k2, rhs_shape)


def _rounded(x):
    return x.astype(BF16).astype(jnp.float32)


@pytest.mark.parametrize("lhs_shape,rhs_shape,dims", LAYOUTS)
def test_forward_is_the_product_of_bf16_rounded_operands(lhs_shape, rhs_shape, dims):
    lhs, rhs = _operands(lhs_shape, rhs_shape)
    got = jax.jit(lambda a, b: mixed_matmul.bf16_dot_general(a, b, dims))(lhs, rhs)
    want = lax.dot_general(_rounded(lhs), _rounded(rhs), dims, precision=lax.Precision.HIGHEST)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # and not the float32 product: the operands really are rounded
    exact = lax.dot_general(lhs, rhs, dims, precision=lax.Precision.HIGHEST)
    assert float(jnp.max(jnp.abs(got - exact))) > 1e-4


@pytest.mark.parametrize("lhs_shape,rhs_shape,dims", LAYOUTS)
def test_gradients(lhs_shape, rhs_shape, dims):
    lhs, rhs = _operands(lhs_shape, rhs_shape, seed=1)
    weight = jax.random.normal(jax.random.key(2), lax.dot_general(lhs, rhs, dims).shape)

    def ours(a, b):
        return jnp.sum(jnp.sin(mixed_matmul.bf16_dot_general(a, b, dims)) * weight)

    def reference(a, b):  # float32 autodiff of the float32 product, at the rounded operands
        return jnp.sum(jnp.sin(lax.dot_general(a, b, dims, precision=lax.Precision.HIGHEST)) * weight)

    d_lhs, d_rhs = jax.jit(jax.grad(ours, argnums=(0, 1)))(lhs, rhs)
    r_lhs, r_rhs = jax.grad(reference, argnums=(0, 1))(_rounded(lhs), _rounded(rhs))
    assert d_lhs.dtype == d_rhs.dtype == jnp.float32
    assert d_lhs.shape == lhs.shape and d_rhs.shape == rhs.shape
    # right operand (a Dense kernel): float32 cotangent, same numbers as the reference
    np.testing.assert_allclose(np.asarray(d_rhs), np.asarray(r_rhs), rtol=1e-4, atol=1e-4)
    # left operand (activations): the cotangent is rounded to bf16 (relative error ~2^-8)
    scale = float(jnp.max(jnp.abs(r_lhs)))
    assert float(jnp.max(jnp.abs(d_lhs - r_lhs))) < 2e-2 * scale


def test_einsum_and_dense_route_through_it():
    x, w = _operands((3, 5, 8), (8, 4))
    got = mixed_matmul.einsum("btd,de->bte", x, w, jnp.bfloat16)
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(jnp.einsum("btd,de->bte", _rounded(x), _rounded(w))), rtol=1e-5, atol=1e-5
    )
    assert mixed_matmul.einsum("btd,de->bte", x, w, None).dtype == jnp.float32
    assert mixed_matmul.dot_general_for("float32") is lax.dot_general
    assert mixed_matmul.dot_general_for(jnp.bfloat16) is mixed_matmul.bf16_dot_general
    with pytest.raises(ValueError, match="float16"):
        mixed_matmul.resolve("float16")


def test_config_field_is_checked_and_ignored_under_bf16_compute():
    config = harness_config("configs/eat.py:tiny")
    assert precision.matmul_dtype(config) is None  # default float32
    config.train.matmul_dtype = "bfloat16"
    assert precision.matmul_dtype(config) == jnp.bfloat16
    config.train.compute_dtype = "bfloat16"  # everything is bf16 already
    assert precision.matmul_dtype(config) is None
    config.train.compute_dtype = "float32"
    config.train.matmul_dtype = "half"
    with pytest.raises(ValueError, match="config.train.matmul_dtype='half'"):
        precision.matmul_dtype(config)


METHODS = TINY_ONE_LAYER


def _one_step(spec, mel, overrides):
    """(lowered text, state, metrics) of one train step of `spec` on one device (helpers_sharding)."""
    from audiossl_jax.parallel import mesh as mesh_lib

    config = harness_config(spec, overrides)
    mesh = mesh_lib.make_mesh((1, 1, 1), config.mesh.axes)
    state, metrics, _, _, hlo = one_step(config, build_objective(config), mesh, synthetic_batch(config, 4, mel), 0)
    return hlo, jax.device_get(state), metrics


def _bf16_dots(text: str) -> list[str]:
    return [line for line in text.splitlines() if "dot_general" in line and "bf16>" in line]


@pytest.mark.parametrize("method", list(METHODS))
def test_train_step_with_bf16_matmuls(method):
    """The option reaches every method's matmuls; params and optimizer state stay float32. The float32
    step is compared on wav2vec2 only (its conformer has every kind of matmul the option changes:
    dense layers, the attention projections and both attention einsums); one compile per method."""
    spec, mel, overrides = METHODS[method]
    text16, state16, m16 = _one_step(spec, mel, overrides + ["train.matmul_dtype=bfloat16"])
    assert _bf16_dots(text16), "no dot takes bf16 operands with train.matmul_dtype=bfloat16"
    for leaf in jax.tree.leaves(state16["params"]) + jax.tree.leaves(state16["opt_state"]):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    assert np.isfinite(m16["loss"]) and np.isfinite(m16["grad_norm"])
    if method != "wav2vec2":
        return
    text32, _, m32 = _one_step(spec, mel, overrides)
    assert not _bf16_dots(text32)
    assert abs(m16["loss"] - m32["loss"]) <= 2e-2 * max(1.0, abs(m32["loss"])), (m16["loss"], m32["loss"])
    assert abs(m16["grad_norm"] - m32["grad_norm"]) <= 5e-2 * m32["grad_norm"], (m16["grad_norm"], m32["grad_norm"])
