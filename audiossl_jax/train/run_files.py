"""Names of the files a run keeps in its workdir, reading its saved config back, and the run's data
statistics: what evaluation needs of the pre-training corpus, kept in the run so that probing,
embedding and fine-tuning work after the corpus has moved."""

from __future__ import annotations

import json
import os

import ml_collections

CONFIG_FILE = "config.json"  # the resolved config of the run
CHECKPOINT_DIR = "checkpoints"  # orbax steps {state, data}
DATA_STATS_FILE = "data_stats.json"  # normalisation statistics and front end of the training data


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """`<workdir>/config.json` of an `audiossl pretrain` (or `audiossl finetune`) run."""
    import tensorflow as tf

    path = os.path.join(workdir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} the --workdir of an `audiossl pretrain` run?")
    with tf.io.gfile.GFile(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def stats_source(config: ml_collections.ConfigDict) -> str:
    """Where training reads its normalisation statistics: `config.data.stats_dir` (a prepared folder
    or a run's data_stats.json), else the manifest of `config.data.train_dir`."""
    return config.data.get("stats_dir") or config.data.train_dir


def data_stats(config: ml_collections.ConfigDict) -> dict:
    """The record `<workdir>/data_stats.json` holds, read from the corpus: per-bin `mean` / `std`,
    `global_mean` / `global_std` (of `stats_source(config)`), and the training split's `mel_bins`,
    `frontend` (name and settings), `class_names` / `num_classes`, with the folders they came from."""
    from audiossl_jax.data import manifest as manifest_lib
    from audiossl_jax.data import pipeline

    source = stats_source(config)
    stats = pipeline.load_stats(source)
    train = manifest_lib.load_manifest(config.data.train_dir)
    return {
        "train_dir": config.data.train_dir,
        "stats_source": source,
        "frontend": train["frontend"],
        "mel_bins": int(train["mel_bins"]),
        "class_names": list(train["class_names"]),
        "num_classes": int(train["num_classes"]),
        **{k: stats[k] for k in pipeline.STATS_KEYS if k != "mel_bins"},
    }


def save_data_stats(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes `<workdir>/data_stats.json` (`data_stats`); process 0 only."""
    import jax

    from audiossl_jax.data.manifest import write_json_atomic

    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, DATA_STATS_FILE), data_stats(config))


def load_data_stats(workdir: str, config: ml_collections.ConfigDict) -> tuple[dict, str]:
    """(record, stats path) of a run: `<workdir>/data_stats.json` and its path; for a run made before
    that file existed, the same record read from the corpus and the corpus folder. The path is what
    the iterators take as `stats_dir`. FileNotFoundError names both places when neither is there."""
    import tensorflow as tf

    path = os.path.join(workdir, DATA_STATS_FILE)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            return json.load(f), path
    try:
        return data_stats(config), stats_source(config)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{workdir}: neither {path} (written by `audiossl pretrain` since it records the data "
            f"statistics) nor the pre-training corpus {stats_source(config)!r} "
            f"(config.data.train_dir / config.data.stats_dir) is there ({e}); restore the corpus, or "
            f"set data.train_dir in {os.path.join(workdir, CONFIG_FILE)} to where it is now"
        ) from e
