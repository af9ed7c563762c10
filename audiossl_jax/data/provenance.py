"""What a result JSON records so that it can be reproduced and compared: the checkpoint step, the
resolved config, and for every prepared split it used, its clip count and a hash of its clip ids.

The hash is the sha256 of the split's clip ids (as `audiossl prep` wrote them into the records),
sorted, UTF-8, each followed by a newline: the same set of clips gives the same hash whatever its
shard layout or order, and any added, removed or renamed clip changes it. Recompute it with
`split_record(data_dir)`; outside this package:
`hashlib.sha256("".join(i + "\\n" for i in sorted(ids)).encode()).hexdigest()`.
"""

from __future__ import annotations

import hashlib
import os

from audiossl_jax.data.manifest import load_manifest

HASH_OF = "sha256 of the sorted clip ids, UTF-8, each followed by a newline"


def clip_ids(data_dir: str) -> list[str]:
    """The clip id of every example of a prepared split, in the manifest's order (only that field
    of each record is parsed)."""
    import tensorflow as tf

    manifest = load_manifest(data_dir)
    files = [os.path.join(data_dir, s["file"]) for s in manifest["shards"] if s["num_examples"] > 0]
    if not files:
        return []
    spec = {"clip_id": tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset(files).batch(1024).map(lambda r: tf.io.parse_example(r, spec)["clip_id"])
    return [i.decode("utf-8") for batch in ds.as_numpy_iterator() for i in batch]


def ids_sha256(ids) -> str:
    return hashlib.sha256("".join(f"{i}\n" for i in sorted(ids)).encode("utf-8")).hexdigest()


def split_record(data_dir: str) -> dict:
    """{"dir", "clips", "clip_ids_sha256", "hash_of"} of a prepared split."""
    ids = clip_ids(data_dir)
    return {"dir": data_dir, "clips": len(ids), "clip_ids_sha256": ids_sha256(ids), "hash_of": HASH_OF}


def config_dict(config) -> dict:
    """The resolved config as plain JSON-serialisable values."""
    import json

    plain = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(plain, default=str))
