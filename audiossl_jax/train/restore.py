"""Restoring a run's `params` and `aux` without its optimizer state or training data."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from audiossl_jax.objectives.protocol import Objective
from audiossl_jax.parallel import sharding as sharding_lib
from audiossl_jax.train import checkpointing, run_files


def latest_checkpoint(workdir: str, *, random_flag: str) -> tuple[int, str]:
    """(step, its `state` directory) of the latest checkpoint of `workdir`; FileNotFoundError naming
    the folder and `random_flag` (the command's flag for a random init) when there is none."""
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, run_files.CHECKPOINT_DIR), async_save=False)
    try:
        step = ckpt.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"no checkpoint in {ckpt.directory}: run `audiossl pretrain` first or pass {random_flag}"
            )
        return int(step), os.path.join(ckpt.step_path(step), "state")
    finally:
        ckpt.close()


def restore_variables(
    config: ml_collections.ConfigDict,
    workdir: str,
    objective: Objective,
    mesh: jax.sharding.Mesh,
    mel_bins: int,
    num_classes: int,
    *,
    random_init: bool = False,
) -> tuple[Any, Any, int]:
    """(params, aux, step): `params` and `aux` of the latest checkpoint of `workdir` restored onto
    their shardings with nothing else (no optimizer state, no data), or the random init of the run's
    seed (the same key `audiossl pretrain` initialises with) when `random_init`."""
    b, t = int(config.data.batch_size), int(config.data.crop_frames)
    batch = {
        "features": jax.ShapeDtypeStruct((b, t, mel_bins), jnp.float32),
        "valid": jax.ShapeDtypeStruct((b, t), jnp.bool_),
        "labels": jax.ShapeDtypeStruct((b, max(num_classes, 1)), jnp.float32),
    }
    init_rng, _ = jax.random.split(jax.random.key(config.seed))

    def init(rng):
        variables = objective.init(rng, {k: jnp.zeros(v.shape, v.dtype) for k, v in batch.items()})
        return {"params": variables["params"], "aux": variables.get("aux", {})}

    boxed = jax.eval_shape(init, init_rng)
    shardings = sharding_lib.logical_shardings(boxed, mesh, config.rules)
    if random_init:

        def unboxed_init(rng):
            with sharding_lib.activation_rules(mesh, config.rules):
                return sharding_lib.unbox(init(rng))

        variables = jax.jit(unboxed_init, out_shardings=shardings)(init_rng)
        return variables["params"], variables["aux"], 0
    step, state_dir = latest_checkpoint(workdir, random_flag="--random-init")
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), sharding_lib.unbox(boxed), shardings
    )
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            state_dir, args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True)
        )
    return restored["params"], restored["aux"], int(step)
