"""wav2vec 2.0 span masking: invariants and the masked fraction of a numpy port of fairseq."""

import jax
import jax.numpy as jnp
import numpy as np

from audiossl_jax.objectives.span_masking import compute_span_mask

_jit_mask = jax.jit(compute_span_mask, static_argnums=(2, 3, 4))


def _fairseq_mask(rng, lengths, total, mask_prob, span, min_masks):
    """fairseq's compute_mask_indices (static lengths, overlap allowed, padding at the end), without
    require_same_masks."""
    mask = np.zeros((len(lengths), total), bool)
    for i, sz in enumerate(lengths):
        num_mask = max(min_masks, int(mask_prob * sz / float(span) + rng.random()))
        min_len = span
        if sz - min_len <= num_mask:
            min_len = sz - num_mask - 1
        starts = rng.choice(sz - min_len, num_mask, replace=False)
        idc = np.asarray([s + o for s in starts for o in range(span)])
        mask[i, np.unique(idc[idc < sz])] = True
    return mask


def _valid(lengths, total):
    return jnp.arange(total)[None, :] < jnp.asarray(lengths)[:, None]


def _runs(row):
    """Lengths of the runs of True in a 1-D boolean array."""
    padded = np.concatenate([[0], row.astype(int), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return edges[1::2] - edges[::2]


def test_only_valid_frames_masked_and_spans_at_least_span_long():
    lengths = [250, 180, 97, 40]
    valid = _valid(lengths, 250)
    for seed in range(5):
        mask = np.asarray(_jit_mask(jax.random.key(seed), valid, 0.65, 10, 2))
        assert not (mask & ~np.asarray(valid)).any()
        for b, n in enumerate(lengths):
            runs = _runs(mask[b, :n])
            assert len(runs) >= 1 and runs.min() >= 10  # spans fit inside [0, n) when n is large
            count = max(2, int(0.65 * n / 10 + 1.0))
            assert mask[b].sum() <= count * 10


def test_masked_fraction_matches_fairseq():
    lengths = np.tile([250, 120, 60], 300)
    total = 250
    ours = np.asarray(_jit_mask(jax.random.key(0), _valid(lengths, total), 0.65, 10, 2))
    ref = _fairseq_mask(np.random.default_rng(0), lengths, total, 0.65, 10, 2)
    for n in (250, 120, 60):
        rows = lengths == n
        np.testing.assert_allclose(ours[rows].sum(1).mean() / n, ref[rows].sum(1).mean() / n, atol=0.015)
    assert 0.40 < ours[lengths == 250].mean() < 0.55  # ~1 - exp(-0.65), overlaps included


def test_min_masks_and_short_clips():
    lengths = [5, 12, 1, 0]
    valid = _valid(lengths, 16)
    one_frame_masked = []
    for seed in range(10):
        mask = np.asarray(_jit_mask(jax.random.key(seed), valid, 0.65, 10, 2))
        assert not (mask & ~np.asarray(valid)).any() and mask[3].sum() == 0
        assert mask[0].sum() >= 4  # 2 distinct starts from {0, 1, 2}, spans clipped to 5 frames
        assert mask[1].sum() >= 10  # 2 distinct starts from {0, 1, 2}: a full span fits
        one_frame_masked.append(mask[2, 0])  # starts {0, 1, 2} as fairseq: frame 0 masked w.p. 2/3
    assert 0 < sum(one_frame_masked) < 10
    # min_masks alone decides when mask_prob is 0
    mask = np.asarray(_jit_mask(jax.random.key(0), _valid([200], 200), 0.0, 10, 2))
    assert 10 < mask.sum() <= 20


def test_deterministic_for_a_key_and_jittable():
    valid = _valid([100, 70], 100)
    a = compute_span_mask(jax.random.key(3), valid)
    b = _jit_mask(jax.random.key(3), valid, 0.65, 10, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, compute_span_mask(jax.random.key(4), valid))


def test_non_prefix_validity_masks_only_valid_frames():
    valid = jnp.asarray(np.arange(120)[None, :] % 3 != 0)  # every third frame padded
    mask = np.asarray(_jit_mask(jax.random.key(0), valid, 0.65, 10, 2))
    assert mask.any() and not (mask & ~np.asarray(valid)).any()
    # contiguous among the valid frames: runs in the compacted sequence are >= span
    compact = mask[0][np.asarray(valid[0])]
    assert _runs(compact).min() >= 10
