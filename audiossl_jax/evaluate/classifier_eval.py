"""Scores of a classifier objective (one with `logits`, e.g. fine-tuning) on labelled test splits.

The train loop uses it in place of the linear probe for such objectives: every `config.eval.every`
steps and at the last step, each task's test split is read once (padded batches, `_mask` rows
dropped), the logits computed with the current params, and scored: mAP, mean ROC AUC and d' for
multi-label tasks, top-1 accuracy (and top-5 with more than 5 classes) for multi-class ones
(`config.finetune.multilabel`). Scalars are `<task>/mAP`, `<task>/mean_AUC`, `<task>/d_prime` or
`<task>/top1` (+ `<task>/top5`). The full result of a task also holds `per_class_AP` (the AP of
each class's logit, for both kinds) and the clip count.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from audiossl_jax.data import pipeline
from audiossl_jax.evaluate import metrics
from audiossl_jax.parallel import sharding as sharding_lib

MULTILABEL_SCALARS = ("mAP", "mean_AUC", "d_prime")
SCALARS = MULTILABEL_SCALARS + ("top1", "top5")


class ClassifierEvaluator:
    """Same interface as `evaluator.ProbeEvaluator`: `evaluate(params, aux)` -> (scalars, results)."""

    def __init__(self, objective, config, tasks, mesh):
        self.tasks, self._objective, self._config, self._mesh = tasks, objective, config, mesh
        self._batch_sharding = sharding_lib.batch_sharding(mesh, config.rules)
        self._predict = jax.jit(sharding_lib.with_activation_rules(objective.logits, mesh, config.rules))

    def evaluate(self, params, aux, *, logmel_stats: bool = False) -> tuple[dict[str, float], dict[str, dict]]:
        if logmel_stats:
            raise ValueError("a classifier has no log-mel statistics baseline (config.eval.random_init_baseline)")
        t0 = time.time()
        scalars, results = {}, {}
        for task in self.tasks:
            result = self.score(task.test_dir, params, aux)
            results[task.name] = result
            scalars.update({f"{task.name}/{k}": float(v) for k, v in result.items() if k in SCALARS})
        scalars["seconds"] = time.time() - t0
        return scalars, results

    def score(self, test_dir: str, params, aux) -> dict:
        """mAP / mean AUC / d' (multi-label) or top-1 (+ top-5) accuracy (multi-class) on every clip of
        `test_dir`."""
        config = self._config
        data = pipeline.eval_iterator(
            test_dir,
            batch_size=config.data.batch_size,
            crop_frames=config.data.crop_frames,
            stats_dir=config.data.get("stats_dir") or config.data.train_dir,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            **pipeline.normalization_kwargs(config.data),
        )
        scores, labels = [], []
        with jax.set_mesh(self._mesh):
            for local in data:
                batch = sharding_lib.global_batch(local, self._batch_sharding)
                logits = self._predict(params, aux, batch["features"], batch["valid"])
                keep = multihost_utils.process_allgather(batch["_mask"], tiled=True).astype(bool)
                scores.append(multihost_utils.process_allgather(logits, tiled=True)[keep])
                labels.append(multihost_utils.process_allgather(batch["labels"], tiled=True)[keep])
        scores, labels = np.concatenate(scores).astype(np.float32), np.concatenate(labels)
        ranked = metrics.multilabel_metrics(labels, scores, class_names=pipeline.class_names(test_dir))
        per_class = {"per_class_AP": ranked["per_class_AP"], "clips": int(len(labels))}
        if self._objective.multilabel:
            return {k: ranked[k] for k in MULTILABEL_SCALARS + ("classes_evaluated",)} | per_class
        result = {"top1": metrics.accuracy(labels, scores)}
        if metrics.has_top_k(scores.shape[1]):
            result["top5"] = metrics.top_k_accuracy(labels, scores, metrics.TOP_K)
        return result | per_class
