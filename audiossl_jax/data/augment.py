"""Spectrogram augmentations in JAX: pure functions of (rng, x, ...), jit- and vmap-able.

The ones the jitted steps use (one module for every method; k-mix, which needs the memory bank in
`aux`, is `objectives/kmix.py`):
* `byol_random_resize_crop` (+ `crop_parameters`, `resize_matrix`): BYOL-A's bicubic
  RandomResizeCrop of a batch with its validity mask, SLICER's views (`objectives/slicer.py`);
* `batch_mixup`: timm's batch-mode mixup (one lambda per batch, partner = the batch reversed),
  fine-tuning (`objectives/finetune.py`);
* `spec_augment`: torchaudio Frequency/TimeMasking with `iid_masks=True`, fine-tuning.

Per-example building blocks (not used by a built-in method):

Per-example functions take one log-mel `x` [time, mel] (map them over a batch with `jax.vmap` and
`jax.random.split(rng, batch)`); `mixup` works on a batch. All shapes are static; random sizes
become masks or sampling grids, so everything compiles once.

* `time_mask`, `freq_mask`: SpecAugment (Park et al., 2019): `num_masks` bands of uniform width
  in [0, max_width] at uniform positions are set to `fill` (0 = the mean of normalised features).
* `mixup`: per-example lambda ~ Beta(alpha, alpha), partner = a random permutation of the batch;
  features and labels mixed linearly, a mixed frame is valid if it is valid in either input.
* `roll`: circular shift in time by a uniform offset (BYOL-A / SLICER style), mask rolled along.
* `random_resize_crop`: BYOL-A's RandomResizeCrop: the spectrogram sits centred on a zero canvas
  `virtual_crop_scale` times its size; a crop of (freq_scale, time_scale) times its size is taken
  at a random place and resized back (bilinear with align_corners, where BYOL-A uses bicubic).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _band_mask(rng: jax.Array, length: int, max_width: int, num_masks: int) -> jax.Array:
    """bool [length]: union of `num_masks` random bands of width in [0, max_width]."""
    k_width, k_start = jax.random.split(rng)
    widths = jax.random.randint(k_width, (num_masks,), 0, min(max_width, length) + 1)
    starts = jax.random.randint(k_start, (num_masks,), 0, length - widths + 1)
    pos = jnp.arange(length)[None, :]
    return jnp.any((pos >= starts[:, None]) & (pos < (starts + widths)[:, None]), axis=0)


def time_mask(rng: jax.Array, x: jax.Array, *, max_width: int, num_masks: int = 1,
              fill: float = 0.0) -> jax.Array:
    """SpecAugment time masking of x [time, mel]."""
    mask = _band_mask(rng, x.shape[0], max_width, num_masks)
    return jnp.where(mask[:, None], jnp.asarray(fill, x.dtype), x)


def freq_mask(rng: jax.Array, x: jax.Array, *, max_width: int, num_masks: int = 1,
              fill: float = 0.0) -> jax.Array:
    """SpecAugment frequency masking of x [time, mel]."""
    mask = _band_mask(rng, x.shape[1], max_width, num_masks)
    return jnp.where(mask[None, :], jnp.asarray(fill, x.dtype), x)


def mixup_params(rng: jax.Array, batch_size: int, alpha: float) -> tuple[jax.Array, jax.Array]:
    """(lam float32 [batch], partner int32 [batch]) for `mix`."""
    k_lam, k_perm = jax.random.split(rng)
    lam = jax.random.beta(k_lam, alpha, alpha, (batch_size,))
    return lam, jax.random.permutation(k_perm, batch_size)


def mix(x: jax.Array, labels: jax.Array, valid: jax.Array, lam: jax.Array, partner: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [b, t, m], labels [b, c], valid [b, t] mixed with their partners' by weight lam [b]."""
    lx = lam.astype(x.dtype)[:, None, None]
    ly = lam.astype(labels.dtype)[:, None]
    return (lx * x + (1 - lx) * x[partner], ly * labels + (1 - ly) * labels[partner],
            valid | valid[partner])


def mixup(rng: jax.Array, x: jax.Array, labels: jax.Array, valid: jax.Array, *, alpha: float = 0.5
          ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mixup of a batch (see `mix`); returns (features, labels, valid)."""
    return mix(x, labels, valid, *mixup_params(rng, x.shape[0], alpha))


def roll(rng: jax.Array, x: jax.Array, valid: jax.Array | None = None
         ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Circular shift of x [time, mel] (and valid [time], if given) by a uniform offset."""
    shift = jax.random.randint(rng, (), 0, x.shape[0])
    rolled = jnp.roll(x, shift, axis=0)
    return rolled if valid is None else (rolled, jnp.roll(valid, shift, axis=0))


def resize_crop_params(rng: jax.Array, shape: tuple[int, int], *,
                       virtual_crop_scale: tuple[float, float] = (1.5, 1.0),
                       time_scale: tuple[float, float] = (0.6, 1.5),
                       freq_scale: tuple[float, float] = (0.6, 1.5)) -> jax.Array:
    """int32 [4] = (top, left, height, width) of a crop on the (time, mel) virtual canvas.
    `virtual_crop_scale` is (time, mel) as BYOL-A's (1.0, 1.5) is (freq, time)."""
    canvas = [int(s * n) for s, n in zip(virtual_crop_scale, shape)]
    k_t, k_f, k_i, k_j = jax.random.split(rng, 4)
    h = jnp.clip((jax.random.uniform(k_t, (), minval=time_scale[0], maxval=time_scale[1])
                  * shape[0]).astype(jnp.int32), 1, canvas[0])
    w = jnp.clip((jax.random.uniform(k_f, (), minval=freq_scale[0], maxval=freq_scale[1])
                  * shape[1]).astype(jnp.int32), 1, canvas[1])
    i = jax.random.randint(k_i, (), 0, canvas[0] - h + 1)
    j = jax.random.randint(k_j, (), 0, canvas[1] - w + 1)
    return jnp.stack([i, j, h, w])


def resize_crop(x: jax.Array, box: jax.Array, virtual_crop_scale: tuple[float, float] = (1.5, 1.0)
                ) -> jax.Array:
    """Crops `box` (top, left, height, width) from the zero canvas holding x [time, mel] centred,
    and resizes it to x's shape (bilinear, align_corners=True)."""
    t, m = x.shape
    canvas = [int(s * n) for s, n in zip(virtual_crop_scale, x.shape)]
    offset = jnp.array([(canvas[0] - t) // 2, (canvas[1] - m) // 2], jnp.float32)
    box = box.astype(jnp.float32)

    def grid(n, start, size):  # align_corners: output 0 and n-1 hit the crop's first and last cell
        return start + jnp.arange(n, dtype=jnp.float32) * (size - 1) / max(n - 1, 1)

    rows = grid(t, box[0], box[2]) - offset[0]
    cols = grid(m, box[1], box[3]) - offset[1]
    coords = jnp.meshgrid(rows, cols, indexing="ij")
    out = jax.scipy.ndimage.map_coordinates(x.astype(jnp.float32), coords, order=1, mode="constant",
                                            cval=0.0)
    return out.astype(x.dtype)


def random_resize_crop(rng: jax.Array, x: jax.Array, *,
                       virtual_crop_scale: tuple[float, float] = (1.5, 1.0),
                       time_scale: tuple[float, float] = (0.6, 1.5),
                       freq_scale: tuple[float, float] = (0.6, 1.5)) -> jax.Array:
    """BYOL-A RandomResizeCrop of x [time, mel] (module docstring)."""
    box = resize_crop_params(rng, x.shape, virtual_crop_scale=virtual_crop_scale,
                             time_scale=time_scale, freq_scale=freq_scale)
    return resize_crop(x, box, virtual_crop_scale)


# ---------------------------------------------------------------- BYOL-A random-resize-crop (SLICER)

def cubic_coefficients(t: jax.Array) -> jax.Array:
    """PyTorch's bicubic taps (A = -0.75) for fractional offsets t [..., ] -> [..., 4]."""
    a = -0.75

    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return jnp.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def resize_matrix(out_size: int, in_size: int, canvas_size: int, start: jax.Array,
                  length: jax.Array) -> jax.Array:
    """[out_size, in_size] matrix of BYOL-A's crop-and-resize along one axis.

    The input sits centred on a zero canvas of `canvas_size`; the crop [start, start + length) of
    the canvas is resized to `out_size` with bicubic interpolation, align_corners=True, taps clamped
    to the crop (torch.nn.functional.interpolate). Canvas zeros contribute nothing.
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
    onehot = jax.nn.one_hot(jnp.where(inside, source, 0), in_size) * (weights * inside)[..., None]
    return onehot.sum(axis=1)


def crop_parameters(rng: jax.Array, in_size: int, canvas_size: int,
                    scale: tuple[float, float]) -> tuple[jax.Array, jax.Array]:
    """BYOL-A's RandomResizeCrop.get_params along one axis: (start, length) on the canvas."""
    size_rng, start_rng = jax.random.split(rng)
    length = jnp.floor(jax.random.uniform(size_rng, (), minval=scale[0], maxval=scale[1]) * in_size)
    length = jnp.clip(length.astype(jnp.int32), 1, canvas_size)
    start = jnp.floor(jax.random.uniform(start_rng, ()) * (canvas_size - length + 1)).astype(jnp.int32)
    return jnp.minimum(start, canvas_size - length), length


def byol_random_resize_crop(rng: jax.Array, x: jax.Array, valid: jax.Array, *,
                            virtual_scale: tuple[float, float], freq_scale: tuple[float, float],
                            time_scale: tuple[float, float]) -> tuple[jax.Array, jax.Array]:
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
        along_t = resize_matrix(frames, frames, canvas_t, t_start, t_len)
        along_f = resize_matrix(mel, mel, canvas_f, f_start, f_len)
        out = along_t @ clip.astype(jnp.float32) @ along_f.T
        padded_weight = along_t @ (~clip_valid).astype(jnp.float32)
        return out, padded_weight < 0.5

    return jax.vmap(one)(jax.random.split(rng, x.shape[0]), x, valid)


# ---------------------------------------------------------------- fine-tuning: batch mixup, SpecAugment

def batch_mixup(rng: jax.Array, features: jax.Array, valid: jax.Array, labels: jax.Array, *, alpha: float,
          prob: float) -> tuple[jax.Array, jax.Array, jax.Array]:
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
