"""The reproducibility record of `audiossl probe`'s results JSON: checkpoint step, config, eval clip
count and hash of its clip ids, per-class AP."""

import json

from helpers_pretrained import tiny_wav2vec2_run

from audiossl_jax import cli
from audiossl_jax.data import pipeline, provenance


def test_probe_json_records_step_config_and_eval_set(prepare_demo_splits, tmp_path_factory, tmp_path):
    workdir = tiny_wav2vec2_run(prepare_demo_splits, tmp_path_factory)
    _, eval_dir = prepare_demo_splits("librosa_mel", num_mel_bins=64)
    out = str(tmp_path / "probe.json")
    assert cli.main(["probe", "--workdir", workdir, "--epochs", "3", "--out", out]) == 0
    saved = json.load(open(out))
    assert saved["checkpoint_step"] == 2 and saved["results"][0]["step"] == 2
    assert saved["config"]["method"] == "wav2vec2" and saved["config"]["probe"]["epochs"] == 3  # as run
    ids = provenance.clip_ids(eval_dir)
    assert len(ids) == 10 == saved["eval_set"]["clips"] == saved["results"][0]["eval_clips"]
    assert saved["eval_set"]["clip_ids_sha256"] == provenance.ids_sha256(ids)
    assert saved["eval_set"]["clip_ids_sha256"] != saved["train_set"]["clip_ids_sha256"]
    assert provenance.ids_sha256(reversed(ids)) == provenance.ids_sha256(ids)  # order-free: sorted
    assert provenance.ids_sha256(ids[:-1]) != provenance.ids_sha256(ids)
    assert sorted(saved["results"][0]["per_class_AP"]) == sorted(
        c for c in pipeline.class_names(eval_dir) if c not in saved["results"][0]["classes_excluded_no_positive"]
    )
