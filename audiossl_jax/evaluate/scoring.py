"""Scores of frozen embeddings on one labelled task: linear probe and k-NN, mAP and top-1 (and
top-5, with more than 5 classes) accuracy.

Shared by `audiossl probe` and the evaluations inside pre-training, so both give the same numbers
for the same checkpoint and data.
"""

from __future__ import annotations

import numpy as np

from audiossl_jax.evaluate import linear_probe, metrics

TASK_TYPES = ("multilabel", "multiclass")


def infer_task_type(labels: np.ndarray) -> str:
    """ "multiclass" when every example has exactly one positive label, else "multilabel"."""
    return "multiclass" if labels.size and np.all((labels > 0.5).sum(1) == 1) else "multilabel"


def knn_scores(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, k: int, temperature: float = 0.07
) -> np.ndarray:
    """Class scores [test, classes]: the labels of the k nearest train embeddings (cosine similarity
    of embeddings standardised with the train statistics), weighted by exp(similarity / T) as in
    DINO's k-NN evaluation."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6

    def unit(x):
        z = (x - mean) / std
        return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)

    sim = unit(x_test).astype(np.float64) @ unit(x_train).astype(np.float64).T
    k = max(1, min(int(k), len(x_train)))
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(sim, top, axis=1) / temperature)
    votes = np.einsum("nk,nkc->nc", weights, y_train[top].astype(np.float64))
    return votes / weights.sum(1, keepdims=True)


def score_task(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    probe_config,
    seed: int,
    class_names=None,
    task_type: str | None = None,
    knn_k: int = 10,
) -> dict:
    """Linear probe (config.probe's epochs/lr/weight decay/batch) and k-NN on one task.

    Returns the probe's `mAP`, `mean_AUC`, `d_prime`, `per_class_AP` (plus `top1` and `confusion`, the
    counts [true class][predicted class], for multi-class tasks, and `top5` when they have more than 5
    classes) and `knn_mAP` (plus `knn_top1`, `knn_top5`)."""
    task_type = task_type or infer_task_type(y_train)
    if task_type not in TASK_TYPES:
        raise ValueError(f"task type {task_type!r} is not one of {TASK_TYPES}")
    multiclass = task_type == "multiclass"
    predict = linear_probe.train_linear_probe(
        x_train,
        y_train,
        epochs=probe_config.epochs,
        lr=probe_config.lr,
        weight_decay=probe_config.weight_decay,
        batch_size=probe_config.batch_size,
        seed=seed,
        multiclass=multiclass,
    )
    scores = predict(x_test)
    result = metrics.multilabel_metrics(y_test, scores, class_names=class_names)
    knn = knn_scores(x_train, y_train, x_test, knn_k)
    result["knn_mAP"] = metrics.multilabel_metrics(y_test, knn)["mAP"]
    if multiclass:
        result["top1"] = metrics.accuracy(y_test, scores)
        result["knn_top1"] = metrics.accuracy(y_test, knn)
        result["confusion"] = metrics.confusion_matrix(y_test, scores).tolist()  # the probe's; rows = truth
        if metrics.has_top_k(scores.shape[1]):
            result["top5"] = metrics.top_k_accuracy(y_test, scores, metrics.TOP_K)
            result["knn_top5"] = metrics.top_k_accuracy(y_test, knn, metrics.TOP_K)
    result.update(task_type=task_type, knn_k=int(knn_k))
    return result
