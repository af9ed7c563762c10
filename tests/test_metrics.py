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


@pytest.mark.parametrize("k", [1, 3, 5])
def test_top_k_accuracy_matches_sklearn(k):
    rng = np.random.default_rng(k)
    classes = 12
    truth = rng.integers(0, classes, 300)
    labels = np.eye(classes, dtype=np.float32)[truth]
    scores = rng.normal(size=labels.shape) + 1.5 * labels
    scores[:100] = np.round(scores[:100])  # ties, broken as sklearn breaks them
    want = skm.top_k_accuracy_score(truth, scores, k=k, labels=np.arange(classes))
    assert metrics.top_k_accuracy(labels, scores, k) == pytest.approx(want, abs=1e-12)
    assert 0.3 < want < 1.0  # neither trivial nor chance: a wrong rank would show
    if k == 1:  # without ties, top-1 is `accuracy`
        assert metrics.top_k_accuracy(labels[100:], scores[100:], 1) == metrics.accuracy(labels[100:], scores[100:])
    with pytest.raises(ValueError, match="top-13"):
        metrics.top_k_accuracy(labels, scores, classes + 1)


def test_confusion_matrix_matches_sklearn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, 200)
    truth[truth == 4] = 5  # a class without examples keeps its row and column
    labels = np.eye(6, dtype=np.float32)[truth]
    scores = rng.normal(size=labels.shape) + labels
    got = metrics.confusion_matrix(labels, scores)
    np.testing.assert_array_equal(got, skm.confusion_matrix(truth, scores.argmax(1), labels=range(6)))
    assert got.sum() == 200 and got[4].sum() == 0
    assert np.trace(got) / 200 == pytest.approx(metrics.accuracy(labels, scores))
    with pytest.raises(ValueError, match="must both be"):
        metrics.confusion_matrix(labels, scores[:, :5])


def _multiclass_task(classes, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, 120)
    x = rng.normal(size=(120, 16)).astype(np.float32) + 0.8 * np.eye(classes, 16, dtype=np.float32)[truth]
    y = np.eye(classes, dtype=np.float32)[truth]
    return x[:80], y[:80], x[80:], y[80:]


def test_probe_scores_report_top5_against_sklearn_only_with_more_than_five_classes(monkeypatch):
    import ml_collections

    from audiossl_jax.evaluate import linear_probe, scoring

    weights = np.random.default_rng(1).normal(size=(16, 8))
    monkeypatch.setattr(linear_probe, "train_linear_probe", lambda x, y, **kw: lambda z: z @ weights[:, : y.shape[1]])
    probe_config = ml_collections.ConfigDict(dict(epochs=1, lr=0.1, weight_decay=0.0, batch_size=16))
    x_train, y_train, x_test, y_test = _multiclass_task(8)
    got = scoring.score_task(x_train, y_train, x_test, y_test, probe_config=probe_config, seed=0, knn_k=5)
    truth = y_test.argmax(1)
    assert got["top5"] == pytest.approx(skm.top_k_accuracy_score(truth, x_test @ weights, k=5, labels=range(8)))
    knn = scoring.knn_scores(x_train, y_train, x_test, 5)
    assert got["knn_top5"] == pytest.approx(skm.top_k_accuracy_score(truth, knn, k=5, labels=range(8)))
    assert got["top1"] == pytest.approx(skm.top_k_accuracy_score(truth, x_test @ weights, k=1, labels=range(8)))
    want = skm.confusion_matrix(truth, (x_test @ weights).argmax(1), labels=range(8))
    np.testing.assert_array_equal(np.array(got["confusion"]), want)
    assert 0 < np.trace(want) < len(truth)  # some right, some wrong: a transposed matrix would show
    few = scoring.score_task(*_multiclass_task(5), probe_config=probe_config, seed=0, knn_k=5)
    assert "top1" in few and "top5" not in few and "knn_top5" not in few  # 5 classes: top-5 is always 1
