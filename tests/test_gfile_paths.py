"""Workdir and prepared-data files go through tf.io.gfile, so gs:// works like a local folder.

TensorFlow's in-memory `ram://` file system stands in for gs://: plain `open` / `os.makedirs` would
write a local folder named `ram:` in the current directory instead, which gfile does not see.
"""

from __future__ import annotations

import json
import os
import uuid

import ml_collections
import pytest
import tensorflow as tf

from audiossl_jax.data import manifest as manifest_lib
from audiossl_jax.train import loop, metrics_writer


@pytest.fixture
def ram_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written with plain open lands here, not in the repo
    path = f"ram://audiossl-test-{uuid.uuid4().hex}"
    yield path
    assert not os.path.exists(tmp_path / "ram:"), "a ram:// path was written to the local disk"
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def test_metrics_writer_writes_jsonl_and_events_through_gfile(ram_dir):
    workdir = f"{ram_dir}/run"
    writer = metrics_writer.MetricsWriter(workdir)
    writer.write(1, {"loss": 2.5})
    writer.write(2, {"loss": 1.5})
    writer.close()
    with tf.io.gfile.GFile(f"{workdir}/metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert rows == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 1.5}]
    events = tf.io.gfile.glob(f"{workdir}/tb/events.out.tfevents.*")
    assert len(events) == 1
    records = list(tf.data.TFRecordDataset(events[0]).as_numpy_iterator())
    assert len(records) >= 3  # file version + two scalars


def test_save_config_through_gfile(ram_dir):
    config = ml_collections.ConfigDict({"method": "eat", "train": {"steps": 3}})
    loop.save_config(config, f"{ram_dir}/run")
    with tf.io.gfile.GFile(f"{ram_dir}/run/{loop.CONFIG_FILE}") as f:
        assert json.load(f) == {"method": "eat", "train": {"steps": 3}}


def test_manifest_round_trip_through_gfile(ram_dir):
    tf.io.gfile.makedirs(ram_dir)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        manifest_lib.load_manifest(ram_dir)
    manifest = {
        "format_version": manifest_lib.FORMAT_VERSION,
        "split": "train",
        "frontend": {},
        "mel_bins": 8,
        "class_names": ["a", "b"],
        "num_examples": 1,
        "shards": [],
        "mean": [0.0],
        "std": [1.0],
    }
    path = f"{ram_dir}/{manifest_lib.MANIFEST}"
    manifest_lib.write_json_atomic(path, {"stale": True})
    manifest_lib.write_json_atomic(path, manifest)  # replaces the existing file
    assert tf.io.gfile.listdir(ram_dir) == [manifest_lib.MANIFEST]  # no temporary left
    assert manifest_lib.load_manifest(ram_dir) == dict(manifest, num_classes=2)


def test_local_manifest_write_is_a_rename_into_place(tmp_path):
    path = str(tmp_path / manifest_lib.MANIFEST)
    manifest_lib.write_json_atomic(path, {"a": 1})
    inode = os.stat(path).st_ino
    manifest_lib.write_json_atomic(path, {"a": 2})
    assert os.listdir(tmp_path) == [manifest_lib.MANIFEST]
    assert os.stat(path).st_ino != inode  # a new file renamed over the old one, not rewritten in place
    with open(path) as f:
        assert f.read() == '{\n "a": 2\n}\n'


def test_prepared_data_and_probe_config_read_through_gfile(ram_dir, prepared_demo):
    """Shards on a remote file system feed the iterators exactly as the local copy does, and the
    probe / finetune commands read a workdir's config.json through gfile."""
    import numpy as np

    from audiossl_jax.data import pipeline
    from audiossl_jax.train import run_files

    remote = f"{ram_dir}/eval"
    tf.io.gfile.makedirs(remote)
    shards = [s["file"] for s in manifest_lib.load_manifest(prepared_demo["eval"])["shards"]]
    for name in ["manifest.json", *shards]:  # (ram:// mixes up names that prefix others: no .done files)
        tf.io.gfile.copy(os.path.join(prepared_demo["eval"], name), f"{remote}/{name}")
    kwargs = dict(batch_size=4, crop_frames=32, with_clip_id=True)
    local = list(pipeline.eval_iterator(prepared_demo["eval"], **kwargs))
    far = list(pipeline.eval_iterator(remote, **kwargs))
    assert len(local) == len(far) == 3
    for a, b in zip(local, far):
        np.testing.assert_array_equal(a["features"], b["features"])
        assert list(a["clip_id"]) == list(b["clip_id"])
    loop.save_config(ml_collections.ConfigDict({"method": "eat", "seed": 3}), f"{ram_dir}/run")
    assert run_files.load_run_config(f"{ram_dir}/run").seed == 3
    with pytest.raises(FileNotFoundError, match="audiossl pretrain"):
        run_files.load_run_config(f"{ram_dir}/missing")
