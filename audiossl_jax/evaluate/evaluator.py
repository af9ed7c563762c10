"""Evaluation inside pre-training: frozen-encoder probes on labelled tasks every `config.eval.every` steps.

A suite is a JSON file (`config.eval.suite`) listing prepared labelled tasks:

    {"tasks": [{"name": "drums", "train_dir": ".../drums/train", "test_dir": ".../drums/test",
                "type": "multiclass"}, ...]}

Relative directories are taken relative to the suite file when they exist there. With no suite,
one task "eval" is made of `config.data.train_dir` (fit) and `config.data.eval_dir` (score), which is
what the demo's labelled splits are. Each evaluation embeds both splits of every task with the
current params (one compiled embedding, batches sharded like the train step), fits the linear probe
and a k-NN exactly as `audiossl probe` does (`evaluate/scoring.py`), and returns flat scalars
`<task>/mAP`, `<task>/knn_mAP` (+ `<task>/top1`, `<task>/knn_top1` for multi-class tasks, and
`<task>/top5`, `<task>/knn_top5` when they have more than 5 classes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax

from audiossl_jax.data import pipeline
from audiossl_jax.evaluate import embed, scoring
from audiossl_jax.train import config_checks

SCALARS = ("mAP", "top1", "top5", "knn_mAP", "knn_top1", "knn_top5")


def logmel_stats_embedding(features, valid):
    """The model-free baseline: [B, 2 * mel] = per-bin mean and standard deviation of the clip's
    valid frames. A pre-trained encoder must beat it, or its gain may only be a weak random init."""
    import jax.numpy as jnp

    w = valid.astype(jnp.float32)[..., None]
    count = jnp.maximum(w.sum(1), 1.0)
    mean = (features * w).sum(1) / count
    var = (jnp.square(features - mean[:, None]) * w).sum(1) / count
    return jnp.concatenate([mean, jnp.sqrt(var)], axis=-1)


def logmel_stats_fn(params, aux, features, valid):
    """`logmel_stats_embedding` with an embed function's signature (params and aux unused), jitted."""
    return _LOGMEL_STATS_JIT(features, valid)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    train_dir: str  # prepared labelled split the probe is fitted on
    test_dir: str  # prepared labelled split it is scored on
    type: str | None = None  # "multilabel" | "multiclass" | None: inferred from the train labels


_LOGMEL_STATS_JIT = jax.jit(logmel_stats_embedding)


def probe_window(config) -> int:
    """Frames embedded per clip: `config.probe.crop_frames`, else the pre-training crop."""
    frames = config.probe.get("crop_frames")
    frames = config.data.crop_frames if frames is None else frames
    if int(frames) <= 0:
        raise ValueError(f"config.probe.crop_frames must be positive, got {frames}")
    return int(frames)


def _resolve(path: str, base: str) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    candidate = os.path.join(base, path)
    return candidate if os.path.exists(candidate) else path


def load_suite(path: str) -> list[Task]:
    """The tasks of a suite JSON file (module docstring); errors name the file and the field."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        hint = " (build the real-audio benchmark first: `make real-audio`)" if "real_audio" in path else ""
        raise FileNotFoundError(f"config.eval.suite: {path} not found{hint}")
    with tf.io.gfile.GFile(path) as f:
        try:
            suite = json.load(f)
        except ValueError as e:
            raise ValueError(f"config.eval.suite: {path} is not valid JSON ({e})") from e
    entries = suite.get("tasks") if isinstance(suite, dict) else None
    if not entries:
        raise ValueError(f"config.eval.suite: {path} has no 'tasks' list")
    base = os.path.dirname(path)
    tasks = []
    for i, entry in enumerate(entries):
        missing = [k for k in ("name", "train_dir", "test_dir") if k not in entry]
        if missing:
            raise ValueError(f"config.eval.suite: {path} tasks[{i}] lacks {missing}")
        kind = entry.get("type")
        if kind is not None and kind not in scoring.TASK_TYPES:
            raise ValueError(f"config.eval.suite: {path} tasks[{i}].type={kind!r} is not one of {scoring.TASK_TYPES}")
        tasks.append(
            Task(str(entry["name"]), _resolve(entry["train_dir"], base), _resolve(entry["test_dir"], base), kind)
        )
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"config.eval.suite: {path} repeats a task name: {names}")
    return tasks


def tasks_from_config(config) -> list[Task]:
    """The tasks of `config.eval` (empty when `config.eval.every` is 0); checks that every split
    exists, is labelled and was prepared with the config's front end, so a bad suite fails before
    anything is compiled."""
    ev = config.get("eval")
    if ev is None or not int(ev.every):
        return []
    if int(ev.every) < 0:
        raise ValueError(f"config.eval.every must be >= 0, got {ev.every}")
    if ev.suite:
        tasks = load_suite(ev.suite)
    else:
        tasks = [Task("eval", config.data.train_dir, config.data.eval_dir)]
    for task in tasks:
        for field, split in (("train_dir", task.train_dir), ("test_dir", task.test_dir)):
            try:
                manifest = pipeline.load_manifest(split)
            except (FileNotFoundError, OSError) as e:
                raise FileNotFoundError(f"config.eval task {task.name!r}: {field} {split}: {e}") from e
            config_checks.check_frontend(config, manifest, split, what=f"config.eval task {task.name!r}: {field}")
            if not manifest.get("num_classes"):
                raise ValueError(
                    f"config.eval task {task.name!r}: {field} {split} has no labels "
                    "(prepare it from a CSV with a labels column)"
                )
    return tasks


class ProbeEvaluator:
    """Scores an encoder's frozen embeddings on `tasks`; call it with (params, aux)."""

    def __init__(
        self,
        objective,
        config,
        tasks: list[Task],
        mesh,
        *,
        window: int,
        progress: bool = True,
        stats_dir: str | None = None,
    ):
        """`stats_dir`: the normalisation statistics (a prepared folder or a run's data_stats.json;
        default: those training reads, `run_files.stats_source(config)`)."""
        from audiossl_jax.train.run_files import stats_source

        self.tasks = tasks
        self._config = config
        self._kwargs = dict(
            stats_dir=stats_dir or stats_source(config),
            crop_frames=window,
            batch_size=config.probe.embed_batch_size,
            mesh=mesh,
            rules=config.rules,
            normalization=pipeline.normalization_kwargs(config.data),
            progress=progress,
        )
        self._embed_fn = embed.make_embed_fn(objective, mesh, config.rules)
        self._objective = objective

    def evaluate(self, params, aux, *, logmel_stats: bool = False) -> tuple[dict[str, float], dict[str, dict]]:
        """(flat scalars `<task>/<metric>` + `seconds`, full result per task). `logmel_stats`: score
        the model-free baseline instead of the encoder (params and aux unused)."""
        t0 = time.time()
        scalars, results = {}, {}
        for task in self.tasks:
            result = self.score(task, params, aux, logmel_stats=logmel_stats)
            results[task.name] = result
            scalars.update({f"{task.name}/{k}": float(result[k]) for k in SCALARS if k in result})
        scalars["seconds"] = time.time() - t0
        return scalars, results

    def score(self, task: Task, params, aux, *, logmel_stats: bool = False) -> dict:
        """One task: embed both splits, fit the probe and k-NN. `logmel_stats`: the model-free
        baseline's embedding (each mel bin's mean and standard deviation over the clip's valid
        frames of the normalised input, `logmel_stats_embedding`) instead of the encoder's."""
        embed_fn = logmel_stats_fn if logmel_stats else self._embed_fn
        x_train, y_train = embed.extract(
            self._objective,
            params,
            aux,
            task.train_dir,
            desc=f"eval {task.name} train",
            embed_fn=embed_fn,
            **self._kwargs,
        )
        x_test, y_test = embed.extract(
            self._objective,
            params,
            aux,
            task.test_dir,
            desc=f"eval {task.name} test",
            embed_fn=embed_fn,
            **self._kwargs,
        )
        ev = self._config.get("eval") or {}
        result = scoring.score_task(
            x_train,
            y_train,
            x_test,
            y_test,
            probe_config=self._config.probe,
            seed=self._config.seed,
            class_names=pipeline.class_names(task.test_dir),
            task_type=task.type,
            knn_k=int(ev.get("knn_k", 10)),
        )
        result.update(
            train_clips=len(x_train),
            eval_clips=len(x_test),
            embedding_dim=int(x_train.shape[1]),
            crop_frames=self._kwargs["crop_frames"],
        )
        return result
