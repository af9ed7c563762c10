"""`audiossl finetune`: fine-tune a pre-trained EAT encoder on a labelled split and score the eval split.

The recipe (EATClassifier, layer-wise LR decay, mixup, SpecAugment, losses) is `finetune_recipe.py`;
its values come from `config.finetune` of the pre-training run (configs/eat.py). One jitted step with
the parameters and optimizer state sharded by the config's logical axis rules and donated; the
batch is a global array on the config's mesh, as in pre-training. Results (mAP, AUC, d' for
multi-label data, accuracy for multi-class) go to `<out>/finetune_results.json`, the loss curve to
`<out>/<encoder>/metrics.jsonl` and the fine-tuned parameters to `<out>/<encoder>/params` (Orbax).
"""
from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from audiossl_jax.data import pipeline
from audiossl_jax.evaluate import finetune_recipe as recipe
from audiossl_jax.evaluate import metrics, probe
from audiossl_jax.parallel import mesh as mesh_lib
from audiossl_jax.parallel import sharding as sharding_lib
from audiossl_jax.train import config_defaults

RESULTS_FILE = "finetune_results.json"
SUPPORTED_METHODS = ("eat",)


def settings(config: ml_collections.ConfigDict, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """The run's `config.finetune` (defaults for runs saved without one), updated by `overrides`."""
    ft = config_defaults.finetune_defaults()
    ft.update(config.get("finetune") or {})
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in ft:
            raise ValueError(f"unknown fine-tuning setting {key!r}; settings: {sorted(ft)}")
        ft[key] = value
    if ft.class_balanced:
        raise ValueError("config.finetune.class_balanced=True (AS-2M's weighted sampling) is not supported "
                         "by `audiossl finetune` yet; set it to False")
    if ft.steps <= 0 or ft.batch_size <= 0:
        raise ValueError(f"config.finetune.steps={ft.steps} and batch_size={ft.batch_size} must be positive")
    if not 0 <= ft.warmup_steps < ft.steps:
        raise ValueError(f"config.finetune.warmup_steps={ft.warmup_steps} must be in [0, steps={ft.steps}) "
                         "(--warmup-steps)")
    return ft


def classifier(objective, ft, num_classes: int) -> recipe.EATClassifier:
    """EATClassifier around the pre-training encoder's module, with the fine-tuning drop path."""
    encoder = objective.encoder.clone(parent=None, drop_path=float(ft.drop_path))
    return recipe.EATClassifier(encoder=encoder, num_classes=num_classes, pooling=ft.pooling,
                                dtype=objective.encoder.dtype)


def make_step(model, tx, ft):
    """step(params, opt_state, batch, rng) -> (params, opt_state, {loss, grad_norm}); pure."""

    def loss_fn(params, batch, rng):
        aug_rng, mix_rng, drop_rng = jax.random.split(rng, 3)
        features, valid, labels = batch["features"], batch["valid"], batch["labels"]
        if not ft.multilabel and ft.label_smoothing > 0:
            labels = recipe.smooth_labels(labels, ft.label_smoothing)
        if ft.mixup_prob > 0:
            features, valid, labels = recipe.mixup(mix_rng, features, valid, labels, alpha=ft.mixup_alpha,
                                                   prob=ft.mixup_prob)
        if ft.specaug_freq > 0 or ft.specaug_time > 0:
            features = recipe.spec_augment(aug_rng, features, freq_param=ft.specaug_freq,
                                           time_param=ft.specaug_time)
        logits = model.apply({"params": params}, features, valid, train=True, rngs={"dropout": drop_rng})
        return recipe.classification_loss(logits, labels, multilabel=ft.multilabel)

    def step(params, opt_state, batch, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        return params, opt_state, {"loss": loss, "grad_norm": jnp.sqrt(sum(jnp.vdot(g, g) for g in
                                                                           jax.tree.leaves(grads)))}

    return step


def score(model, params, config, ft, eval_dir: str, batch_sharding, mesh, rules) -> dict:
    """mAP / AUC / d' (multi-label) or accuracy (multi-class) of the classifier on every eval example."""
    data = pipeline.eval_iterator(eval_dir, batch_size=ft.batch_size, crop_frames=config.data.crop_frames,
                                  stats_dir=config.data.train_dir, process_index=jax.process_index(),
                                  process_count=jax.process_count(), **pipeline.normalization_kwargs(config.data))
    apply = lambda p, f, v: model.apply({"params": p}, f, v)  # noqa: E731
    predict = jax.jit(sharding_lib.with_activation_rules(apply, mesh, rules))
    scores, labels = [], []
    for local in data:
        batch = sharding_lib.global_batch(local, batch_sharding)
        logits = predict(params, batch["features"], batch["valid"])
        keep = multihost_utils.process_allgather(batch["_mask"], tiled=True).astype(bool)
        scores.append(multihost_utils.process_allgather(logits, tiled=True)[keep])
        labels.append(multihost_utils.process_allgather(batch["labels"], tiled=True)[keep])
    scores, labels = np.concatenate(scores).astype(np.float32), np.concatenate(labels)
    if ft.multilabel:
        result = metrics.multilabel_metrics(labels, scores, class_names=pipeline.class_names(eval_dir))
        return {k: result[k] for k in ("mAP", "mean_AUC", "d_prime", "classes_evaluated")}
    return {"accuracy": metrics.accuracy(labels, scores)}


def init_classifier(model, encoder_params, rng, batch, mesh, rules):
    """(classifier params with the given encoder params, their shardings from the logical rules)."""
    init_fn = sharding_lib.with_activation_rules(model.init, mesh, rules)
    boxed = jax.eval_shape(init_fn, rng, batch["features"], batch["valid"])["params"]
    shardings = sharding_lib.logical_shardings(boxed, mesh, rules)
    init = jax.jit(lambda r, f, v: nn.unbox(init_fn(r, f, v)["params"]), out_shardings=shardings)
    fresh = init(rng, batch["features"], batch["valid"])
    return jax.device_put(recipe.with_pretrained_encoder(fresh, encoder_params), shardings), shardings


def finetune_encoder(config, workdir: str, out: str, *, random_init: bool, train_dir: str, eval_dir: str,
                     ft: ml_collections.ConfigDict) -> dict:
    """Fine-tunes the checkpointed (or random-init) encoder of `workdir`; returns its results row."""
    mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
    rules = config.rules
    name = "random-init" if random_init else "pre-trained"
    run_dir = os.path.join(out, name)
    tf.io.gfile.makedirs(run_dir)
    batch_sharding = sharding_lib.batch_sharding(mesh, rules)
    with jax.set_mesh(mesh):
        objective, params, _, step = probe.encoder_variables(config, workdir, random_init=random_init, mesh=mesh)
        model = classifier(objective, ft, pipeline.num_classes(train_dir))
        data = pipeline.train_iterator(train_dir, batch_size=ft.batch_size, crop_frames=config.data.crop_frames,
                                       seed=config.seed, stats_dir=config.data.train_dir,
                                       process_index=jax.process_index(), process_count=jax.process_count(),
                                       shuffle_buffer=config.data.shuffle_buffer,
                                       **pipeline.normalization_kwargs(config.data))
        first = sharding_lib.global_batch(next(data), batch_sharding)
        init_rng, train_rng = jax.random.split(jax.random.key(config.seed + 1))
        model_params, shardings = init_classifier(model, params["encoder"], init_rng, first, mesh, rules)
        tx, schedule = recipe.finetune_optimizer(ft, model_params, objective.encoder.depth)
        opt_state = jax.jit(tx.init)(model_params)
        opt_shardings = jax.tree.map(lambda x: x.sharding, opt_state)
        batch_shardings = jax.tree.map(lambda x: x.sharding, first)
        step_fn = sharding_lib.with_activation_rules(make_step(model, tx, ft), mesh, rules)
        train_step = jax.jit(step_fn, donate_argnums=(0, 1),
                             in_shardings=(shardings, opt_shardings, batch_shardings, None),
                             out_shardings=(shardings, opt_shardings, None))
        history, evals, batch = [], [], first
        log = tf.io.gfile.GFile(os.path.join(run_dir, "metrics.jsonl"), "w") if jax.process_index() == 0 else None
        bar = tqdm(range(1, ft.steps + 1), desc=f"finetune {name}", disable=jax.process_index() != 0)
        for i in bar:
            model_params, opt_state, m = train_step(model_params, opt_state, batch,
                                                    jax.random.fold_in(train_rng, i))
            if i < ft.steps:
                batch = sharding_lib.global_batch(next(data), batch_sharding)
            if i % ft.log_every == 0 or i in (1, ft.steps):
                row = {"step": i, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
                       "lr": float(schedule(i - 1))}
                if not np.isfinite(row["loss"]):
                    raise FloatingPointError(f"fine-tuning loss is {row['loss']} at step {i} ({name})")
                history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                if log:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
            if (ft.eval_every and i % ft.eval_every == 0) or i == ft.steps:
                evals.append({"step": i, **score(model, model_params, config, ft, eval_dir, batch_sharding,
                                                 mesh, rules)})
        if log:
            log.close()
        ckpt = ocp.StandardCheckpointer()
        path = os.path.join(run_dir, "params")
        ckpt.save(path if "://" in path else os.path.abspath(path), model_params, force=True)
        ckpt.wait_until_finished()
    return {"encoder": f"{name} (step {step})" if not random_init else name, "pretrain_step": step,
            "finetune_steps": int(ft.steps), "first_loss": history[0]["loss"], "last_loss": history[-1]["loss"],
            **evals[-1], "evals": evals}


def run(workdir: str, *, compare_random: bool = False, random_init: bool = False, out: str | None = None,
        train_dir: str | None = None, eval_dir: str | None = None, overrides: dict | None = None) -> list[dict]:
    """Fine-tunes the encoder of the pre-training run `workdir` (and, with `compare_random`, the same
    encoder at random init) and writes `<out>/finetune_results.json` (out defaults to <workdir>/finetune)."""
    config = probe.load_config(workdir)
    if config.method not in SUPPORTED_METHODS:
        raise ValueError(f"{workdir}: fine-tuning is implemented for {SUPPORTED_METHODS} encoders, this run is "
                         f"{config.method!r}; use `audiossl probe` for a linear probe")
    ft = settings(config, overrides)
    out = out or os.path.join(workdir, "finetune")
    train_dir, eval_dir = train_dir or config.data.train_dir, eval_dir or config.data.eval_dir
    variants = [random_init] + ([True] if compare_random and not random_init else [])
    results = [finetune_encoder(config, workdir, out, random_init=v, train_dir=train_dir, eval_dir=eval_dir,
                                ft=ft) for v in variants]
    if jax.process_index() == 0:
        with tf.io.gfile.GFile(os.path.join(out, RESULTS_FILE), "w") as f:
            json.dump({"train_dir": train_dir, "eval_dir": eval_dir, "finetune": ft.to_dict(),
                       "results": results}, f, indent=2)
    return results


def format_table(results: list[dict]) -> str:
    keys = [k for k in ("mAP", "mean_AUC", "d_prime", "accuracy") if k in results[0]]
    header = f"{'encoder':<28} {'first loss':>10} {'last loss':>10} " + " ".join(f"{k:>9}" for k in keys)
    rows = [f"{r['encoder']:<28} {r['first_loss']:>10.4f} {r['last_loss']:>10.4f} "
            + " ".join(f"{r[k]:>9.4f}" for k in keys) for r in results]
    return "\n".join([header, "-" * len(header), *rows])
