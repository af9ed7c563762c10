"""A subset of a prepared split, written as a prepared split of its own (the records copied as they
are, byte for byte), so that any command that reads a prepared folder can train or evaluate on it:
`audiossl label-efficiency --mode finetune` fine-tunes on these.

The subset's manifest is the source's with its own `num_examples`, `num_frames` and `shards`, and a
`subset_of` record: the source folder, its clip count and clip-id hash, and how the subset was drawn.
It keeps the source's `mean` / `std` (the statistics a run normalises with come from the run, not
from a labelled split).
"""

from __future__ import annotations

import os

import numpy as np

from audiossl_jax.data.manifest import MANIFEST, load_manifest, write_json_atomic
from audiossl_jax.data.records import shard_name

_DONE = "subset_done.json"


def read_labels(data_dir: str) -> tuple[list[str], np.ndarray]:
    """(clip ids, multi-hot labels [n, num_classes]) of a prepared split, in the manifest's order."""
    import tensorflow as tf

    manifest = load_manifest(data_dir)
    files = [os.path.join(data_dir, s["file"]) for s in manifest["shards"] if s["num_examples"] > 0]
    ids, labels = [], np.zeros((manifest["num_examples"], manifest["num_classes"]), np.float32)
    if not files:
        return ids, labels[:0]
    spec = {"clip_id": tf.io.FixedLenFeature([], tf.string), "labels": tf.io.VarLenFeature(tf.int64)}

    def parse(serialized):
        ex = tf.io.parse_example(serialized, spec)
        return ex["clip_id"], tf.sparse.to_dense(ex["labels"], default_value=-1)  # [b, most labels], -1 padded

    batches = tf.data.TFRecordDataset(files).batch(1024).map(parse)
    for batch_ids, batch_labels in batches.as_numpy_iterator():
        start = len(ids)
        ids.extend(i.decode("utf-8") for i in batch_ids)
        if len(ids) > len(labels):
            raise ValueError(f"{data_dir}: the shards hold more examples than the manifest's {len(labels)}")
        rows, slots = np.nonzero(batch_labels >= 0)
        labels[start + rows, batch_labels[rows, slots]] = 1.0
    if len(ids) != len(labels):
        raise ValueError(f"{data_dir}: the shards hold {len(ids)} examples, the manifest says {len(labels)}")
    return ids, labels


def write_subset(src_dir: str, indices, out_dir: str, *, how: dict | None = None, num_shards: int = 1) -> dict:
    """Writes the examples at `indices` (positions in the manifest's order, as `read_labels` returns
    them) of the prepared split `src_dir` to `out_dir` as a prepared split; returns its manifest.

    A complete subset (same source hash and indices) already in `out_dir` is kept as it is."""
    import tensorflow as tf

    from audiossl_jax.data import provenance

    src = load_manifest(src_dir)
    indices = np.asarray(sorted({int(i) for i in indices}), np.int64)
    if len(indices) == 0:
        raise ValueError(f"a subset of {src_dir} needs at least one example")
    if indices[0] < 0 or indices[-1] >= src["num_examples"]:
        raise ValueError(f"subset indices must be in [0, {src['num_examples']}) for {src_dir}")
    record = {
        "dir": src_dir,
        "clips": int(src["num_examples"]),
        "clip_ids_sha256": provenance.ids_sha256(provenance.clip_ids(src_dir)),
        "indices_sha256": provenance.ids_sha256(str(i) for i in indices),
        **(how or {}),
    }
    done = os.path.join(out_dir, _DONE)
    if tf.io.gfile.exists(done):
        import json

        with tf.io.gfile.GFile(done) as f:
            if json.load(f) == record:
                return load_manifest(out_dir)
    files = [os.path.join(src_dir, s["file"]) for s in src["shards"] if s["num_examples"] > 0]
    keep = set(indices.tolist())
    frames_spec = {"frames": tf.io.FixedLenFeature([], tf.int64)}
    num_shards = max(1, min(int(num_shards), len(indices)))
    tf.io.gfile.makedirs(out_dir)
    if tf.io.gfile.exists(done):
        tf.io.gfile.remove(done)
    names = [shard_name(src["split"], i, num_shards) for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(os.path.join(out_dir, n)) for n in names]
    counts, frames, kept = [0] * num_shards, 0, 0
    try:
        for position, serialized in enumerate(tf.data.TFRecordDataset(files).as_numpy_iterator()):
            if position not in keep:
                continue
            writers[kept % num_shards].write(serialized)
            counts[kept % num_shards] += 1
            frames += int(tf.io.parse_single_example(serialized, frames_spec)["frames"])
            kept += 1
    finally:
        for w in writers:
            w.close()
    if kept != len(indices):
        raise ValueError(f"{src_dir}: {len(indices)} subset indices, but only {kept} examples found in its shards")
    manifest = {k: v for k, v in src.items() if k != "num_classes"}
    manifest.update(
        num_examples=kept,
        num_inputs=kept,
        num_skipped=0,
        skipped=[],
        num_frames=frames,
        shards=[
            {"file": n, "num_examples": c, "num_bytes": int(tf.io.gfile.stat(os.path.join(out_dir, n)).length)}
            for n, c in zip(names, counts)
        ],
        subset_of=record,
    )
    write_json_atomic(os.path.join(out_dir, MANIFEST), manifest)
    write_json_atomic(done, record)
    return load_manifest(out_dir)
