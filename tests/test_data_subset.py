"""data/subset.py: a subset of a prepared split, written as a prepared split (label efficiency's
fine-tuning trains on these)."""

import json
import os

import numpy as np
import pytest

from audiossl_jax.data import pipeline, provenance, records, subset
from audiossl_jax.data.manifest import load_manifest


def _examples(data_dir):
    manifest = load_manifest(data_dir)
    out = []
    for s in manifest["shards"]:
        out += records.read_examples(os.path.join(data_dir, s["file"]), manifest["mel_bins"])
    return out


def test_subset_holds_exactly_the_chosen_records_and_a_valid_manifest(prepare_demo_splits, tmp_path):
    train_dir, _ = prepare_demo_splits("librosa_mel", num_mel_bins=64)
    ids, labels = subset.read_labels(train_dir)
    assert ids == provenance.clip_ids(train_dir)  # the manifest's order, as the probe embeds them
    source = _examples(train_dir)
    for ex, row in zip(source, labels):
        np.testing.assert_array_equal(np.flatnonzero(row), np.sort(ex["labels"]))
    chosen = [7, 0, 3, 3, 11]
    out = str(tmp_path / "sub")
    manifest = subset.write_subset(train_dir, chosen, out, how={"fraction": 0.4, "seed": 1}, num_shards=2)
    kept = _examples(out)
    assert sorted(e["clip_id"] for e in kept) == sorted(source[i]["clip_id"] for i in (0, 3, 7, 11))
    by_id = {e["clip_id"]: e for e in source}
    for e in kept:
        np.testing.assert_array_equal(e["features"], by_id[e["clip_id"]]["features"])
        np.testing.assert_array_equal(e["labels"], by_id[e["clip_id"]]["labels"])
    assert manifest["num_examples"] == 4 and [s["num_examples"] for s in manifest["shards"]] == [2, 2]
    assert manifest["num_frames"] == sum(int(e["features"].shape[0]) for e in kept)
    assert manifest["class_names"] == load_manifest(train_dir)["class_names"]
    assert manifest["mean"] == load_manifest(train_dir)["mean"]  # the source's statistics
    record = manifest["subset_of"]
    assert record["dir"] == train_dir and record["clips"] == len(ids) and record["fraction"] == 0.4
    assert record["clip_ids_sha256"] == provenance.ids_sha256(ids)
    # readable by the training pipeline
    batch = next(pipeline.train_iterator(out, batch_size=2, crop_frames=16, seed=0))
    assert batch["features"].shape == (2, 16, 64)

    # the same request again keeps the files; a different one rewrites them
    stamp = os.path.getmtime(os.path.join(out, "manifest.json"))
    subset.write_subset(train_dir, [0, 3, 7, 11], out, how={"fraction": 0.4, "seed": 1}, num_shards=2)
    assert os.path.getmtime(os.path.join(out, "manifest.json")) == stamp
    assert subset.write_subset(train_dir, [1], out)["num_examples"] == 1
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f)["num_examples"] == 1


def test_subset_rejects_bad_indices(prepare_demo_splits, tmp_path):
    train_dir, _ = prepare_demo_splits("librosa_mel", num_mel_bins=64)
    n = load_manifest(train_dir)["num_examples"]
    with pytest.raises(ValueError, match=r"must be in \[0, "):
        subset.write_subset(train_dir, [0, n], str(tmp_path / "a"))
    with pytest.raises(ValueError, match="at least one example"):
        subset.write_subset(train_dir, [], str(tmp_path / "b"))
