"""`audiossl prep` on tf.io.gfile paths without Beam: a labelled audio folder on ram:// (standing in
for gs://) gives the shards a local copy of the folder gives, and the prepared folder loads."""

import os
import uuid

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from audiossl_jax.data import fileio, pipeline, prep
from audiossl_jax.features import frontends

FBANK = frontends.make_frontend("kaldi_fbank", num_mel_bins=24)


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """The same labelled folder locally and on ram:// (dogs/, cats/ and a non-audio file)."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    root = f"ram://prep-{uuid.uuid4().hex}"
    for rel in ("dogs/a.wav", "dogs/b.flac", "cats/c.wav", "cats/sub/d.wav", "notes.txt"):
        local = tmp_path / "in" / rel
        os.makedirs(local.parent, exist_ok=True)
        if rel.endswith(".txt"):
            local.write_text("not audio")
        else:
            sf.write(local, 0.1 * rng.standard_normal(8000).astype(np.float32), 16000)
        tf.io.gfile.makedirs(os.path.dirname(f"{root}/in/{rel}"))
        tf.io.gfile.copy(str(local), f"{root}/in/{rel}")
    yield str(tmp_path / "in"), root
    assert not os.path.exists(tmp_path / "ram:")
    tf.io.gfile.rmtree(root)


def test_folder_on_ram_matches_local(folders, tmp_path):
    local_in, root = folders
    kwargs = dict(frontend=FBANK, folder_labels="subdir", num_shards=2, workers=1, progress=False, log=lambda *_: None)
    local = prep.prepare(local_in, str(tmp_path / "out" / "train"), **kwargs)
    remote = prep.prepare(f"{root}/in", f"{root}/out/train", **kwargs)
    assert remote["class_names"] == local["class_names"] == ["cats", "dogs"] and remote["num_examples"] == 4
    for shard in local["shards"]:
        assert fileio.read_bytes(f"{root}/out/train/{shard['file']}") == fileio.read_bytes(
            str(tmp_path / "out" / "train" / shard["file"])
        )
    assert remote["mean"] == local["mean"] and remote["source"]["path"] == f"{root}/in"
    assert pipeline.mel_bins(f"{root}/out/train") == 24
    # A rerun finds every ram:// shard complete.
    said = []
    prep.prepare(f"{root}/in", f"{root}/out/train", **dict(kwargs, log=said.append))
    assert any("already complete; nothing new written" in line for line in said), said
