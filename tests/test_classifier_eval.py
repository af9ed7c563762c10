"""The classifier evaluation of fine-tuning: top-1 and top-5 accuracy of its logits, against
scikit-learn on the same logits."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from helpers_pretrained import REPO
from sklearn import metrics as skm

from audiossl_jax import config_loader
from audiossl_jax.data import pipeline
from audiossl_jax.evaluate import classifier_eval
from audiossl_jax.parallel import mesh as mesh_lib


class _LinearClassifier:
    """Logits = (sum of the valid frames) @ w: a fixed classifier with the objective's interface."""

    multilabel = False

    @staticmethod
    def logits(params, aux, features, valid):
        return (features * valid[..., None]).sum(1) @ params["w"]


def test_classifier_top1_top5_match_sklearn(prepare_demo_splits):
    train_dir, eval_dir = prepare_demo_splits("librosa_mel", num_mel_bins=64)
    config = config_loader.load_config(os.path.join(REPO, "configs", "wav2vec2_conformer.py") + ":tiny")
    config.data.train_dir, config.data.crop_frames, config.data.batch_size = train_dir, 32, 4
    classes = pipeline.num_classes(eval_dir)
    assert classes > 5
    w = np.random.default_rng(0).normal(size=(64, classes)).astype(np.float32)
    mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
    got = classifier_eval.ClassifierEvaluator(_LinearClassifier(), config, [], mesh).score(
        eval_dir, {"w": jnp.asarray(w)}, {}
    )

    logits, truth = [], []
    for batch in pipeline.eval_iterator(
        eval_dir, batch_size=4, crop_frames=32, stats_dir=train_dir, process_index=0, process_count=1
    ):
        keep = batch["_mask"].astype(bool)
        logits.append(((batch["features"] * batch["valid"][..., None]).sum(1) @ w)[keep])
        truth.append(batch["labels"][keep].argmax(1))
    logits, truth = np.concatenate(logits), np.concatenate(truth)
    assert len(truth) == 10
    for k, key in ((1, "top1"), (5, "top5")):
        want = skm.top_k_accuracy_score(truth, logits, k=k, labels=np.arange(classes))
        assert got[key] == pytest.approx(want, abs=1e-12), key
    assert got["top5"] >= got["top1"]
