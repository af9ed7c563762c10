"""Fine-tuning pieces as pure functions: classifier head, pooling, layer-wise LR decay, mixup,
SpecAugment, labels and losses. `objectives/finetune.py` puts them together.

Following EAT's reference (cwx-worst-one/EAT `models/EAT_audio_classification.py`, `config/finetuning.yaml`):
* head: the pooled clip vector (CLS, mean of valid frames, or max + mean), LayerNorm `fc_norm` (eps 1e-6;
  `head_norm`), a linear layer (truncated normal 0.02, zero bias);
* layer-wise LR decay: block i of L gets lr x decay**(L - i); as in EAT's code the other encoder
  parameters (patch embedding, CLS token, input norm) and the head keep lr x 1 (BEiT would give the
  embeddings decay**(L + 1): `decay_embeddings=True`). Blocks are found by name (`block_<i>`, or the
  stacked `blocks` of a scanned stack), so the same rule serves the ViT and the Conformer;
* augmentation (in `data/augment.py`): batch mixup (timm `Mixup`, mode 'batch': one lambda ~ Beta(a, a)
  per batch, applied with probability p, partner = the batch reversed) and SpecAugment as torchaudio's
  Frequency/TimeMasking with `iid_masks=True` (one mask of each kind per clip, value 0);
* class-balanced sampling for multi-label data (AST's `gen_weight_file`: a clip's weight is the sum over
  its labels of 1000 / (label count + 0.01)), label smoothing for multi-class data;
* losses as EAT normalises them: multi-label BCE summed and divided by the number of positive labels,
  multi-class soft-target cross-entropy averaged over clips.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from audiossl_jax.models.layers import layer_norm, masked_max_plus_mean, masked_mean

PyTree = Any
POOLING = ("cls", "mean", "max_mean")


class ClassifierHead(nn.Module):
    """Pooled clip vector [B, D] -> (LayerNorm `fc_norm`) -> linear `head` -> logits [B, classes]."""

    num_classes: int
    norm: bool = True  # EAT's fc_norm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.norm:
            x = layer_norm("fc_norm", eps=1e-6, dtype=self.dtype)(x)
        return nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            name="head",
            kernel_init=nn.with_logical_partitioning(nn.initializers.truncated_normal(0.02), ("embed", "classes")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("classes",)),
        )(x)


def pool(out: dict, pooling: str) -> jax.Array:
    """The clip vector of an encoder's outputs {frames [B, T, D], valid [B, T], cls?}: the CLS token,
    the mean of the valid frames, or their max + mean (SLICER's clip embedding)."""
    if pooling == "cls":
        if "cls" not in out:
            raise ValueError("finetune.pooling='cls': this encoder has no CLS token; use 'mean' or 'max_mean'")
        return out["cls"]
    if pooling == "mean":
        return masked_mean(out["frames"], out["valid"])
    if pooling == "max_mean":
        return masked_max_plus_mean(out["frames"], out["valid"])
    raise ValueError(f"finetune.pooling={pooling!r} is not one of {POOLING}")


# ---------------------------------------------------------------- layer-wise LR decay

_BLOCK = re.compile(r"^block_(\d+)$")


def _keys(path) -> list:
    return [getattr(k, "key", getattr(k, "name", None)) for k in path]


def count_blocks(encoder_params: PyTree) -> int:
    """Number of blocks of an encoder params tree: `block_<i>` names, or the leading axis of `blocks`."""
    count = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(encoder_params):
        for k in _keys(path):
            m = _BLOCK.match(str(k))
            if m:
                count = max(count, int(m.group(1)) + 1)
            elif k == "blocks":
                count = max(count, int(leaf.shape[0]))
    return count


def layerwise_lr_scales(params: PyTree, num_layers: int, decay: float, *, decay_embeddings: bool = False) -> PyTree:
    """LR multiplier per leaf of a classifier params tree {"encoder": ..., "fc_norm", "head"}.

    Encoder block i (`block_i`, or row i of the stacked `blocks` under scan) -> decay**(num_layers - i);
    other encoder leaves -> 1, or decay**(num_layers + 1) with `decay_embeddings`; head, fc_norm -> 1.
    Scan leaves get an array broadcasting over their leading layer axis.
    """
    embed_scale = decay ** (num_layers + 1) if decay_embeddings else 1.0

    def scale(path, leaf):
        keys = _keys(path)
        if not keys or keys[0] != "encoder":
            return np.float32(1.0)
        for k in keys:
            m = _BLOCK.match(str(k))
            if m:
                return np.float32(decay ** (num_layers - int(m.group(1))))
            if k == "blocks":
                rows = decay ** (num_layers - np.arange(leaf.shape[0], dtype=np.float64))
                return rows.astype(np.float32).reshape((-1,) + (1,) * (leaf.ndim - 1))
        return np.float32(embed_scale)

    return jax.tree_util.tree_map_with_path(scale, params)


# ---------------------------------------------------------------- labels, sampling, losses


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """AST/EAT sampling weight per clip: sum over its labels of 1000 / (label count + 0.01)."""
    hot = np.asarray(labels) > 0
    label_weight = 1000.0 / (hot.sum(0) + 0.01)
    return hot.astype(np.float64) @ label_weight


def balanced_sample_indices(rng: np.random.Generator, weights: np.ndarray, num_samples: int) -> np.ndarray:
    """torch WeightedRandomSampler(weights, num_samples, replacement=True): one epoch's clip indices."""
    weights = np.asarray(weights, np.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(
            "class-balanced weights must be non-negative with a positive sum (does any clip have a label?)"
        )
    return rng.choice(len(weights), size=num_samples, replace=True, p=weights / weights.sum())


def smooth_labels(one_hot: jax.Array, smoothing: float) -> jax.Array:
    """torch cross_entropy(label_smoothing=s) targets: (1 - s) * y + s / classes."""
    return one_hot * (1.0 - smoothing) + smoothing / one_hot.shape[-1]


def classification_loss(logits: jax.Array, labels: jax.Array, *, multilabel: bool) -> jax.Array:
    """EAT's fine-tuning losses: multi-label BCE summed over clips and classes / number of positive
    labels; multi-class soft-target cross-entropy averaged over clips."""
    logits = logits.astype(jnp.float32)
    if multilabel:
        return optax.sigmoid_binary_cross_entropy(logits, labels).sum() / jnp.maximum(labels.sum(), 1.0)
    return -(labels * jax.nn.log_softmax(logits)).sum(-1).mean()
