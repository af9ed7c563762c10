"""manifest.json of a prepared-data folder: reading (with clear errors) and atomic writing.

Paths go through `tf.io.gfile`, so a folder may be local or remote (gs://)."""

from __future__ import annotations

import json
import os

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_REQUIRED = ("format_version", "split", "frontend", "mel_bins", "class_names", "num_examples", "shards", "mean", "std")


def load_manifest(data_dir: str) -> dict:
    """The manifest of a folder written by `audiossl prep`; ValueError/FileNotFoundError name the path."""
    import tensorflow as tf

    path = os.path.join(data_dir, MANIFEST)
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        raise FileNotFoundError(f"no {MANIFEST} in {data_dir!r}: run `audiossl prep --out {data_dir}` first")
    try:
        with tf.io.gfile.GFile(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError, tf.errors.OpError) as e:
        raise ValueError(f"cannot read {path!r} (corrupt or truncated JSON): {e}") from e
    if not isinstance(manifest, dict):
        raise ValueError(f"{path!r} does not hold a JSON object")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise ValueError(f"{path!r} lacks the field(s) {missing}; re-run `audiossl prep`")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{path!r} has format_version {manifest['format_version']}, "
            f"this code reads {FORMAT_VERSION}; re-run `audiossl prep`"
        )
    manifest["num_classes"] = len(manifest["class_names"])
    return manifest


def write_json_atomic(path: str, obj) -> None:
    """Writes JSON to a temporary name, then renames it into place (never a half file).

    Locally the rename is rename(2), atomic; on gs:// it is a copy + delete, and readers see either
    the old object or the complete new one."""
    import tensorflow as tf

    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)
