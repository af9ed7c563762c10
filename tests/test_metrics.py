import numpy as np
import pytest
from sklearn import metrics as skm

from audiossl_jax.evaluate import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_matches_sklearn_macro_average_precision(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random((200, 12)) < 0.2).astype(np.float32)
    scores = rng.normal(size=labels.shape) + labels * rng.random(12)
    scores[:20] = np.round(scores[:20], 1)  # ties
    got = metrics.multilabel_metrics(labels, scores)
    assert got["mAP"] == pytest.approx(skm.average_precision_score(labels, scores, average="macro"), abs=1e-12)
    assert got["mean_AUC"] == pytest.approx(skm.roc_auc_score(labels, scores, average="macro"), abs=1e-12)


def test_classes_without_positive_are_excluded_and_reported():
    rng = np.random.default_rng(0)
    labels = (rng.random((50, 4)) < 0.3).astype(np.float32)
    labels[:, 2] = 0
    scores = rng.random(labels.shape)
    got = metrics.multilabel_metrics(labels, scores, class_names=["a", "b", "c", "d"])
    assert got["classes_excluded_no_positive"] == ["c"]
    assert got["classes_evaluated"] == 3
    keep = [0, 1, 3]
    assert got["mAP"] == pytest.approx(skm.average_precision_score(labels[:, keep], scores[:, keep]), abs=1e-12)


def test_d_prime_of_chance_is_zero_and_perfect_ranking_gives_map_one():
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32)
    got = metrics.multilabel_metrics(labels, labels * 2.0)
    assert got["mAP"] == 1.0 and got["mean_AUC"] == 1.0
    assert metrics.d_prime(0.5) == pytest.approx(0.0)


def test_shape_mismatch_and_no_positive_raise():
    with pytest.raises(ValueError, match="must both be"):
        metrics.multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="no class has a positive"):
        metrics.multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 2)))
