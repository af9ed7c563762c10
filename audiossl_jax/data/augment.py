"""Spectrogram augmentations in JAX: pure functions of (rng, x, ...), jit- and vmap-able.

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
