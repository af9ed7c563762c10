"""TFDS metadata for a prepared-data folder, so `tfds.builder_from_directory(out)` loads it.

`write` adds dataset_info.json and features.json next to the shards (no data is rewritten); the
builder then yields {features float16 [frames, mel], frames, labels int64 [n], clip_id, duration}
for the split named in the manifest (e.g. `builder.as_dataset(split="train")`).
"""

from __future__ import annotations

import os

import numpy as np

FILENAME_TEMPLATE = "{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}"


def features_spec(mel_bins: int):
    """The tfds FeaturesDict matching `records.serialize`."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {
            "features": tfds.features.Tensor(
                shape=(None, mel_bins), dtype=np.float16, encoding=tfds.features.Encoding.BYTES
            ),
            "frames": tfds.features.Scalar(dtype=np.int64),
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            "clip_id": tfds.features.Text(),
            "duration": tfds.features.Scalar(dtype=np.float32),
        }
    )


def write(out: str, manifest: dict) -> None:
    """Writes the metadata for the split described by `manifest` into `out`: directly for a local
    folder, else written locally and copied through tf.io.gfile (TFDS's paths know gs:// but not
    every gfile scheme, e.g. ram://)."""
    from audiossl_jax.data import fileio

    if not fileio.is_remote(out):
        return _write(out, manifest)
    import tempfile

    import tensorflow as tf

    shards = {s["file"] for s in manifest["shards"]}
    with tempfile.TemporaryDirectory() as local:
        for name in shards:  # empty stand-ins: TFDS infers the file type from the shards' names
            open(os.path.join(local, name), "wb").close()
        _write(local, manifest)
        for name in sorted(set(os.listdir(local)) - shards):
            tf.io.gfile.copy(os.path.join(local, name), fileio.join(out, name), overwrite=True)


def _write(out: str, manifest: dict) -> None:
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import naming

    split = manifest["split"]
    template = naming.ShardedFileTemplate(data_dir=out, template=FILENAME_TEMPLATE, filetype_suffix="tfrecord")
    split_info = tfds.core.SplitInfo(
        name=split,
        shard_lengths=[s["num_examples"] for s in manifest["shards"]],
        num_bytes=sum(s["num_bytes"] for s in manifest["shards"]),
        filename_template=template.replace(split=split),
    )
    classes = ", ".join(manifest["class_names"][:20]) + (", ..." if manifest["num_classes"] > 20 else "")
    tfds.folder_dataset.write_metadata(
        data_dir=out,
        features=features_spec(manifest["mel_bins"]),
        split_infos=[split_info],
        filename_template=template,
        check_data=False,
        description=(
            f"log-mel ({manifest['frontend']['name']}, {manifest['mel_bins']} bins) written by "
            f"`audiossl prep`; labels index the classes: {classes}"
        ),
    )
