"""`audiossl finetune`: fine-tune the encoder of a pre-training run with a classifier head.

Fine-tuning is the objective `finetune` (`objectives/finetune.py`) run by the pre-training loop, so
it has the loop's sharded, donated step, async metrics, orbax checkpoints (keep-N), resume,
preemption and in-loop evaluation. This module only writes its config (`finetune_config`: the
pre-training run's config, with the recipe of its `config.finetune` as optimizer, data and
evaluation settings), runs the loop once per encoder in `<out>/pre-trained` and `<out>/random-init`,
and gathers the results into `<out>/finetune_results.json`: the last loss, every evaluation of the
eval split (mAP, mean AUC, d' for multi-label data; top-1 accuracy for multi-class), the last
evaluation's per-class AP, and the provenance of each result (checkpoint step, the fine-tuning config,
clip count and clip-id hash of the train and eval splits: `provenance.py`).

Running the same command again resumes each unfinished fine-tuning from its latest checkpoint.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import tensorflow as tf

from audiossl_jax.data import pipeline, provenance
from audiossl_jax.train import config_defaults, loop, metrics_writer, restore, run_files

RESULTS_FILE = "finetune_results.json"
EVAL_TASK = "eval"


def settings(config: ml_collections.ConfigDict, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """The run's `config.finetune` over the neutral defaults (`config_defaults.finetune_defaults`),
    updated by `overrides`; the recipe's batch, steps, lr and warm-up must be set by one of them."""
    ft = config_defaults.finetune_defaults()
    ft.update(config.get("finetune") or {})
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in ft:
            raise ValueError(f"unknown fine-tuning setting {key!r}; settings: {sorted(ft)}")
        ft[key] = value
    if ft.class_balanced:
        raise ValueError(
            "config.finetune.class_balanced=True (AS-2M's weighted sampling) is not supported "
            "by `audiossl finetune` yet; set it to False"
        )
    missing = [k for k in config_defaults.FINETUNE_RECIPE if ft[k] is None]
    if missing:
        raise ValueError(
            f"config.finetune.{'/'.join(missing)} not set: this run's config has no fine-tuning "
            "recipe (configs/<method>.py finetune_settings); pass --steps, --lr, --warmup-steps "
            "and --batch-size"
        )
    for key in ("steps", "batch_size", "log_every", "ckpt_every"):
        if int(ft[key]) <= 0:
            raise ValueError(f"config.finetune.{key}={ft[key]} must be positive")
    if not 0 <= ft.warmup_steps < ft.steps:
        raise ValueError(
            f"config.finetune.warmup_steps={ft.warmup_steps} must be in [0, steps={ft.steps}) (--warmup-steps)"
        )
    if ft.eval_every < 0:
        raise ValueError(f"config.finetune.eval_every={ft.eval_every} must be >= 0 (0: only at the end)")
    return ft


def finetune_config(
    config: ml_collections.ConfigDict,
    workdir: str,
    ft: ml_collections.ConfigDict,
    *,
    random_init: bool,
    train_dir: str,
    eval_dir: str,
) -> ml_collections.ConfigDict:
    """The loop's config for fine-tuning the encoder of the pre-training run (`config`, `workdir`):
    method `finetune`, the recipe `ft` as optimizer / data / train / eval settings, the data
    normalised as in pre-training (`data.stats_dir`: the run's data_stats.json, `run_files.load_data_stats`)."""
    if config.method not in ("wav2vec2", "eat", "slicer"):
        raise ValueError(
            f"{workdir}: config.method={config.method!r} has no encoder to fine-tune (wav2vec2, eat, slicer)"
        )
    c = ml_collections.ConfigDict(config.to_dict())
    f = ml_collections.ConfigDict(ft.to_dict())
    f.base_method = config.method
    f.base_batch_size, f.base_crop_frames = int(config.data.batch_size), int(config.data.crop_frames)
    f.init_from = "" if random_init else workdir
    f.num_classes = pipeline.num_classes(train_dir)
    f.mel_bins = pipeline.mel_bins(train_dir)
    c.method = "finetune"
    c.finetune = f
    if "drop_path" in c.model:
        c.model.drop_path = float(ft.drop_path)
    elif ft.drop_path:
        raise ValueError(
            f"config.finetune.drop_path={ft.drop_path}: the {config.method} encoder has no "
            "stochastic depth (config.model.drop_path); set it to 0"
        )
    for key, value in ft.model.items():
        if key not in c.model:
            raise ValueError(f"config.finetune.model.{key}: config.model has no field {key!r}")
        c.model[key] = value
    c.data.stats_dir = run_files.load_data_stats(workdir, config)[
        1
    ]  # the run's data_stats.json (older runs: the corpus)
    c.data.train_dir, c.data.eval_dir = train_dir, eval_dir
    c.data.batch_size = int(ft.batch_size)
    c.data.crop_frames = int(ft.crop_frames or config.data.crop_frames)
    c.optimizer = ml_collections.ConfigDict(
        {
            "lr": float(ft.lr),
            "warmup_steps": int(ft.warmup_steps),
            "decay": "cosine",
            "end_lr_ratio": float(ft.end_lr) / float(ft.lr) if ft.lr else 0.0,
            "weight_decay": float(ft.weight_decay),
            "b1": float(ft.b1),
            "b2": float(ft.b2),
            "eps": float(ft.eps),
            "clip_norm": float(ft.clip_norm),
        }
    )
    c.train.steps, c.train.log_every = int(ft.steps), int(ft.log_every)
    c.train.ckpt_every = int(ft.ckpt_every)
    c.eval.every = int(ft.eval_every) or int(ft.steps)  # 0: only at the last step
    c.eval.suite = ""
    c.eval.random_init_baseline = False
    c.eval.plot = False
    return c


def _read_json(path: str) -> dict:
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def finetune_encoder(
    config: ml_collections.ConfigDict,
    workdir: str,
    out: str,
    *,
    random_init: bool,
    train_dir: str,
    eval_dir: str,
    ft: ml_collections.ConfigDict,
    max_steps: int | None = None,
    run_name: str | None = None,
    seed: int | None = None,
) -> dict:
    """Fine-tunes (or resumes fine-tuning) the checkpointed or random-init encoder of `workdir` in
    `<out>/pre-trained` or `<out>/random-init` (or `<out>/<run_name>`); returns its results row: the
    last evaluation's scalars and `per_class_AP`, every evaluation, and the provenance (`checkpoint_step`,
    the fine-tuning `config`). `seed`: the fine-tuning run's `config.seed` (head init, random-init
    encoder, data order, dropout; default: the pre-training run's)."""
    name = "random-init" if random_init else "pre-trained"
    step = 0 if random_init else restore.latest_checkpoint(workdir, random_flag="--from-random")[0]
    run_dir = os.path.join(out, name) if run_name is None else os.path.join(out, run_name)
    ft_config = finetune_config(config, workdir, ft, random_init=random_init, train_dir=train_dir, eval_dir=eval_dir)
    if seed is not None:
        ft_config.seed = int(seed)
    summary = loop.pretrain(ft_config, run_dir, max_steps=max_steps)
    records = metrics_writer.read_records(run_dir)
    losses = [r for r in records if "loss" in r]
    prefix = f"eval/{EVAL_TASK}/"
    evals = [
        {"step": r["step"], **{k[len(prefix) :]: v for k, v in r.items() if k.startswith(prefix)}}
        for r in records
        if any(k.startswith(prefix) for k in r)
    ]
    row = {
        "encoder": name if random_init else f"{name} (step {step})",
        "checkpoint_step": None if random_init else step,
        "pretrain_step": step,
        "finetune_steps": int(ft.steps),
        "step": summary["step"],
        "workdir": run_dir,
        "preempted": bool(summary.get("preempted")),
        "first_loss": losses[0]["loss"] if losses else None,
        "last_loss": losses[-1]["loss"] if losses else None,
    }
    if evals and evals[-1]["step"] == int(ft.steps):
        row.update({k: v for k, v in evals[-1].items() if k not in ("step", "seconds")})
        final = _read_json(os.path.join(run_dir, loop.EVAL_LAST_FILE)).get("eval", {})
        if final.get("step") == int(ft.steps):
            result = final["results"].get(EVAL_TASK, {})
            row.update(per_class_AP=result.get("per_class_AP"), eval_clips=result.get("clips"))
    row["evals"] = evals
    row["seed"] = int(ft_config.seed)
    row["config"] = provenance.config_dict(ft_config)
    return row


def run(
    workdir: str,
    *,
    compare_random: bool = False,
    random_init: bool = False,
    out: str | None = None,
    train_dir: str | None = None,
    eval_dir: str | None = None,
    overrides: dict | None = None,
    max_steps: int | None = None,
) -> list[dict]:
    """Fine-tunes the encoder of the pre-training run `workdir` (and, with `compare_random`, the same
    encoder from random init) and writes `<out>/finetune_results.json` (out: <workdir>/finetune).
    `max_steps`: stop each fine-tuning after that many steps of this call (resumable)."""
    config = run_files.load_run_config(workdir)
    ft = settings(config, overrides)
    out = out or os.path.join(workdir, "finetune")
    train_dir, eval_dir = train_dir or config.data.train_dir, eval_dir or config.data.eval_dir
    variants = [random_init] + ([True] if compare_random and not random_init else [])
    results = [
        finetune_encoder(
            config, workdir, out, random_init=v, train_dir=train_dir, eval_dir=eval_dir, ft=ft, max_steps=max_steps
        )
        for v in variants
    ]
    if jax.process_index() == 0:
        tf.io.gfile.makedirs(out)
        with tf.io.gfile.GFile(os.path.join(out, RESULTS_FILE), "w") as f:
            json.dump(
                {
                    "workdir": workdir,
                    "train_dir": train_dir,
                    "eval_dir": eval_dir,
                    "train_set": provenance.split_record(train_dir),
                    "eval_set": provenance.split_record(eval_dir),
                    "finetune": ft.to_dict(),
                    "results": results,
                },
                f,
                indent=2,
            )
    return results


def format_table(results: list[dict]) -> str:
    keys = [k for k in ("mAP", "mean_AUC", "d_prime", "top1", "top5") if any(k in r for r in results)]
    header = f"{'encoder':<28} {'steps':>6} {'first loss':>10} {'last loss':>10} " + " ".join(f"{k:>9}" for k in keys)

    def num(v, width):
        return f"{v:>{width}.4f}" if isinstance(v, (int, float)) else f"{'-':>{width}}"

    rows = [
        f"{r['encoder']:<28} {r['step']:>6d} {num(r['first_loss'], 10)} {num(r['last_loss'], 10)} "
        + " ".join(num(r.get(k), 9) for k in keys)
        for r in results
    ]
    return "\n".join([header, "-" * len(header), *rows])
