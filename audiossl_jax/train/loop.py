"""Pre-training loop: data -> sharded jitted step -> metrics, TensorBoard, checkpoints, resume."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from audiossl_jax.data import pipeline, shard_check
from audiossl_jax.evaluate import classifier_eval, curves
from audiossl_jax.evaluate import evaluator as evaluator_lib
from audiossl_jax.objectives import registry as objectives
from audiossl_jax.parallel import mesh as mesh_lib
from audiossl_jax.parallel import sharding as sharding_lib
from audiossl_jax.train import checkpointing, config_checks, metrics_writer, op_profile, optimizer, workdir_lock
from audiossl_jax.train import step as step_lib
from audiossl_jax.train.run_files import CHECKPOINT_DIR, CONFIG_FILE, save_data_stats  # noqa: F401 (loop.CONFIG_FILE)

EVAL_BEST_FILE = "eval_best.json"
EVAL_LAST_FILE = "eval_last.json"
CURVES_FILE = "eval_curves.png"


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """`<workdir>/config.json` (the workdir may be local or gs://: written through tf.io.gfile)."""
    if jax.process_index() == 0:
        import tensorflow as tf

        tf.io.gfile.makedirs(workdir)
        with tf.io.gfile.GFile(os.path.join(workdir, CONFIG_FILE), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


def progress_label(config: ml_collections.ConfigDict) -> str:
    """The progress bar's label: the command and the method, "pretrain eat" or "finetune eat" (the
    fine-tuning objective runs the same loop on the pre-trained method's encoder)."""
    if config.method == "finetune":
        return f"finetune {config.finetune.base_method}"
    return f"pretrain {config.method}"


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

    def signalled(self) -> bool:
        """A SIGTERM already arrived (one process; multi-host runs learn it at the sync point)."""
        return self._signalled

    def should_stop(self, step: int) -> bool:
        if self._multihost:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._signalled

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def pretrain(config: ml_collections.ConfigDict, workdir: str, *, max_steps: int | None = None) -> dict[str, Any]:
    """Pre-trains `config.method` for `config.train.steps` steps, resuming from `workdir` if possible.

    `max_steps` stops early after that many steps of this call (the schedule is unchanged), which is
    how tests simulate a run that is killed and resumed.
    Returns a summary: final step, last logged metrics, wall time, `preempted` (stopped by SIGTERM
    after checkpointing).

    Order: every config, mesh, eval-suite and data check runs first; only then is the workdir locked
    (`<workdir>/audiossl.lock`, process 0; a second trainer on the workdir fails here, before writing
    or compiling anything), config.json and data_stats.json (the corpus's normalisation statistics and
    front end, which evaluation reads from the run) written, and the step compiled.
    """
    config_checks.validate_config(config)
    objective = objectives.build(config)
    mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
    batch_sharding = sharding_lib.batch_sharding(mesh, config.rules)
    process_count, process_index = jax.process_count(), jax.process_index()
    if config.data.batch_size % process_count or config.data.batch_size % _batch_divisor(mesh, config):
        raise ValueError(
            f"config.data.batch_size={config.data.batch_size} must be divisible by the "
            f"number of batch shards ({_batch_divisor(mesh, config)}) and processes ({process_count})"
        )
    eval_tasks = evaluator_lib.tasks_from_config(config)  # a bad suite fails before anything is written

    def open_data(data_state):
        return pipeline.train_iterator(
            config.data.train_dir,
            batch_size=config.data.batch_size,
            crop_frames=config.data.crop_frames,
            seed=config.seed,
            process_index=process_index,
            process_count=process_count,
            state=data_state,
            shuffle_buffer=config.data.shuffle_buffer,
            stats_dir=config.data.get("stats_dir") or None,
            **pipeline.normalization_kwargs(config.data),
        )

    data = open_data(None)  # a missing or bad data dir fails before the workdir exists
    config_checks.check_frontend(config, data.manifest, config.data.train_dir)  # data of another front end
    shard_check.warn(data.manifest, config.data.train_dir, process_count, log=tqdm.write)
    lock = _lock_workdir(workdir)
    try:
        with _StopFlag() as stop:  # from here on SIGTERM stops cleanly (and the lock is released)
            return _pretrain_locked(
                config, workdir, max_steps, objective, mesh, batch_sharding, eval_tasks, open_data, data, stop
            )
    finally:
        if lock is not None:
            lock.release()


def _lock_workdir(workdir: str):
    """Process 0 takes `<workdir>/audiossl.lock`; every process learns whether it got it."""
    lock, error = None, None
    if jax.process_index() == 0:
        lock = workdir_lock.WorkdirLock(workdir, log=tqdm.write)
        try:
            lock.acquire()
        except workdir_lock.WorkdirLocked as e:
            error = str(e)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not ok:
            raise workdir_lock.WorkdirLocked(
                error or f"workdir {workdir} is locked by another run (process 0 names the owner)"
            )
    elif error is not None:
        raise workdir_lock.WorkdirLocked(error)
    return lock


def _pretrain_locked(
    config, workdir, max_steps, objective, mesh, batch_sharding, eval_tasks, open_data, data, stop
) -> dict[str, Any]:
    total_steps = int(config.train.steps)
    save_config(config, workdir)
    save_data_stats(config, workdir)  # what evaluation needs of the corpus, so it outlives the corpus
    tx, schedule = optimizer.make_optimizer(
        config.optimizer, total_steps, lr_scales=getattr(objective, "lr_scales", None)
    )
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), keep=config.train.keep_ckpts)
    try:  # an error with an async save in flight: close() lets that save commit (no *-tmp left behind)
        first = sharding_lib.global_batch(next(data), batch_sharding)
        batch_shardings = jax.tree.map(lambda x: x.sharding, first)
        rng = jax.random.key(config.seed)
        init_rng, step_rng = jax.random.split(rng)
        with jax.set_mesh(mesh):
            state, state_shardings = step_lib.init_train_state(objective, tx, init_rng, first, mesh, config.rules)
            restored = ckpt.restore_latest_good(state, state_shardings, log=tqdm.write)
            if restored is not None:
                latest, state, data_state = restored
                if jax.process_index() == 0:
                    tqdm.write(f"resuming from step {latest} of {total_steps} ({ckpt.directory})")
                data = open_data(data_state)
                first = None
            elif hasattr(objective, "warm_start"):  # a new run that starts from other weights (fine-tuning)
                state = objective.warm_start(state, state_shardings, mesh)
            train_step = step_lib.make_train_step(
                objective, tx, schedule, mesh=mesh, rules=config.rules, on_nonfinite=_on_nonfinite(config)
            )
            step_fn = step_lib.jit_train_step(train_step, state_shardings, batch_shardings, mesh)
            start_step = int(jax.device_get(state["step"]))
            end_step = total_steps if max_steps is None else min(total_steps, start_step + max_steps)
            evaluator = None
            if eval_tasks and hasattr(objective, "logits"):  # a classifier (fine-tuning): scored by its logits
                evaluator = classifier_eval.ClassifierEvaluator(objective, config, eval_tasks, mesh)
            elif eval_tasks:
                evaluator = evaluator_lib.ProbeEvaluator(
                    objective, config, eval_tasks, mesh, window=evaluator_lib.probe_window(config), progress=False
                )  # one summary line per evaluation
            summary = _run(
                config,
                workdir,
                objective,
                state,
                step_fn,
                data,
                first,
                batch_sharding,
                step_rng,
                ckpt,
                start_step,
                end_step,
                total_steps,
                evaluator,
                stop,
            )
    finally:
        ckpt.close()
    if (
        evaluator is not None and config.eval.plot and jax.process_index() == 0 and not summary.get("preempted")
    ):  # preempted: exit fast, the next run plots
        summary["curves"] = curves.plot_eval_curves(
            workdir, os.path.join(workdir, CURVES_FILE), title=f"{config.method}: in-training linear probe"
        )
    return summary


def _on_nonfinite(config) -> str:
    return str(config.train.get("on_nonfinite", "stop"))


def _batch_divisor(mesh, config) -> int:
    spec = sharding_lib.batch_sharding(mesh, config.rules).spec
    axes = spec[0] if len(spec) else None
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


class _EvalLog:
    """Runs the in-training evaluations, logs them (`eval/<task>/<metric>`; at step 0 the baselines
    `random_init/<task>/<metric>` and the model-free `logmel_stats/<task>/<metric>`) and keeps
    `<workdir>/eval_best.json`: the best value of each eval metric and its step, over the whole (resumed)
    series, and `<workdir>/eval_last.json`: the full results (per-class AP, ...) of the latest
    evaluation of each series (`eval`, `random_init`, `logmel_stats`)."""

    def __init__(self, evaluator, workdir: str, writer, enabled: bool):
        self.evaluator, self.writer, self.enabled = evaluator, writer, enabled
        self.path = os.path.join(workdir, EVAL_BEST_FILE)
        self.last_path = os.path.join(workdir, EVAL_LAST_FILE)
        self.records = metrics_writer.read_records(workdir) if enabled else []  # already truncated
        self.seconds = 0.0

    def has_baseline(self) -> bool:
        return any(k.startswith("random_init/") for r in self.records for k in r)

    def run(self, step: int, state, prefix: str) -> dict[str, float]:
        scalars, results = self.evaluator.evaluate(state["params"], state["aux"], logmel_stats=prefix == "logmel_stats")
        self.seconds += scalars["seconds"]
        logged = {f"{prefix}/{k}": v for k, v in scalars.items()}
        self.writer.write(step, logged)
        self.records.append({"step": step, **logged})
        if self.enabled:
            self._write_best()
            self._write_last(step, prefix, results)
            shown = ", ".join(f"{k} {v:.3f}" for k, v in scalars.items() if k.endswith(("/mAP", "/top1")))
            tqdm.write(f"{prefix} step {step} ({scalars['seconds']:.0f} s): {shown}")
        return logged

    def _write_last(self, step: int, prefix: str, results: dict) -> None:
        import tensorflow as tf

        last = {}
        if tf.io.gfile.exists(self.last_path):
            with tf.io.gfile.GFile(self.last_path) as f:
                last = json.load(f)
        last[prefix] = {"step": step, "results": results}
        with tf.io.gfile.GFile(self.last_path, "w") as f:
            json.dump(last, f, indent=1, default=float)

    def _write_best(self) -> None:
        import tensorflow as tf

        best: dict[str, dict] = {}
        for r in self.records:
            for k, v in r.items():
                if k.startswith("eval/") and not k.endswith("/seconds") and (k not in best or v > best[k]["value"]):
                    best[k] = {"value": v, "step": r["step"]}
        baselines = {
            prefix: {
                k: v
                for r in self.records
                for k, v in r.items()
                if k.startswith(prefix + "/") and not k.endswith("/seconds")
            }
            for prefix in ("random_init", "logmel_stats")
        }
        with tf.io.gfile.GFile(self.path, "w") as f:
            json.dump({"best": best, **baselines}, f, indent=2)


def _run(
    config,
    workdir,
    objective,
    state,
    step_fn,
    data,
    first,
    batch_sharding,
    step_rng,
    ckpt,
    start_step,
    end_step,
    total_steps,
    evaluator=None,
    stop=None,
):
    """The step loop. Steps are numbered from 1 everywhere (metrics.jsonl, checkpoints, errors): step
    N is the state after N updates. The metrics of each step are fetched one step late (the host does
    not wait for the device), except before a log line, an evaluation or a checkpoint: there the
    step's own metrics are fetched first, so a non-finite or exploded state is caught before it can
    be evaluated or saved."""
    is_host0 = jax.process_index() == 0
    on_nonfinite = _on_nonfinite(config)
    writer = metrics_writer.MetricsWriter(workdir, enabled=is_host0, resume_step=start_step)
    evals = _EvalLog(evaluator, workdir, writer, is_host0) if evaluator is not None else None
    every = int(config.eval.every) if evals is not None else 0
    profiler = op_profile.StepProfiler(
        workdir, config.train.get("profile_start", 0), config.train.get("profile_steps", 3), write=is_host0
    )
    if stop is not None and stop.signalled():  # SIGTERM while compiling / restoring: nothing new to save
        writer.close()
        tqdm.write(
            f"SIGTERM received before step {start_step + 1}: the checkpoint of step {start_step} stands; stopping"
        )
        return {"step": start_step, "metrics": {}, "seconds": 0.0, "workdir": workdir, "preempted": True}
    if evals is not None and start_step == 0 and config.eval.random_init_baseline and not evals.has_baseline():
        evals.run(0, state, "random_init")  # step 0 of a new run: the params are the random init
        evals.run(0, state, "logmel_stats")  # and the model-free baseline
    progress_keys = ("loss",) + tuple(getattr(objective, "progress_keys", ())) + ("grad_norm", "lr", "clips_per_s")
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc=progress_label(config),
        disable=not is_host0,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    pending = None  # (step, device metrics) of the previous step: fetched one step late
    last: dict[str, float] = {}
    skipped = _skipped_so_far(workdir, start_step) if on_nonfinite == "skip" and is_host0 else 0
    t_log, clips_since_log = time.time(), 0
    t_start = time.time()
    step = start_step
    preempted = False

    def fetch():
        nonlocal pending, last, skipped
        last = _fetch(pending, on_nonfinite)
        if last.get("nonfinite"):
            skipped += 1
            tqdm.write(
                f"step {pending[0]}: non-finite loss, gradient or parameters "
                f"(loss {last['loss']}, grad_norm {last['grad_norm']}, param_norm {last['param_norm']}); "
                f"update discarded (config.train.on_nonfinite='skip'), {skipped} so far"
            )
        pending = None

    while step < end_step:
        local = first if first is not None else sharding_lib.global_batch(next(data), batch_sharding)
        first = None
        profiler.before_step(step + 1)
        state, metrics = step_fn(state, local, step_rng)
        profiler.after_step(
            step + 1, metrics, end_step, lambda s=state, b=local: step_fn.lower(s, b, step_rng).compile().as_text()
        )
        clips_since_log += config.data.batch_size
        if pending is not None:
            fetch()
        step += 1
        pending = (step, metrics)
        bar.update(1)
        if step % config.train.log_every == 0 or step == end_step:
            fetch()
            elapsed = time.time() - t_log
            last["clips_per_s"] = clips_since_log / max(elapsed, 1e-9)
            if on_nonfinite == "skip":
                last["nonfinite_skipped"] = float(skipped)
            t_log, clips_since_log = time.time(), 0
            writer.write(step, last)
            bar.set_postfix(_progress_text(last, progress_keys), refresh=False)
        if every and (step % every == 0 or step == total_steps):
            if pending is not None:
                fetch()
            evals.run(step, state, "eval")  # then the save: a checkpoint at this step has its eval line
        preempted = stop.should_stop(step) if stop is not None else False
        if step % config.train.ckpt_every == 0 or step == end_step or preempted:
            if pending is not None:
                fetch()  # this step's loss, gradient and parameters are finite: only then save
            ckpt.save(step, state, data.get_state(), force=True)
        if preempted:
            ckpt.wait()
            tqdm.write(f"SIGTERM received: checkpointed step {step} in {workdir}, stopping")
            break
    if pending is not None:
        fetch()
    profiler.close()
    bar.close()
    ckpt.wait()
    writer.close()
    summary = {
        "step": step,
        "metrics": last,
        "seconds": time.time() - t_start,
        "workdir": workdir,
        "preempted": preempted,
    }
    if on_nonfinite == "skip":
        summary["nonfinite_skipped"] = skipped
    if evals is not None:
        summary["eval_seconds"] = evals.seconds
    return summary


def _skipped_so_far(workdir: str, start_step: int) -> int:
    """The `nonfinite_skipped` count of the last metrics line at or before the resumed step."""
    if start_step == 0:
        return 0
    count = 0
    for record in metrics_writer.read_records(workdir):
        if int(record.get("step", 0)) <= start_step and "nonfinite_skipped" in record:
            count = int(record["nonfinite_skipped"])
    return count


def _fetch(pending, on_nonfinite: str = "stop") -> dict[str, float]:
    step, metrics = pending
    values = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
    bad = values.get("nonfinite", 0.0) or not math.isfinite(values["loss"])
    if bad and on_nonfinite != "skip":
        shown = {k: values[k] for k in ("loss", "grad_norm", "update_norm", "param_norm", "lr") if k in values}
        raise FloatingPointError(
            f"non-finite loss, gradient or parameters at step {step} (numbered as in metrics.jsonl): "
            f"{json.dumps(shown)}. The state of this step was not saved; the last checkpoint holds the "
            "last good state. Lower config.optimizer.lr, or set config.train.on_nonfinite='skip' to "
            "discard such steps (docs/operating.md)."
        )
    return values
