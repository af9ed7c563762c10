"""`audiossl probe`: linear probe of a pre-trained encoder (and of the same encoder at random init)."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import tensorflow as tf

from audiossl_jax.evaluate import encoder as encoder_lib
from audiossl_jax.evaluate import evaluator
from audiossl_jax.objectives import registry as objectives
from audiossl_jax.parallel import mesh as mesh_lib
from audiossl_jax.train.run_files import load_data_stats, load_run_config

RESULTS_FILE = "probe_results.json"


def encoder_variables(config: ml_collections.ConfigDict, workdir: str, *, random_init: bool, mesh: jax.sharding.Mesh):
    """(objective, params, aux, step): `params` and `aux` of the latest checkpoint in `workdir` (an
    orbax partial restore: no optimizer state, no training data), or the run's random init when
    `random_init`. The input shape comes from the run's data statistics (`run_files.load_data_stats`:
    `<workdir>/data_stats.json`, else the corpus's manifest), not from the corpus."""
    objective = objectives.build(config)
    stats, _ = load_data_stats(workdir, config)
    params, aux, step = encoder_lib.restore_variables(
        config,
        workdir,
        objective,
        mesh,
        int(stats["mel_bins"]),
        int(stats.get("num_classes") or 0),
        random_init=random_init,
    )
    return objective, params, aux, step


LOGMEL_STATS_NAME = "log-mel stats (no model)"


def probe_encoder(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    random_init: bool,
    train_dir: str,
    eval_dir: str,
    logmel_stats: bool = False,
) -> dict:
    """Linear probe + k-NN of one encoder: the same code as the evaluations inside pre-training, the
    splits normalised with the run's statistics (`run_files.load_data_stats`). `logmel_stats`: the
    model-free baseline (`evaluator.logmel_stats_embedding`) instead."""
    mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
    window = evaluator.probe_window(config)
    with jax.set_mesh(mesh):
        objective, params, aux, step = encoder_variables(
            config, workdir, random_init=random_init or logmel_stats, mesh=mesh
        )
        _, stats_dir = load_data_stats(workdir, config)
        evaluator_ = evaluator.ProbeEvaluator(objective, config, [], mesh, window=window, stats_dir=stats_dir)
        name = LOGMEL_STATS_NAME if logmel_stats else "random-init" if random_init else f"pre-trained (step {step})"
        result = evaluator_.score(evaluator.Task(name, train_dir, eval_dir), params, aux, logmel_stats=logmel_stats)
    result.update(encoder=name, step=step)
    return result


def format_table(results: list[dict]) -> str:
    def cell(r, key, width, fmt=".4f"):
        return f"{r[key]:>{width}{fmt}}" if key in r else f"{'-':>{width}}"

    top5 = any("top5" in r for r in results)  # multi-class tasks with more than 5 classes
    header = (
        f"{'encoder':<28} {'mAP':>7} {'top-1':>7} "
        + (f"{'top-5':>7} " if top5 else "")
        + f"{'kNN mAP':>8} {'kNN top-1':>9} {'mean AUC':>9} {'classes':>8} {'eval clips':>10}"
    )
    rows = [header, "-" * len(header)]
    for r in results:
        rows.append(
            f"{r['encoder']:<28} {r['mAP']:>7.4f} {cell(r, 'top1', 7)} "
            + (f"{cell(r, 'top5', 7)} " if top5 else "")
            + f"{cell(r, 'knn_mAP', 8)} {cell(r, 'knn_top1', 9)} {r['mean_AUC']:>9.4f} "
            f"{r['classes_evaluated']:>8d} {r['eval_clips']:>10d}"
        )
    excluded = sorted({c for r in results for c in r["classes_excluded_no_positive"]})
    if excluded:
        rows.append(f"excluded (no positive in eval set): {', '.join(excluded)}")
    return "\n".join(rows)


def run(
    workdir: str,
    *,
    compare_random: bool,
    random_init: bool = False,
    train_dir: str | None = None,
    eval_dir: str | None = None,
    overrides: dict | None = None,
    logmel_baseline: bool = False,
    out: str | None = None,
) -> list[dict]:
    """Probes the workdir's encoder (and the random init / the model-free baseline); writes the
    results to `out` (default `<workdir>/probe_results.json`)."""
    config = load_run_config(workdir)
    for key, value in (overrides or {}).items():
        config.probe[key] = value
    train_dir = train_dir or config.data.train_dir
    eval_dir = eval_dir or config.data.eval_dir
    variants = [random_init] + ([True] if compare_random and not random_init else [])
    results = [probe_encoder(config, workdir, random_init=v, train_dir=train_dir, eval_dir=eval_dir) for v in variants]
    if logmel_baseline:
        results.append(
            probe_encoder(config, workdir, random_init=True, train_dir=train_dir, eval_dir=eval_dir, logmel_stats=True)
        )
    if jax.process_index() == 0:
        record = {
            "train_dir": train_dir,
            "eval_dir": eval_dir,
            "results": results,
            **reproducibility_record(config, workdir, results, train_dir, eval_dir),
        }
        with tf.io.gfile.GFile(out or os.path.join(workdir, RESULTS_FILE), "w") as f:
            json.dump(record, f, indent=2)
    return results


def reproducibility_record(config, workdir: str, results: list[dict], train_dir: str, eval_dir: str) -> dict:
    """What the results JSON records besides the scores (`data/provenance.py`): the checkpoint
    step, the config the probe ran with, and each split's clip count and sha256 of its sorted clip ids
    (the per-class AP is in each result)."""
    from audiossl_jax.data import provenance

    steps = [r["step"] for r in results if r["encoder"].startswith("pre-trained")]
    return {
        "workdir": workdir,
        "checkpoint_step": steps[0] if steps else None,
        "eval_set": provenance.split_record(eval_dir),
        "train_set": provenance.split_record(train_dir),
        "config": provenance.config_dict(config),
    }
