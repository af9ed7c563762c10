"""Shards sized for the reader: prep's default shard count, and the training-start check that warns
when a run has more data-loading processes than shards (or shards that do not divide over them)."""

import os

import pytest

from audiossl_jax import config_loader
from audiossl_jax.data import prep, shard_check
from audiossl_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "clips,shards", [(0, 1), (1, 1), (1024, 1), (1025, 2), (3000, 4), (4096, 4), (100_000, 128), (2_000_000, 2048)]
)
def test_default_shard_count_is_a_power_of_two_of_at_most_1024_clips(clips, shards):
    assert prep.default_num_shards(clips) == shards


def test_warnings_name_the_folder_the_counts_and_the_fix():
    assert shard_check.warnings(16, 8, "gs://b/train") == []
    assert shard_check.warnings(2048, 128, "gs://b/train") == []
    (few,) = shard_check.warnings(4, 8, "gs://b/train")
    assert "4 shard(s) for 8 data-loading processes" in few and "keeps 1/8" in few and "--shards N" in few
    (uneven,) = shard_check.warnings(12, 8, "gs://b/train")
    assert "12 shards do not divide over 8" in uneven and "a multiple of 8" in uneven


class _Stop(Exception):
    pass


def test_pretrain_warns_before_locking_the_workdir(prepare_demo_splits, tmp_path, monkeypatch):
    """With 2 data-loading processes and a 1-shard training split, pretrain logs the warning as soon as
    the data is opened (the run is stopped right after, where it would lock the workdir)."""
    config = config_loader.load_config(os.path.join(REPO, "configs", "wav2vec2_conformer.py:tiny"))
    config.data.train_dir, config.data.eval_dir = prepare_demo_splits("librosa_mel", num_mel_bins=64)
    config.data.crop_frames = 64
    said = []
    monkeypatch.setattr(loop.jax, "process_count", lambda: 2)
    monkeypatch.setattr(loop.tqdm, "write", said.append)
    monkeypatch.setattr(loop, "_lock_workdir", lambda workdir: (_ for _ in ()).throw(_Stop()))
    with pytest.raises(_Stop):
        loop.pretrain(config, str(tmp_path / "run"))
    assert any("1 shard(s) for 2 data-loading processes" in line for line in said), said
