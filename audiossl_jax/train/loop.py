"""Pre-training loop: data -> sharded jitted step -> metrics, TensorBoard, checkpoints, resume."""
from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from audiossl_jax.data import pipeline
from audiossl_jax.evaluate import curves, evaluator as evaluator_lib
from audiossl_jax.objectives import base as objectives
from audiossl_jax.parallel import mesh as mesh_lib
from audiossl_jax.parallel import sharding as sharding_lib
from audiossl_jax.train import checkpointing, metrics_writer, optimizer
from audiossl_jax.train import state as state_lib

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
EVAL_BEST_FILE = "eval_best.json"
CURVES_FILE = "eval_curves.png"


def save_config(config, workdir: str) -> None:
    """`<workdir>/config.json` (the workdir may be local or gs://: written through tf.io.gfile)."""
    if jax.process_index() == 0:
        import tensorflow as tf

        tf.io.gfile.makedirs(workdir)
        with tf.io.gfile.GFile(os.path.join(workdir, CONFIG_FILE), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


def _progress_text(metrics: dict[str, float], keys: tuple[str, ...]) -> dict[str, str]:
    return {k: f"{metrics[k]:.3g}" for k in keys if k in metrics}


class _StopFlag:
    """Preemption: the loop checkpoints and exits cleanly at the next step.

    One process: a SIGTERM handler sets the flag. Several processes: every host must stop at the same
    step (or the others hang in the next step's collectives), so no Python handler is installed (it
    would replace JAX's preemption notifier) and all hosts ask JAX's preemption sync point instead.
    """

    def __init__(self):
        self._signalled = False
        self._previous = None
        self._multihost = jax.process_count() > 1

    def __enter__(self):
        if not self._multihost:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread: no preemption handling
                self._previous = None
        return self

    def _handle(self, signum, frame):
        self._signalled = True

    def should_stop(self, step: int) -> bool:
        if self._multihost:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._signalled

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def pretrain(config, workdir: str, *, max_steps: int | None = None) -> dict[str, Any]:
    """Pre-trains `config.method` for `config.train.steps` steps, resuming from `workdir` if possible.

    `max_steps` stops early after that many steps of this call (the schedule is unchanged), which is
    how tests simulate a run that is killed and resumed.
    Returns a summary: final step, last logged metrics, wall time.
    """
    total_steps = int(config.train.steps)
    objective = objectives.build(config)
    mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
    batch_sharding = sharding_lib.batch_sharding(mesh, config.rules)
    process_count, process_index = jax.process_count(), jax.process_index()
    if config.data.batch_size % process_count or config.data.batch_size % _batch_divisor(mesh, config):
        raise ValueError(f"config.data.batch_size={config.data.batch_size} must be divisible by the "
                         f"number of batch shards ({_batch_divisor(mesh, config)}) and processes ({process_count})")
    eval_tasks = evaluator_lib.tasks_from_config(config)  # a bad suite fails before anything is written
    save_config(config, workdir)
    tx, schedule = optimizer.make_optimizer(config.optimizer, total_steps)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), keep=config.train.keep_ckpts)
    latest = ckpt.latest_step()

    def open_data(data_state):
        return pipeline.train_iterator(config.data.train_dir, batch_size=config.data.batch_size,
                                       crop_frames=config.data.crop_frames, seed=config.seed,
                                       process_index=process_index, process_count=process_count,
                                       state=data_state, shuffle_buffer=config.data.shuffle_buffer,
                                       **pipeline.normalization_kwargs(config.data))

    data = open_data(None)
    first = sharding_lib.global_batch(next(data), batch_sharding)
    batch_shardings = jax.tree.map(lambda x: x.sharding, first)
    rng = jax.random.key(config.seed)
    init_rng, step_rng = jax.random.split(rng)
    with jax.set_mesh(mesh):
        state, state_shardings = state_lib.init_train_state(objective, tx, init_rng, first, mesh, config.rules)
        if latest is not None:
            if process_index == 0:
                tqdm.write(f"resuming from step {latest} of {total_steps} ({ckpt.directory})")
            state, data_state = ckpt.restore(latest, state, state_shardings)
            data = open_data(data_state)
            first = None
        train_step = state_lib.make_train_step(objective, tx, schedule, mesh=mesh, rules=config.rules)
        step_fn = state_lib.jit_train_step(train_step, state_shardings, batch_shardings, mesh)
        start_step = int(jax.device_get(state["step"]))
        end_step = total_steps if max_steps is None else min(total_steps, start_step + max_steps)
        evaluator = None
        if eval_tasks:
            evaluator = evaluator_lib.ProbeEvaluator(objective, config, eval_tasks, mesh,
                                                     window=evaluator_lib.probe_window(config),
                                                     progress=False)  # one summary line per evaluation
        summary = _run(config, workdir, objective, state, step_fn, data, first, batch_sharding,
                       step_rng, ckpt, start_step, end_step, total_steps, evaluator)
    ckpt.close()
    if evaluator is not None and config.eval.plot and jax.process_index() == 0:
        summary["curves"] = curves.plot_eval_curves(workdir, os.path.join(workdir, CURVES_FILE),
                                                    title=f"{config.method}: in-training linear probe")
    return summary


def _batch_divisor(mesh, config) -> int:
    spec = sharding_lib.batch_sharding(mesh, config.rules).spec
    axes = spec[0] if len(spec) else None
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


class _EvalLog:
    """Runs the in-training evaluations, logs them (`eval/<task>/<metric>`; at step 0 the baselines
    `random_init/<task>/<metric>` and the model-free `logmel_stats/<task>/<metric>`) and keeps `<workdir>/eval_best.json`: the best value
    of each eval metric and its step, over the whole (resumed) series."""

    def __init__(self, evaluator, workdir: str, writer, enabled: bool):
        self.evaluator, self.writer, self.enabled = evaluator, writer, enabled
        self.path = os.path.join(workdir, EVAL_BEST_FILE)
        self.records = metrics_writer.read_records(workdir) if enabled else []  # already truncated
        self.seconds = 0.0

    def has_baseline(self) -> bool:
        return any(k.startswith("random_init/") for r in self.records for k in r)

    def run(self, step: int, state, prefix: str) -> dict[str, float]:
        scalars, _ = self.evaluator.evaluate(state["params"], state["aux"],
                                             logmel_stats=prefix == "logmel_stats")
        self.seconds += scalars["seconds"]
        logged = {f"{prefix}/{k}": v for k, v in scalars.items()}
        self.writer.write(step, logged)
        self.records.append({"step": step, **logged})
        if self.enabled:
            self._write_best()
            shown = ", ".join(f"{k} {v:.3f}" for k, v in scalars.items() if k.endswith(("/mAP", "/top1")))
            tqdm.write(f"{prefix} step {step} ({scalars['seconds']:.0f} s): {shown}")
        return logged

    def _write_best(self) -> None:
        import tensorflow as tf

        best: dict[str, dict] = {}
        for r in self.records:
            for k, v in r.items():
                if k.startswith("eval/") and not k.endswith("/seconds") and (k not in best or v > best[k]["value"]):
                    best[k] = {"value": v, "step": r["step"]}
        baselines = {prefix: {k: v for r in self.records for k, v in r.items()
                              if k.startswith(prefix + "/") and not k.endswith("/seconds")}
                     for prefix in ("random_init", "logmel_stats")}
        with tf.io.gfile.GFile(self.path, "w") as f:
            json.dump({"best": best, **baselines}, f, indent=2)


def _run(config, workdir, objective, state, step_fn, data, first, batch_sharding, step_rng, ckpt,
         start_step, end_step, total_steps, evaluator=None):
    is_host0 = jax.process_index() == 0
    writer = metrics_writer.MetricsWriter(workdir, enabled=is_host0, resume_step=start_step)
    evals = _EvalLog(evaluator, workdir, writer, is_host0) if evaluator is not None else None
    every = int(config.eval.every) if evals is not None else 0
    if evals is not None and start_step == 0 and config.eval.random_init_baseline and not evals.has_baseline():
        evals.run(0, state, "random_init")  # step 0 of a new run: the params are the random init
        evals.run(0, state, "logmel_stats")  # and the model-free baseline
    progress_keys = ("loss",) + tuple(getattr(objective, "progress_keys", ())) + ("grad_norm", "lr", "clips_per_s")
    bar = tqdm(total=total_steps, initial=start_step, desc=f"pretrain {config.method}", disable=not is_host0,
               dynamic_ncols=True, mininterval=1.0)
    pending = None  # (step, device metrics) of the previous step: fetched one step late
    last: dict[str, float] = {}
    t_log, clips_since_log = time.time(), 0
    t_start = time.time()
    step = start_step
    with _StopFlag() as stop:
        while step < end_step:
            local = first if first is not None else sharding_lib.global_batch(next(data), batch_sharding)
            first = None
            state, metrics = step_fn(state, local, step_rng)
            clips_since_log += config.data.batch_size
            if pending is not None:
                last = _fetch(pending)
            pending = (step, metrics)
            step += 1
            bar.update(1)
            if step % config.train.log_every == 0 or step == end_step:
                last = _fetch(pending)
                pending = None
                elapsed = time.time() - t_log
                last["clips_per_s"] = clips_since_log / max(elapsed, 1e-9)
                t_log, clips_since_log = time.time(), 0
                writer.write(step, last)
                bar.set_postfix(_progress_text(last, progress_keys), refresh=False)
            if every and (step % every == 0 or step == total_steps):
                evals.run(step, state, "eval")  # then the save: a checkpoint at this step has its eval line
            preempted = stop.should_stop(step)
            if step % config.train.ckpt_every == 0 or step == end_step or preempted:
                ckpt.save(step, state, data.get_state(), force=True)
            if preempted:
                tqdm.write(f"SIGTERM received: checkpointed step {step} in {workdir}, stopping")
                break
    if pending is not None:
        last = _fetch(pending)
    bar.close()
    ckpt.wait()
    writer.close()
    summary = {"step": step, "metrics": last, "seconds": time.time() - t_start, "workdir": workdir}
    if evals is not None:
        summary["eval_seconds"] = evals.seconds
    return summary


def _fetch(pending) -> dict[str, float]:
    step, metrics = pending
    values = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
    if not math.isfinite(values["loss"]):
        raise FloatingPointError(f"non-finite loss {values['loss']} at step {step}: "
                                 + json.dumps({k: v for k, v in values.items() if k != "loss"}))
    return values
