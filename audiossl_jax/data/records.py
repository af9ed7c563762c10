"""The on-disk example format: one `tf.train.Example` per clip in TFRecord shards.

    features  bytes    float16 log-mel [frames, mel_bins], row-major, little-endian (raw bytes)
    frames    int64    number of frames
    labels    int64[]  class indices (possibly none)
    clip_id   bytes    UTF-8 clip id
    duration  float    duration of the source audio in seconds

This is also what `tfds.builder_from_directory` reads (see `tfds_metadata.py`: `features` is a
`tfds.features.Tensor(shape=(None, mel), dtype=float16, encoding='bytes')`).
Serialization is plain numpy; TensorFlow is imported lazily, only for reading.
"""

from __future__ import annotations

import numpy as np

FEATURE_DTYPE = np.float16


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 values are encoded as their two's complement
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def serialize(features: np.ndarray, labels, clip_id: str, duration: float) -> bytes:
    """One example as serialized tf.train.Example bytes, encoded here with numpy only (prep
    workers never import TensorFlow). Map entries are written in sorted key order."""
    feats = np.ascontiguousarray(features, dtype="<f2")
    kinds = {  # key -> serialized Feature (oneof: 1 bytes_list, 2 float_list, 3 int64_list)
        "clip_id": _field(1, _field(1, clip_id.encode("utf-8"))),
        "duration": _field(2, _field(1, np.float32(duration).astype("<f4").tobytes())),
        "features": _field(1, _field(1, feats.tobytes())),
        "frames": _field(3, _field(1, _varint(feats.shape[0]))),
        "labels": _field(3, _field(1, b"".join(_varint(int(i)) for i in labels))),
    }
    entries = b"".join(_field(1, _field(1, key.encode()) + _field(2, value)) for key, value in sorted(kinds.items()))
    return _field(1, entries)  # Example.features


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
    return {
        "features": feats,
        "labels": tf.sparse.to_dense(ex["labels"]),
        "clip_id": ex["clip_id"],
        "duration": ex["duration"],
    }


def read_examples(path: str, mel_bins: int) -> list[dict]:
    """All examples of one shard as numpy dicts (for tests and inspection, not for training)."""
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(path).map(lambda s: parse(s, mel_bins))
    return list(ds.as_numpy_iterator())
