"""EAT's inverse block masking: visible patches come in square blocks, the rest is masked.

A JAX port of `compute_block_mask_2d(..., inverse_mask=True, require_same_masks=True)` from data2vec 2.0 /
EAT (`utils/data_utils.py`):

1. keep_prob = 1 - mask_prob (0.2); draw int(L * (keep_prob + mask_prob_adjust) / block**2) block
   centres uniformly (with replacement) over the L = H*W patches and mark the block x block square
   around each (clipped at the grid edges) as visible;
2. fix the count to exactly K = int(L * keep_prob) visible patches per example: if too many are marked,
   unmark a uniformly random subset of them; if too few, mark uniformly random unmarked patches.

Step 2 is done with one `top_k` over (marked + uniform noise), which draws the same distribution as the
reference's two `torch.multinomial` calls. Every example therefore has the same number of visible
patches, so the student's input has a fixed shape.

Why pure JAX on device rather than numpy on the host: the mask is a cheap function of the step's rng
key (B*16 x 512 elements), so it costs nothing in the jitted step, needs no host->device transfer or
per-host seeding, is reproducible from (seed, step) on any mesh, and keeps the data pipeline
method-agnostic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def num_visible(num_patches: int, mask_prob: float) -> int:
    """K = int(L * (1 - mask_prob)), with the reference's float arithmetic (512, 0.8 -> 102)."""
    k = int(num_patches * (1.0 - mask_prob))
    if not 0 < k < num_patches:
        raise ValueError(
            f"objective.mask_prob={mask_prob} leaves {k} of {num_patches} patches visible; "
            "need at least one visible and one masked"
        )
    return k


def num_blocks(num_patches: int, mask_prob: float, mask_prob_adjust: float, block: int) -> int:
    """Number of block centres drawn: int(L * ((1 - mask_prob) + mask_prob_adjust) / block**2)."""
    return int(num_patches * (((1.0 - mask_prob) + mask_prob_adjust) / block**2))


def block_regions(
    rng: jax.Array, batch: int, grid: tuple[int, int], *, mask_prob: float, mask_prob_adjust: float, block: int
) -> tuple[jax.Array, jax.Array]:
    """Step 1: (marked [batch, H, W] bool, centres [batch, n] int32 flat patch indices)."""
    h, w = grid
    n = num_blocks(h * w, mask_prob, mask_prob_adjust, block)
    centres = jax.random.randint(rng, (batch, n), 0, h * w, dtype=jnp.int32)
    lo = block // 2  # the block spans centre - lo ... centre - lo + block - 1 on each axis
    ch, cw = (centres // w)[..., None] - lo, (centres % w)[..., None] - lo
    rows, cols = jnp.arange(h), jnp.arange(w)
    in_rows = (rows >= ch) & (rows < ch + block)  # [batch, n, H]
    in_cols = (cols >= cw) & (cols < cw + block)  # [batch, n, W]
    marked = (in_rows[..., :, None] & in_cols[..., None, :]).any(axis=1)
    return marked, centres


def exact_count(rng: jax.Array, marked: jax.Array, k: int) -> jax.Array:
    """Step 2: [batch, L] marked patches -> [batch, k] sorted visible indices, marked ones first in
    priority, ties broken uniformly at random."""
    priority = marked.astype(jnp.float32) + jax.random.uniform(rng, marked.shape)
    _, idx = jax.lax.top_k(priority, k)
    return jnp.sort(idx, axis=-1).astype(jnp.int32)


def inverse_block_mask(
    rng: jax.Array,
    batch: int,
    grid: tuple[int, int],
    *,
    mask_prob: float = 0.8,
    mask_prob_adjust: float = 0.07,
    block: int = 5,
) -> tuple[jax.Array, jax.Array]:
    """Returns (visible [batch, K] int32 sorted patch indices, masked [batch, H*W] bool, True = masked).

    Patch indices are row-major over `grid` = (time patches, mel patches). Jittable: shapes depend only
    on the static arguments.
    """
    h, w = grid
    k = num_visible(h * w, mask_prob)
    region_rng, count_rng = jax.random.split(rng)
    marked, _ = block_regions(
        region_rng, batch, grid, mask_prob=mask_prob, mask_prob_adjust=mask_prob_adjust, block=block
    )
    visible = exact_count(count_rng, marked.reshape(batch, h * w), k)
    masked = jnp.ones((batch, h * w), bool).at[jnp.arange(batch)[:, None], visible].set(False)
    return visible, masked
