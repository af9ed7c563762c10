"""Orbax checkpoints of the train state plus the data iterator position, with automatic resume.

A step that fails to restore (a truncated or deleted array file, a deleted `_METADATA`, a torn
`data/metadata`, a missing `state/`) is moved aside to `<step>.corrupt-<time>` - a name orbax does not
read as a step - and the next older step is restored instead. Nothing is moved unless an older step
restores: when none does (a config that no longer matches the saved shapes, say), the restart fails
with one message naming every step and its error, and every folder stays where it was.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp


def _abstract(state: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


_ERROR_LOG = "restore_error.log"


@contextlib.contextmanager
def _captured_stderr():
    """Everything written to file descriptor 2 meanwhile (Python, C++, threads) goes to
    `box["text"]` instead: a failed orbax restore prints hundreds of lines of TensorStore specs and
    'Event loop is closed' tracebacks from its orphaned reads."""
    box = {"text": ""}
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield box
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode(errors="replace")


def _settle(seconds: float = 0.5) -> None:
    """Lets a failed restore's still-running reads finish and their leftovers be collected; the
    leftovers collected later (orbax's abandoned read coroutines) are silenced by `_quiet_leftovers`."""
    _quiet_leftovers()
    time.sleep(seconds)
    gc.collect()


_LEFTOVERS = ("_read_array_index_and_device_put", "Event loop is closed")


def _quiet_leftovers() -> None:
    """After a failed restore, orbax's abandoned read coroutines raise again when garbage-collected
    ('Exception ignored in: <coroutine _read_array_index_and_device_put>', each with a TensorStore
    spec of ~60 lines). Drop exactly those from sys.unraisablehook; everything else passes on."""
    previous = sys.unraisablehook
    if getattr(previous, "_audiossl_quiet", False):
        return

    def hook(unraisable):
        what = f"{unraisable.object!r} {unraisable.exc_value!r}"
        if not any(marker in what for marker in _LEFTOVERS):
            previous(unraisable)

    hook._audiossl_quiet = True
    sys.unraisablehook = hook


def _all_processes(ok: bool) -> bool:
    """Whether every process's restore of a step succeeded (all hosts fall back together)."""
    import jax

    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def _barrier(name: str) -> None:
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class Checkpointer:
    """Saves `{state, data}` every call to `save`, keeps the last `keep` steps, restores the latest.

    `state` is the sharded train-state pytree (each host writes its own shards); `data` is the
    JSON-serialisable position of the data iterator, so a resumed run sees the same batches.
    """

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = directory if "://" in directory else os.path.abspath(directory)  # gs://... as is
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
        return self._manager.save(step, args=args, force=force)

    def restore(self, step: int, state_like: Any, shardings: Any) -> tuple[Any, dict]:
        """Restores `step` onto `shardings` (any mesh: orbax reshards), returns (state, data_state)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state_like, shardings)), data=ocp.args.JsonRestore()
        )
        restored = self._manager.restore(step, args=args)
        return restored["state"], dict(restored["data"] or {})

    def restore_latest_good(
        self, state_like: Any, shardings: Any, log: Callable[[str], None] = print
    ) -> tuple[int, Any, dict] | None:
        """(step, state, data_state) of the newest step that restores, or None if there is no step.

        Newer steps that failed are moved aside (renamed, never deleted) once an older one restored,
        with one line naming both paths each; if no step restores, RuntimeError names them all."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        failed: list[tuple[int, str, str]] = []  # (step, one-line reason, everything printed meanwhile)
        for step in steps:
            with _captured_stderr() as printed:
                try:
                    state, data_state = self.restore(step, state_like, shardings)
                    error = None
                except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for a bad step
                    error = e
                    _settle()  # the failed restore's orphaned reads print their errors now, captured
            if error is None and not _all_processes(True):
                error = RuntimeError("another process could not restore this step")
            elif error is not None:
                _all_processes(False)
            if error is None:
                sys.stderr.write(printed["text"])  # a good restore's warnings, as they were
                break
            text = str(error).split(" See full TensorStore details")[0]
            failed.append(
                (
                    step,
                    f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:300],
                    printed["text"] + repr(error),
                )
            )
        else:
            if failed:
                sys.stderr.write(failed[0][2] + "\n")
            step = None
        if step is not None:
            for bad, reason, details in failed:
                moved = self._move_aside(bad, details)
                log(
                    f"checkpoint step {bad} does not restore ({reason}); moved {self.step_path(bad)} "
                    f"-> {moved} (details in its {_ERROR_LOG}); resuming from step {step} instead"
                )
            if failed:
                _barrier("audiossl_checkpoint_moved_aside")  # process 0 renamed: now every process re-lists
                self._manager.reload()
            return step, state, data_state
        if failed:
            listing = "; ".join(f"step {s} ({self.step_path(s)}): {r}" for s, r, _ in failed)
            raise RuntimeError(
                f"no checkpoint in {self.directory} restores with this config: {listing}. If the config "
                "changed (model shapes), use another --workdir; if the files are damaged, move the bad "
                "step folders out of the checkpoints folder. Nothing was moved or deleted."
            )
        return None

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _move_aside(self, step: int, details: str = "") -> str:
        """Renames the step folder to `<step>.corrupt-<UTC time>` (process 0 only) and writes the
        restore's error output into it; returns the new path."""
        import jax
        import tensorflow as tf

        target = f"{self.step_path(step)}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        if jax.process_index() == 0:
            tf.io.gfile.rename(self.step_path(step), target, overwrite=False)
            with tf.io.gfile.GFile(os.path.join(target, _ERROR_LOG), "w") as f:
                f.write(details)
        return target

    def restore_state_only(self, step: int, state_like: Any, shardings: Any) -> Any:
        args = ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(state_like, shardings)))
        return self._manager.restore(step, args=args)["state"]

    def read(self, step: int) -> tuple[Any, dict]:
        """Restores `step` without a target (arrays as saved, on the default device): for inspection."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore())
        restored = self._manager.restore(step, args=args)
        return restored["state"], dict(restored["data"] or {})

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for an in-flight async save to commit, then shuts the manager down (also on an error
        path: a save started from a checked state is finished, so no `<step>.orbax-checkpoint-tmp`
        folder is left and no background thread outlives the interpreter)."""
        try:
            self._manager.wait_until_finished()
        finally:
            self._manager.close()
