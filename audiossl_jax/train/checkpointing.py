"""Orbax checkpoints of the train state plus the data iterator position, with automatic resume."""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _abstract(state: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


class Checkpointer:
    """Saves `{state, data}` every call to `save`, keeps the last `keep` steps, restores the latest.

    `state` is the sharded train-state pytree (each host writes its own shards); `data` is the
    JSON-serialisable position of the data iterator, so a resumed run sees the same batches.
    """

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = directory if "://" in directory else os.path.abspath(directory)  # gs://... as is
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
        return self._manager.save(step, args=args, force=force)

    def restore(self, step: int, state_like: Any, shardings: Any) -> tuple[Any, dict]:
        """Restores `step` onto `shardings` (any mesh: orbax reshards), returns (state, data_state)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(state_like, shardings)),
                                  data=ocp.args.JsonRestore())
        restored = self._manager.restore(step, args=args)
        return restored["state"], dict(restored["data"] or {})

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
        self._manager.wait_until_finished()
        self._manager.close()
