"""Clip embeddings of every example of a prepared split, with a frozen encoder."""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from audiossl_jax.data import pipeline
from audiossl_jax.parallel import sharding as sharding_lib


def make_embed_fn(objective, mesh, rules):
    """jitted (params, aux, features, valid) -> clip embeddings, traced under the activation rules.
    Build it once and pass it to `extract` to embed several splits (or steps) with one compilation."""
    return jax.jit(
        sharding_lib.with_activation_rules(
            lambda p, a, features, valid: objective.embed(p, a, features, valid)["clip"], mesh, rules
        )
    )


def extract(
    objective,
    params,
    aux,
    data_dir: str,
    *,
    stats_dir: str,
    crop_frames: int,
    batch_size: int,
    mesh,
    rules,
    desc: str = "embed",
    normalization: dict | None = None,
    embed_fn=None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (clip embeddings [N, dim], labels [N, classes]) for each example of `data_dir` once;
    `normalization`: the iterator's normalisation kwargs (`pipeline.normalization_kwargs`)."""
    batch_sharding = sharding_lib.batch_sharding(mesh, rules)
    data = pipeline.eval_iterator(
        data_dir,
        batch_size=batch_size,
        crop_frames=crop_frames,
        stats_dir=stats_dir,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        **(normalization or {}),
    )
    embed_fn = embed_fn or make_embed_fn(objective, mesh, rules)

    embeddings, labels = [], []
    for local in tqdm(data, desc=desc, disable=not progress or jax.process_index() != 0, leave=False):
        batch = sharding_lib.global_batch(local, batch_sharding)
        clip = embed_fn(params, aux, batch["features"], batch["valid"])
        keep = multihost_utils.process_allgather(batch["_mask"], tiled=True).astype(bool)
        embeddings.append(multihost_utils.process_allgather(clip, tiled=True)[keep])
        labels.append(multihost_utils.process_allgather(batch["labels"], tiled=True)[keep])
    if not embeddings:
        raise ValueError(f"{data_dir}: no examples to embed")
    return np.concatenate(embeddings).astype(np.float32), np.concatenate(labels).astype(np.float32)
