"""A tiny pre-trained wav2vec 2.0 workdir shared by the evaluation-suite tests (embed, HEAR, label
efficiency): made once per test session on the demo splits of conftest's `prepare_demo_splits`."""

from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RUNS: dict = {}


def tiny_wav2vec2_run(prepare_demo_splits, tmp_path_factory) -> str:
    """The workdir of a 2-step `configs/wav2vec2_conformer.py:tiny` run (64-bin log-mel, 64-frame crops)."""
    if "wav2vec2" not in _RUNS:
        from audiossl_jax import config_loader
        from audiossl_jax.train import loop

        config = config_loader.load_config(os.path.join(REPO, "configs", "wav2vec2_conformer.py") + ":tiny")
        config.data.train_dir, config.data.eval_dir = prepare_demo_splits("librosa_mel", num_mel_bins=64)
        config.data.crop_frames = 64
        # the train config of test_pretrain_e2e's probe test: its compiled step comes from the cache
        config.train.update(steps=2, ckpt_every=2, log_every=1)
        config.probe.epochs = 20
        workdir = str(tmp_path_factory.mktemp("eval_suite_run") / "run")
        loop.pretrain(config, workdir)
        _RUNS["wav2vec2"] = workdir
    return _RUNS["wav2vec2"]
