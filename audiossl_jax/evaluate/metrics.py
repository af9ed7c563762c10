"""Multi-label metrics, AudioSet convention: per-class scores averaged over classes with positives;
top-1 / top-k accuracy for single-label (multi-class) tasks."""

from __future__ import annotations

import math

import numpy as np


def _class_columns(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must both be [examples, classes]")
    return labels > 0.5, scores


def average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """AP of one class, as sklearn: sum over distinct thresholds of (R_n - R_{n-1}) * P_n."""
    order = np.argsort(-score, kind="mergesort")
    score, positive = score[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    tp = np.cumsum(positive)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the rank statistic (ties count one half)."""
    n_pos, n_neg = positive.sum(), (~positive).sum()
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(score.size)
    sorted_scores = score[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average_rank, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def d_prime(auc: float) -> float:
    """AudioSet's d' = sqrt(2) * Phi^-1(AUC)."""
    from scipy.stats import norm

    return float(math.sqrt(2.0) * norm.ppf(auc))


def multilabel_metrics(labels: np.ndarray, scores: np.ndarray, class_names=None) -> dict:
    """mAP, mean AUC, d' over classes that have at least one positive (and one negative for AUC).

    Classes without a positive in `labels` have no defined AP: they are excluded and listed.
    """
    positive, scores = _class_columns(labels, scores)
    names = list(class_names) if class_names is not None else [str(i) for i in range(positive.shape[1])]
    ap, auc, excluded = {}, {}, []
    for c, name in enumerate(names):
        n_pos = int(positive[:, c].sum())
        if n_pos == 0:
            excluded.append(name)
            continue
        ap[name] = average_precision(positive[:, c], scores[:, c])
        if n_pos < positive.shape[0]:
            auc[name] = roc_auc(positive[:, c], scores[:, c])
    if not ap:
        raise ValueError("no class has a positive example: mAP is undefined")
    mean_auc = float(np.mean(list(auc.values()))) if auc else float("nan")
    return {
        "mAP": float(np.mean(list(ap.values()))),
        "mean_AUC": mean_auc,
        "d_prime": d_prime(mean_auc) if auc else float("nan"),
        "per_class_AP": ap,
        "classes_evaluated": len(ap),
        "classes_excluded_no_positive": excluded,
    }


def accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    """Top-1 accuracy for single-label data (labels one-hot or multi-hot with one positive)."""
    return float(np.mean(np.argmax(scores, axis=1) == np.argmax(labels, axis=1)))


def confusion_matrix(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Counts [classes, classes] for single-label data: row = true class (argmax of `labels`), column
    = predicted class (argmax of `scores`), as `sklearn.metrics.confusion_matrix` with every class."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must both be [examples, classes]")
    classes = labels.shape[1]
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (np.argmax(labels, axis=1), np.argmax(scores, axis=1)), 1)
    return counts


TOP_K = 5  # top-5 accuracy is reported for multi-class tasks with more than TOP_K classes


def top_k_accuracy(labels: np.ndarray, scores: np.ndarray, k: int = TOP_K) -> float:
    """Fraction of examples whose true class (argmax of `labels`) is among the `k` highest scores; as
    `sklearn.metrics.top_k_accuracy_score`, ties included (among equal scores the higher class index
    ranks first, e.g. the zero votes of a k-NN)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    if not 0 < k <= scores.shape[1]:
        raise ValueError(f"top-{k} accuracy needs 1 <= k <= classes ({scores.shape[1]})")
    top = np.argsort(scores, axis=1, kind="stable")[:, ::-1][:, :k]
    return float(np.mean((top == np.argmax(labels, axis=1)[:, None]).any(axis=1)))


def has_top_k(num_classes: int, k: int = TOP_K) -> bool:
    """Top-k accuracy means something (is not always 1) only with more than k classes."""
    return num_classes > k
