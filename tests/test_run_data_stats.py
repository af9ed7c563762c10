"""A run keeps what evaluation needs of its pre-training corpus (`<workdir>/data_stats.json`), so
`audiossl probe` (and embed / HEAR / label efficiency / fine-tuning, which read the same record)
work after the corpus has moved, with the same numbers."""

import json
import os
import shutil

import numpy as np
import pytest
from helpers_pretrained import REPO

from audiossl_jax import cli, config_loader
from audiossl_jax.data import manifest as manifest_lib
from audiossl_jax.data import pipeline
from audiossl_jax.evaluate import encoder as encoder_lib
from audiossl_jax.evaluate import probe
from audiossl_jax.train import loop, run_files


def _scores(path):
    return [
        {k: r[k] for k in ("encoder", "mAP", "top1", "knn_mAP", "per_class_AP", "eval_clips") if k in r}
        for r in json.load(open(path))["results"]
    ]


def test_probe_works_and_agrees_after_the_corpus_is_deleted(prepare_demo_splits, tmp_path):
    train_dir, eval_dir = prepare_demo_splits("librosa_mel", num_mel_bins=64)
    corpus = str(tmp_path / "corpus")
    shutil.copytree(train_dir, corpus)
    config = config_loader.load_config(os.path.join(REPO, "configs", "wav2vec2_conformer.py") + ":tiny")
    config.data.train_dir, config.data.eval_dir = corpus, eval_dir
    config.data.crop_frames = 64
    config.train.update(steps=2, ckpt_every=2, log_every=1)
    workdir = str(tmp_path / "run")
    loop.pretrain(config, workdir)

    stats_file = os.path.join(workdir, run_files.DATA_STATS_FILE)
    saved = json.load(open(stats_file))
    manifest = manifest_lib.load_manifest(corpus)
    assert saved["mean"] == manifest["mean"] and saved["std"] == manifest["std"]
    assert saved["mel_bins"] == 64 and saved["frontend"] == manifest["frontend"]
    assert saved["frontend"]["name"] == "librosa_mel" and saved["train_dir"] == corpus
    assert saved["class_names"] == manifest["class_names"] and saved["num_classes"] == manifest["num_classes"]

    args = ["probe", "--workdir", workdir, "--train-dir", train_dir, "--eval-dir", eval_dir, "--epochs", "3"]
    assert cli.main(args + ["--out", str(tmp_path / "with_stats.json")]) == 0
    shutil.move(stats_file, str(tmp_path / "kept.json"))  # a run from before data_stats.json: the corpus
    assert cli.main(args + ["--out", str(tmp_path / "old_run.json")]) == 0
    shutil.move(str(tmp_path / "kept.json"), stats_file)
    shutil.rmtree(corpus)
    assert cli.main(args + ["--out", str(tmp_path / "moved.json")]) == 0
    before = _scores(tmp_path / "with_stats.json")
    assert before[0]["encoder"] == "pre-trained (step 2)" and before[0]["eval_clips"] == 10
    assert _scores(tmp_path / "moved.json") == before == _scores(tmp_path / "old_run.json")

    enc = encoder_lib.FrozenEncoder.load(workdir)  # embed, HEAR, label efficiency
    assert enc.frontend.name == "librosa_mel" and enc.mel_bins == 64
    np.testing.assert_allclose(enc._mean, np.asarray(manifest["mean"], np.float32))
    np.testing.assert_allclose(1.0 / enc._inv_std, np.asarray(manifest["std"], np.float32), rtol=1e-6)
    assert run_files.load_data_stats(workdir, enc.config)[1] == stats_file  # fine-tuning's data.stats_dir

    default = os.path.join(workdir, probe.RESULTS_FILE)
    assert not os.path.exists(default)  # --out wrote elsewhere only
    assert cli.main(args) == 0  # without --out: <workdir>/probe_results.json, as before
    assert _scores(default) == before

    os.remove(stats_file)  # an old run whose corpus is gone: the error names both places
    with pytest.raises(FileNotFoundError) as e:
        probe.run(workdir, compare_random=False, train_dir=train_dir, eval_dir=eval_dir)
    assert stats_file in str(e.value) and corpus in str(e.value)


def test_a_stats_file_normalises_like_its_folder(prepare_demo_splits, tmp_path):
    train_dir, eval_dir = prepare_demo_splits("librosa_mel", num_mel_bins=64)
    manifest = manifest_lib.load_manifest(train_dir)
    path = str(tmp_path / "data_stats.json")
    json.dump({k: manifest[k] for k in pipeline.STATS_KEYS}, open(path, "w"))
    kwargs = dict(batch_size=4, crop_frames=32, process_index=0, process_count=1)
    from_file = next(iter(pipeline.eval_iterator(eval_dir, stats_dir=path, **kwargs)))["features"]
    from_dir = next(iter(pipeline.eval_iterator(eval_dir, stats_dir=train_dir, **kwargs)))["features"]
    own = next(iter(pipeline.eval_iterator(eval_dir, **kwargs)))["features"]
    np.testing.assert_array_equal(from_file, from_dir)
    assert not np.allclose(from_file, own)  # the eval split's own statistics differ: the file was used
    json.dump({"mean": manifest["mean"]}, open(path, "w"))
    with pytest.raises(ValueError, match="lacks the field"):
        pipeline.load_stats(path)
