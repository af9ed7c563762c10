"""The on-disk example format: one `tf.train.Example` per clip in TFRecord shards.

    features  bytes    float16 log-mel [frames, mel_bins], row-major, little-endian (raw bytes)
    frames    int64    number of frames
    labels    int64[]  class indices (possibly none)
    clip_id   bytes    UTF-8 clip id
    duration  float    duration of the source audio in seconds

This is also what `tfds.builder_from_directory` reads (see `tfds_metadata.py`: `features` is a
`tfds.features.Tensor(shape=(None, mel), dtype=float16, encoding='bytes')`).
TensorFlow is imported lazily so prep workers never load it.
"""
from __future__ import annotations

import numpy as np

FEATURE_DTYPE = np.float16


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def serialize(features: np.ndarray, labels, clip_id: str, duration: float) -> bytes:
    """One example as serialized tf.train.Example bytes."""
    import tensorflow as tf

    feats = np.ascontiguousarray(features, dtype="<f2")
    f = tf.train.Feature
    example = tf.train.Example(features=tf.train.Features(feature={
        "features": f(bytes_list=tf.train.BytesList(value=[feats.tobytes()])),
        "frames": f(int64_list=tf.train.Int64List(value=[feats.shape[0]])),
        "labels": f(int64_list=tf.train.Int64List(value=[int(i) for i in labels])),
        "clip_id": f(bytes_list=tf.train.BytesList(value=[clip_id.encode("utf-8")])),
        "duration": f(float_list=tf.train.FloatList(value=[float(duration)])),
    }))
    return example.SerializeToString()


def parse(serialized, mel_bins: int):
    """tf.function-friendly parse of one serialized example into tensors
    {features float16 [frames, mel], labels int64 [n], clip_id string, duration float32}."""
    import tensorflow as tf

    spec = {
        "features": tf.io.FixedLenFeature([], tf.string),
        "frames": tf.io.FixedLenFeature([], tf.int64),
        "labels": tf.io.VarLenFeature(tf.int64),
        "clip_id": tf.io.FixedLenFeature([], tf.string),
        "duration": tf.io.FixedLenFeature([], tf.float32),
    }
    ex = tf.io.parse_single_example(serialized, spec)
    feats = tf.reshape(tf.io.decode_raw(ex["features"], tf.float16), [-1, mel_bins])
    return {"features": feats, "labels": tf.sparse.to_dense(ex["labels"]),
            "clip_id": ex["clip_id"], "duration": ex["duration"]}


def read_examples(path: str, mel_bins: int) -> list[dict]:
    """All examples of one shard as numpy dicts (for tests and inspection, not for training)."""
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(path).map(lambda s: parse(s, mel_bins))
    return list(ds.as_numpy_iterator())
