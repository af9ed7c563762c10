"""Spectrogram augmentations in JAX: pure functions of (rng, x, ...), jit- and vmap-able.

Used inside the jitted steps (one module for every method; k-mix, which needs the memory bank in
`aux`, is `objectives/kmix.py`):
* `byol_random_resize_crop` (+ `crop_parameters`, `resize_taps`, `resize_along`): BYOL-A's bicubic
  RandomResizeCrop of a batch with its validity mask, SLICER's views (`objectives/slicer.py`);
* `batch_mixup`: timm's batch-mode mixup (one lambda per batch, partner = the batch reversed),
  fine-tuning (`objectives/finetune.py`);
* `spec_augment`: torchaudio Frequency/TimeMasking with `iid_masks=True`, fine-tuning.

All shapes are static (random sizes become masks or resize taps), so each compiles once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# ---------------------------------------------------------------- BYOL-A random-resize-crop (SLICER)


def cubic_coefficients(t: jax.Array) -> jax.Array:
    """PyTorch's bicubic taps (A = -0.75) for fractional offsets t [..., ] -> [..., 4]."""
    a = -0.75

    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return jnp.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def resize_taps(
    out_size: int, in_size: int, canvas_size: int, start: jax.Array, length: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """BYOL-A's crop-and-resize along one axis as 4 bicubic taps per output position: (input index
    [out_size, 4] int32, weight [out_size, 4]).

    The input sits centred on a zero canvas of `canvas_size`; the crop [start, start + length) of
    the canvas is resized to `out_size` with bicubic interpolation, align_corners=True, taps clamped
    to the crop (torch.nn.functional.interpolate). Taps on the canvas' zeros get index 0, weight 0.
    """
    offset = (canvas_size - in_size) // 2
    length_f = length.astype(jnp.float32)
    scale = jnp.where(out_size > 1, (length_f - 1) / max(out_size - 1, 1), 0.0)
    real = scale * jnp.arange(out_size, dtype=jnp.float32)
    base = jnp.floor(real)
    weights = cubic_coefficients(real - base)  # [out, 4]
    taps = jnp.clip(base.astype(jnp.int32)[:, None] + jnp.arange(-1, 3)[None, :], 0, length - 1)
    source = start + taps - offset  # input index of each tap
    inside = (source >= 0) & (source < in_size)
    return jnp.where(inside, source, 0), weights * inside


def resize_along(x: jax.Array, source: jax.Array, weights: jax.Array, axis: int) -> jax.Array:
    """x resized along `axis` by taps (`resize_taps`): out[.., o, ..] = sum_k weights[o, k] *
    x[.., source[o, k], ..]. A gather of 4 slices per output position: on XLA:CPU the SLICER views
    take a ninth of the time of the same resize as products with one-hot [out, in] matrices, which
    cost more to build than to multiply."""
    taps = jnp.take(x, source, axis=axis)  # axis -> (out, 4)
    shape = [1] * taps.ndim
    shape[axis], shape[axis + 1] = weights.shape
    return (taps * weights.reshape(shape)).sum(axis=axis + 1)


def crop_parameters(
    rng: jax.Array, in_size: int, canvas_size: int, scale: tuple[float, float]
) -> tuple[jax.Array, jax.Array]:
    """BYOL-A's RandomResizeCrop.get_params along one axis: (start, length) on the canvas."""
    size_rng, start_rng = jax.random.split(rng)
    length = jnp.floor(jax.random.uniform(size_rng, (), minval=scale[0], maxval=scale[1]) * in_size)
    length = jnp.clip(length.astype(jnp.int32), 1, canvas_size)
    start = jnp.floor(jax.random.uniform(start_rng, ()) * (canvas_size - length + 1)).astype(jnp.int32)
    return jnp.minimum(start, canvas_size - length), length


def byol_random_resize_crop(
    rng: jax.Array,
    x: jax.Array,
    valid: jax.Array,
    *,
    virtual_scale: tuple[float, float],
    freq_scale: tuple[float, float],
    time_scale: tuple[float, float],
) -> tuple[jax.Array, jax.Array]:
    """BYOL-A random-resize-crop of each clip [B, T, mel] (own crop per clip), output same shape:
    bicubic as BYOL-A (SLICER's two views; checked against PyTorch fixtures in tests/test_slicer.py).
    `virtual_scale` = (mel, time) canvas size relative to the input; `freq_scale` / `time_scale`:
    crop size ranges relative to the mel bins / frames.

    A frame of the output is valid unless it is made mostly (interpolation weight >= 0.5) of padded
    input frames; the canvas' zero border counts as content, as in BYOL-A.
    """
    _, frames, mel = x.shape
    canvas_t = int(frames * virtual_scale[1])
    canvas_f = int(mel * virtual_scale[0])

    def one(r, clip, clip_valid):
        t_rng, f_rng = jax.random.split(r)
        t_start, t_len = crop_parameters(t_rng, frames, canvas_t, time_scale)
        f_start, f_len = crop_parameters(f_rng, mel, canvas_f, freq_scale)
        t_source, t_weights = resize_taps(frames, frames, canvas_t, t_start, t_len)
        f_source, f_weights = resize_taps(mel, mel, canvas_f, f_start, f_len)
        out = resize_along(resize_along(clip.astype(jnp.float32), t_source, t_weights, 0), f_source, f_weights, 1)
        padded_weight = resize_along((~clip_valid).astype(jnp.float32), t_source, t_weights, 0)
        return out, padded_weight < 0.5

    return jax.vmap(one)(jax.random.split(rng, x.shape[0]), x, valid)


# ---------------------------------------------------------------- fine-tuning: batch mixup, SpecAugment


def batch_mixup(
    rng: jax.Array, features: jax.Array, valid: jax.Array, labels: jax.Array, *, alpha: float, prob: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batch mixup with the reversed batch; returns (features, valid, labels). lambda = 1 with
    probability 1 - prob. A mixed frame is valid if it is valid in either clip."""
    lam_rng, apply_rng = jax.random.split(rng)
    lam = jax.random.beta(lam_rng, alpha, alpha)
    lam = jnp.where(jax.random.uniform(apply_rng) < prob, lam, 1.0)
    mix = lambda x: lam * x + (1.0 - lam) * x[::-1]  # noqa: E731
    valid = jnp.where(lam < 1.0, valid | valid[::-1], valid)
    return mix(features), valid, mix(labels)


def spec_augment(rng: jax.Array, features: jax.Array, *, freq_param: float, time_param: float) -> jax.Array:
    """One frequency and one time mask per clip (torchaudio `iid_masks=True`): width floor(U * param),
    start floor(U * (size - U * param)), filled with 0. features [B, T, mel]."""
    b = features.shape[0]
    for axis, param, key in ((2, freq_param, 0), (1, time_param, 1)):
        size = features.shape[axis]
        width_rng, start_rng = jax.random.split(jax.random.fold_in(rng, key))
        value = jax.random.uniform(width_rng, (b,)) * param
        start = jnp.floor(jax.random.uniform(start_rng, (b,)) * (size - value))
        end = start + jnp.floor(value)
        idx = jnp.arange(size)[None]
        hit = (idx >= start[:, None]) & (idx < end[:, None])  # [B, size]
        hit = hit[:, None, :] if axis == 2 else hit[:, :, None]
        features = jnp.where(hit, 0.0, features)
    return features
