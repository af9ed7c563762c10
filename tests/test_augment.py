"""JAX augmentations: shapes under jit/vmap, and semantics against numpy references."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiossl_jax.data import augment

T, M, B = 50, 16, 4


def _x(seed=0, shape=(T, M)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


@pytest.mark.parametrize("fn,axis", [(augment.time_mask, 0), (augment.freq_mask, 1)])
def test_masks_blank_whole_bands_within_width(fn, axis):
    x = _x() + 10.0  # no value equals the fill by chance
    keys = jax.random.split(jax.random.PRNGKey(0), 20)
    many = jax.jit(jax.vmap(functools.partial(fn, max_width=7, num_masks=2, fill=-1.0), (0, None)))
    for out in np.asarray(many(keys, x)):
        blanked = np.all(out == -1.0, axis=1 - axis)
        untouched = np.all(out == np.asarray(x), axis=1 - axis)
        assert np.all(blanked | untouched)  # each row/column entirely masked or entirely kept
        assert blanked.sum() <= 14
    assert np.asarray(many(keys, x) == -1.0).any()
    out = jax.jit(functools.partial(fn, max_width=0, num_masks=3))(keys[0], x)
    np.testing.assert_array_equal(out, x)


def test_vmap_gives_different_masks_per_example():
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    xs = jnp.ones((8, T, M))
    out = jax.jit(jax.vmap(functools.partial(augment.time_mask, max_width=20)))(keys, xs)
    assert out.shape == xs.shape
    masked = np.asarray(out[:, :, 0] == 0)
    assert len({row.tobytes() for row in masked}) > 1


def test_mixup_semantics():
    x = _x(1, (B, T, M))
    labels = jnp.eye(B)  # one-hot rows: the mixed labels reveal each row's lam and partner
    valid = jnp.arange(T)[None, :] < jnp.array([50, 20, 35, 10])[:, None]
    out_x, out_y, out_v = jax.jit(functools.partial(augment.mixup, alpha=0.4))(
        jax.random.PRNGKey(3), x, labels, valid)
    out_y = np.asarray(out_y)
    lam = np.diag(out_y).copy()
    partner = np.array([np.argmax(row - np.eye(B)[i] * 2) if lam[i] < 1 - 1e-6 else i
                        for i, row in enumerate(out_y)])
    assert sorted(partner) == list(range(B)) and np.all((lam >= 0) & (lam <= 1))
    np.testing.assert_allclose(out_y.sum(1), 1.0, atol=1e-6)
    xn, vn = np.asarray(x), np.asarray(valid)
    np.testing.assert_allclose(out_x, lam[:, None, None] * xn + (1 - lam[:, None, None]) * xn[partner],
                               atol=1e-5)
    np.testing.assert_array_equal(out_v, vn | vn[partner])


def test_roll_is_a_circular_shift_of_features_and_mask():
    x = _x(2)
    valid = jnp.arange(T) < 30
    out, out_valid = jax.jit(augment.roll)(jax.random.PRNGKey(5), x, valid)
    shifts = [s for s in range(T) if np.array_equal(np.roll(np.asarray(x), s, 0), np.asarray(out))]
    assert len(shifts) == 1
    np.testing.assert_array_equal(out_valid, np.roll(np.asarray(valid), shifts[0]))


def _resize_crop_reference(x, box, scale):
    """numpy: zero canvas with x centred, crop, bilinear resize with align_corners=True."""
    t, m = x.shape
    ct, cm = int(scale[0] * t), int(scale[1] * m)
    canvas = np.zeros((ct + 1, cm + 1))  # +1: zero beyond the last cell for interpolation
    canvas[(ct - t) // 2:(ct - t) // 2 + t, (cm - m) // 2:(cm - m) // 2 + m] = x
    i, j, h, w = box
    rows = i + np.arange(t) * (h - 1) / (t - 1)
    cols = j + np.arange(m) * (w - 1) / (m - 1)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    g = lambda r, c: canvas[np.ix_(r, c)]
    return ((1 - fr) * (1 - fc) * g(r0, c0) + (1 - fr) * fc * g(r0, c0 + 1)
            + fr * (1 - fc) * g(r0 + 1, c0) + fr * fc * g(r0 + 1, c0 + 1))


def test_random_resize_crop_matches_numpy_bilinear_reference_under_jit_vmap():
    x = _x(4)
    scale = (1.5, 1.0)
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    boxes = jax.jit(jax.vmap(functools.partial(augment.resize_crop_params, shape=(T, M),
                                               virtual_crop_scale=scale)))(keys)
    crops = jax.jit(jax.vmap(augment.random_resize_crop, (0, None)))(keys, x)
    assert crops.shape == (6, T, M) and crops.dtype == jnp.float32
    for box, got in zip(np.asarray(boxes), np.asarray(crops)):
        i, j, h, w = (int(v) for v in box)
        assert 1 <= h <= int(1.5 * T) and 1 <= w <= M and i + h <= int(1.5 * T) and j + w <= M
        np.testing.assert_allclose(got, _resize_crop_reference(np.asarray(x), (i, j, h, w), scale), atol=1e-4)
    # The reference itself: cropping exactly the placed spectrogram gives it back.
    np.testing.assert_allclose(_resize_crop_reference(np.asarray(x), ((int(1.5 * T) - T) // 2, 0, T, M), scale),
                               x, atol=1e-6)
