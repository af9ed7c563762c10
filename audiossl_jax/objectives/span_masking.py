"""wav2vec 2.0 span masking (fairseq's `compute_mask_indices`, static lengths): fixed shapes, jit-able.

Per clip, with n = its number of valid frames:
  num_spans = max(min_masks, floor(mask_prob * n / span + u)), u ~ U[0, 1)
  starts: num_spans distinct indices drawn uniformly from [0, n - span)  (from [0, num_spans + 1) when
          n - span <= num_spans, as fairseq)
  mask: [start, start + span) for every start, clipped to [0, n); spans may overlap (no_overlap=False).
Indices count valid frames only: with a non-prefix validity mask, spans are contiguous among the
valid frames and padded frames are never masked.

Difference from fairseq: fairseq then drops random masked indices so that every clip of the batch has
as many masked frames as the least-masked one (`require_same_masks`), to gather them into a dense
[B, M] tensor. Here losses are weighted by the mask instead, so no frame is dropped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def max_spans(length: int, mask_prob: float, span: int, min_masks: int) -> int:
    """An upper bound on `num_spans` for clips of up to `length` valid frames."""
    return max(min_masks, int(mask_prob * length / span + 1.0))


def compute_span_mask(
    rng: jax.Array, valid: jax.Array, mask_prob: float = 0.65, span: int = 10, min_masks: int = 2
) -> jax.Array:
    """Boolean span mask [B, T] (True = masked) over the valid frames [B, T] (see module docstring)."""
    if span < 1:
        raise ValueError(f"span masking needs span >= 1, got {span}")
    valid = valid.astype(bool)
    batch, length = valid.shape
    count_rng, start_rng = jax.random.split(rng)
    n = jnp.sum(valid, axis=1).astype(jnp.int32)  # [B]
    u = jax.random.uniform(count_rng, (batch,))
    num_spans = jnp.floor(mask_prob * n.astype(jnp.float32) / span + u).astype(jnp.int32)
    num_spans = jnp.maximum(num_spans, min_masks)
    # Range of starts [0, high): fairseq shrinks the span to fit num_spans + 1 starts if needed.
    high = jnp.where(n - span <= num_spans, num_spans + 1, n - span)
    num_spans = jnp.minimum(num_spans, high)
    # num_spans distinct starts uniformly from [0, high): the lowest random scores among [0, high).
    positions = jnp.arange(length)
    scores = jax.random.uniform(start_rng, (batch, length))
    scores = jnp.where(positions[None, :] < high[:, None], scores, 2.0)
    rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    starts = (rank < num_spans[:, None]).astype(jnp.int32)
    # Position i (in valid-frame index) is masked if a start lies in (i - span, i].
    covered = jnp.cumsum(starts, axis=1)
    covered = covered - jnp.pad(covered, ((0, 0), (span, 0)))[:, :length]
    compact_mask = (covered > 0) & (positions[None, :] < n[:, None])
    # Map valid-frame index -> frame: frame t is the (cumsum(valid)[t] - 1)-th valid frame.
    valid_index = jnp.clip(jnp.cumsum(valid, axis=1) - 1, 0, length - 1)
    return valid & jnp.take_along_axis(compact_mask, valid_index, axis=1)
