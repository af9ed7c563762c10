"""Names of the files a run keeps in its workdir, and reading its saved config back."""

from __future__ import annotations

import json
import os

import ml_collections

CONFIG_FILE = "config.json"  # the resolved config of the run
CHECKPOINT_DIR = "checkpoints"  # orbax steps {state, data}


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """`<workdir>/config.json` of an `audiossl pretrain` (or `audiossl finetune`) run."""
    import tensorflow as tf

    path = os.path.join(workdir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} the --workdir of an `audiossl pretrain` run?")
    with tf.io.gfile.GFile(path) as f:
        return ml_collections.ConfigDict(json.load(f))
