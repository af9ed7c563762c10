"""Conformer encoder: shapes, frame stacking, padding invariance, masking, dropout, scan, rotary."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiossl_jax.models.attention import apply_rotary, rotary_angles
from audiossl_jax.models.conformer import SIZES, Conformer, stack_frames, stacked_valid
from audiossl_jax.models.layers import Dropout, byte_keep_mask
from audiossl_jax.parallel.rules import LOGICAL_AXES

MEL = 8
LENGTHS = (37, 21)  # second clip padded; 37 is not a multiple of 4


def _batch(length=37, seed=0):
    features = jax.random.normal(jax.random.key(seed), (2, length, MEL))
    valid = jnp.arange(length)[None, :] < jnp.array(LENGTHS)[:, None]
    return features, valid


@pytest.fixture(scope="module")
def tiny():
    model = Conformer(**SIZES["tiny"], dropout_rate=0.1, attention_dropout_rate=0.1)
    features, valid = _batch()
    params = nn.unbox(model.init(jax.random.key(1), features, valid)["params"])
    return model, params


def test_stack_frames_layout_and_any_valid_rule():
    features = jnp.arange(2 * 6 * 3, dtype=jnp.float32).reshape(2, 6, 3)
    valid = jnp.array([[True] * 6, [True] * 5 + [False]])
    stacked, svalid = stack_frames(features, valid, 4)
    assert stacked.shape == (2, 2, 12)
    np.testing.assert_array_equal(stacked[0, 1, :6], features[0, 4:6].reshape(-1))
    np.testing.assert_array_equal(stacked[0, 1, 6:], 0.0)  # padding to a multiple of 4
    np.testing.assert_array_equal(stacked[1, 1, 3:], 0.0)  # invalid frame zeroed
    np.testing.assert_array_equal(svalid, [[True, True], [True, True]])  # any frame valid
    np.testing.assert_array_equal(stacked_valid(valid, 4), svalid)
    np.testing.assert_array_equal(stacked_valid(jnp.array([[True] * 4 + [False] * 2]), 4), [[True, False]])


def test_output_shapes_and_padded_frames_zero(tiny):
    model, params = tiny
    features, valid = _batch()
    out = model.apply({"params": params}, features, valid)
    d = SIZES["tiny"]["d_model"]
    assert out["frames"].shape == (2, 10, d) and out["latent"].shape == (2, 10, d)
    assert out["clip"].shape == (2, d) and out["latent_penalty"].shape == ()
    np.testing.assert_array_equal(out["valid"].sum(1), [10, 6])  # ceil(37/4), ceil(21/4)
    np.testing.assert_array_equal(out["frames"][1, 6:], 0.0)
    np.testing.assert_allclose(out["clip"][1], out["frames"][1, :6].mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("conv_norm", ["layer", "group"])
def test_valid_outputs_ignore_padding_values_and_amount(conv_norm):
    model = Conformer(**SIZES["tiny"], conv_norm=conv_norm)
    features, valid = _batch()
    params = model.init(jax.random.key(1), features, valid)["params"]
    out = model.apply({"params": params}, features, valid)
    # Different values at padded frames.
    noise = 100.0 * jax.random.normal(jax.random.key(9), features.shape)
    noisy = jnp.where(valid[..., None], features, noise)
    out_noisy = model.apply({"params": params}, noisy, valid)
    # More padding at the end.
    longer = jnp.pad(features, ((0, 0), (0, 11), (0, 0)), constant_values=7.0)
    out_longer = model.apply({"params": params}, longer, jnp.pad(valid, ((0, 0), (0, 11))))
    sv = np.asarray(out["valid"])
    for other in (out_noisy, out_longer):
        t = out["frames"].shape[1]
        np.testing.assert_allclose(other["frames"][:, :t][sv], out["frames"][sv], atol=1e-5)
        np.testing.assert_allclose(other["latent"][:, :t][sv], out["latent"][sv], atol=1e-5)
        np.testing.assert_allclose(other["clip"], out["clip"], atol=1e-5)
        np.testing.assert_allclose(other["latent_penalty"], out["latent_penalty"], rtol=1e-5)
    # Sanity: the valid frames themselves do matter.
    changed = model.apply({"params": params}, features.at[0, 0].add(1.0), valid)
    assert np.abs(changed["frames"][0] - out["frames"][0]).max() > 1e-3


def test_span_mask_uses_mask_emb_after_latent(tiny):
    model, params = tiny
    features, valid = _batch()
    out = model.apply({"params": params}, features, valid)
    span = jnp.zeros((2, 10), bool).at[:, 2:5].set(True)
    masked = model.apply({"params": params}, features, valid, span)
    np.testing.assert_array_equal(masked["latent"], out["latent"])
    assert np.abs(masked["frames"] - out["frames"]).max() > 1e-3
    # Whatever the masked frames held, the output is the same: they were replaced by mask_emb.
    other = features.at[:, 8:20].set(3.0)  # stacked frames 2..4
    np.testing.assert_allclose(
        model.apply({"params": params}, other, valid, span)["frames"], masked["frames"], atol=1e-5
    )


def test_dropout_only_when_not_deterministic(tiny):
    model, params = tiny
    features, valid = _batch()
    det = [
        model.apply({"params": params}, features, valid, train=False, rngs={"dropout": jax.random.key(s)})["frames"]
        for s in (0, 1)
    ]
    np.testing.assert_array_equal(det[0], det[1])
    drop = model.apply({"params": params}, features, valid, train=True, rngs={"dropout": jax.random.key(0)})["frames"]
    assert np.abs(drop - det[0]).max() > 1e-3


def test_scan_and_remat_match_python_loop():
    kwargs = {**SIZES["tiny"], "num_layers": 3}
    features, valid = _batch()
    loop = Conformer(**kwargs)
    params = nn.unbox(loop.init(jax.random.key(1), features, valid)["params"])
    want = loop.apply({"params": params}, features, valid)["frames"]
    layers = params["layers"]
    scanned = dict(
        params,
        layers={
            "block_0": layers["block_0"],
            "blocks": {"block": jax.tree.map(lambda *xs: jnp.stack(xs), layers["block_1"], layers["block_2"])},
        },
    )
    for remat in (False, True):
        model = Conformer(**kwargs, scan=True, remat=remat)
        got = model.apply({"params": scanned}, features, valid)["frames"]
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_param_axes_use_known_logical_names(tiny):
    model, _ = tiny
    features, valid = _batch()
    boxed = model.init(jax.random.key(1), features, valid)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    names = {n for x in leaves for n in x.names if n is not None}
    assert names <= set(LOGICAL_AXES), names - set(LOGICAL_AXES)


def test_bfloat16_compute_keeps_float32_params():
    model = Conformer(**SIZES["tiny"], dtype=jnp.bfloat16)
    features, valid = _batch()
    variables = model.init(jax.random.key(1), features, valid)
    params = nn.unbox(variables["params"])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    out = model.apply({"params": params}, features, valid)
    assert out["frames"].dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(out["frames"], np.float32)).all()


def test_rotary_scores_depend_on_relative_position_only():
    head_dim, length = 8, 12
    cos, sin = rotary_angles(length, head_dim)
    q = jnp.broadcast_to(jax.random.normal(jax.random.key(0), (head_dim,)), (1, length, 1, head_dim))
    k = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (head_dim,)), (1, length, 1, head_dim))
    scores = jnp.einsum("bqhd,bkhd->qk", apply_rotary(q, cos, sin), apply_rotary(k, cos, sin))
    for offset in (-3, 0, 5):
        diagonal = np.diagonal(np.asarray(scores), offset)
        np.testing.assert_allclose(diagonal, diagonal[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores[0, 0], jnp.dot(q[0, 0, 0], k[0, 0, 0]), rtol=1e-5)  # angle 0
    assert abs(float(scores[0, 1] - scores[0, 0])) > 1e-3


def test_byte_dropout_rate_and_unbiased_scale():
    keep, realised = byte_keep_mask(jax.random.key(0), (400, 500), 0.1)
    assert realised == 26 / 256
    np.testing.assert_allclose(1.0 - keep.mean(), realised, atol=3e-3)
    x = jnp.ones((400, 500))
    y = Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_allclose(y.mean(), 1.0, atol=5e-3)
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / (1 - 26 / 256)], rtol=1e-6)
    np.testing.assert_array_equal(Dropout(0.1).apply({}, x, deterministic=True), x)


def test_frame_mean_input_norm_removes_a_per_frame_loudness_offset():
    model = Conformer(**SIZES["tiny"], input_norm="frame_mean")
    features, valid = _batch()
    params = nn.unbox(model.init(jax.random.key(1), features, valid)["params"])
    offset = jax.random.normal(jax.random.key(5), features.shape[:2] + (1,)) * 3.0  # loudness per frame
    a = model.apply({"params": params}, features, valid)["frames"]
    b = model.apply({"params": params}, features + offset, valid)["frames"]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    plain = Conformer(**SIZES["tiny"])
    c = plain.apply({"params": params}, features + offset, valid)["frames"]
    assert float(jnp.abs(c - a).max()) > 1e-2  # without it the offset changes the output
    with pytest.raises(ValueError, match="input_norm"):
        Conformer(**SIZES["tiny"], input_norm="loud").init(jax.random.key(1), features, valid)
