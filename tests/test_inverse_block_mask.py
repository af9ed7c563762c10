"""EAT inverse block masking vs a numpy port of data2vec's compute_block_mask_2d(inverse_mask=True)."""

import jax
import numpy as np
import pytest

from audiossl_jax.objectives import inverse_block_mask as ibm

GRID = (64, 8)  # 1024 frames x 128 mel bins in 16x16 patches
L = 512


def np_reference_regions(centres, grid, block):
    """The reference's block marking: every tap clamped into the grid (torch clamp_)."""
    h, w = grid
    marked = np.zeros((len(centres), h, w), bool)
    off = block // 2
    for b, cs in enumerate(centres):
        for c in cs:
            ch, cw = divmod(int(c), w)
            for i in range(block):
                for j in range(block):
                    marked[b, min(max(ch + i - off, 0), h - 1), min(max(cw + j - off, 0), w - 1)] = True
    return marked


def np_reference_marked_counts(rng, batch, grid, mask_prob, adjust, block):
    """Steps 1 of compute_block_mask_2d with numpy randomness: marked-patch count per example."""
    h, w = grid
    n = int(h * w * (((1 - mask_prob) + adjust) / block**2))
    centres = rng.integers(0, h * w, size=(batch, n))
    return np_reference_regions(centres, grid, block).reshape(batch, -1).sum(-1)


def test_counts_follow_the_reference_arithmetic():
    assert ibm.num_visible(L, 0.8) == 102  # int(512 * 0.19999999999999996)
    assert ibm.num_blocks(L, 0.8, 0.07, 5) == 5
    assert ibm.num_visible(L, 0.75) == 128 and ibm.num_blocks(L, 0.75, 0.1, 5) == 7  # EAT-large
    with pytest.raises(ValueError, match="mask_prob"):
        ibm.num_visible(16, 0.99)


def test_block_regions_match_reference_geometry():
    marked, centres = jax.jit(lambda r: ibm.block_regions(r, 64, GRID, mask_prob=0.8, mask_prob_adjust=0.07, block=5))(
        jax.random.key(0)
    )
    assert centres.shape == (64, 5)
    np.testing.assert_array_equal(marked, np_reference_regions(np.asarray(centres), GRID, 5))
    # blocks at the edges are clipped (the reference clamps taps onto the border)
    assert (np.asarray(centres) % 8 == 0).any()


def test_marked_count_distribution_matches_reference():
    marked, _ = jax.jit(lambda r: ibm.block_regions(r, 4000, GRID, mask_prob=0.8, mask_prob_adjust=0.07, block=5))(
        jax.random.key(1)
    )
    ours = np.asarray(marked).reshape(4000, -1).sum(-1)
    ref = np_reference_marked_counts(np.random.default_rng(0), 4000, GRID, 0.8, 0.07, 5)
    assert abs(ours.mean() - ref.mean()) < 1.0, (ours.mean(), ref.mean())  # ~ 83 of 512
    assert abs(ours.std() - ref.std()) < 1.0


def test_exact_visible_count_blocks_and_clones_differ():
    fn = jax.jit(lambda r: ibm.inverse_block_mask(r, 32, GRID))
    visible, masked = (np.asarray(a) for a in fn(jax.random.key(2)))
    assert visible.shape == (32, 102) and masked.shape == (32, L)
    assert (masked.sum(-1) == L - 102).all()  # every clip: exactly 410 masked, 102 visible
    assert (np.diff(visible, axis=-1) > 0).all()  # sorted, unique
    assert not masked[np.arange(32)[:, None], visible].any()
    assert len({tuple(v) for v in visible}) == 32  # clones get different masks
    again = np.asarray(fn(jax.random.key(2))[0])
    np.testing.assert_array_equal(visible, again)  # a pure function of the key


def test_fix_up_keeps_or_extends_the_blocks():
    region_rng, _ = jax.random.split(jax.random.key(3))  # inverse_block_mask's own split
    marked, _ = jax.jit(lambda r: ibm.block_regions(r, 200, GRID, mask_prob=0.8, mask_prob_adjust=0.07, block=5))(
        region_rng
    )
    marked = np.asarray(marked).reshape(200, -1)
    visible, _ = jax.jit(lambda r: ibm.inverse_block_mask(r, 200, GRID))(jax.random.key(3))
    vis = np.zeros_like(marked)
    vis[np.arange(200)[:, None], np.asarray(visible)] = True
    many = marked.sum(-1) >= 102
    assert many.any() and (~many).any()
    assert (vis[many] <= marked[many]).all()  # too many marked: a subset of the blocks stays visible
    assert (marked[~many] <= vis[~many]).all()  # too few: all blocks visible, plus random patches


def _visible_neighbours(vis, grid):
    """Mean number of visible 4-neighbours of a visible patch."""
    g = vis.reshape(-1, *grid)
    p = np.pad(g, ((0, 0), (1, 1), (1, 1)))
    nb = p[:, :-2, 1:-1].astype(int) + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:]
    return (nb * g).sum() / g.sum()


def test_visible_patches_come_in_blocks():
    _, masked = jax.jit(lambda r: ibm.inverse_block_mask(r, 200, GRID))(jax.random.key(4))
    blocky = _visible_neighbours(~np.asarray(masked), GRID)
    rng = np.random.default_rng(0)
    random = np.zeros((200, L), bool)
    for row in random:
        row[rng.choice(L, 102, replace=False)] = True
    assert blocky > 2.5 > 1.0 > _visible_neighbours(random, GRID), blocky
