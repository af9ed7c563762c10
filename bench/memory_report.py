"""Per-device memory of one pre-training step, from XLA's compiled memory analysis, on 8 fake devices.

    .venv/bin/python bench/memory_report.py                      # all models x meshes (~10-20 min on 2 cores)
    .venv/bin/python bench/memory_report.py --models wav2vec2-S --meshes 8,1,1 --per-device-batch 2

For each method's full-size configs (wav2vec2 conformer S/L, EAT base/large, SLICER paper) and mesh
(8,1,1) data parallel, (1,8,1) FSDP, (2,2,2) data x FSDP x tensor, the step is lowered on abstract
inputs (nothing is allocated) and compiled for XLA:CPU; per device it reports
  params / optimizer  bytes of this device's shards of the params (+ aux: EMA teacher, queue) and of
                      the Adam moments, from the shardings the logical rules give;
  temp                XLA's temp buffers (activations kept for the backward pass + workspace);
  peak                arguments + outputs - donated aliases + temp (what must fit on one device);
  TFLOP/step          the global step's FLOPs from the unpartitioned lowering's cost analysis
                      (configs run the layers as a Python loop, so no scan body is counted once).
XLA:CPU fuses differently from TPU/GPU, so temp is an estimate of the activation footprint; the param
and optimizer columns are exact. Writes bench/results/memory_report.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

NUM_DEVICES = 8
if "jax" not in sys.modules:  # fake devices must be configured before JAX initialises
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={NUM_DEVICES}"
    ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from audiossl_jax import config_loader  # noqa: E402
from audiossl_jax.objectives import registry as objectives  # noqa: E402
from audiossl_jax.parallel import mesh as mesh_lib  # noqa: E402
from audiossl_jax.parallel import sharding as sharding_lib  # noqa: E402
from audiossl_jax.train import optimizer  # noqa: E402
from audiossl_jax.train import step as step_lib  # noqa: E402

# name -> (config file, variant, mel bins of the features it is trained on)
MODELS = {
    "wav2vec2-S": ("configs/wav2vec2_conformer.py", "S", 64),
    "wav2vec2-L": ("configs/wav2vec2_conformer.py", "L", 64),
    "EAT-base": ("configs/eat.py", "base", 128),
    "EAT-large": ("configs/eat.py", "large", 128),
    "SLICER-paper": ("configs/slicer.py", "paper", 64),
}
MESHES = ("8,1,1", "1,8,1", "2,2,2")
RESULTS = os.path.join(REPO, "bench", "results", "memory_report.json")


def _nbytes(shape, dtype) -> int:
    return int(math.prod(shape)) * np.dtype(dtype).itemsize


def _per_device_bytes(abstract_tree, sharding_tree) -> int:
    """Bytes one device holds of a tree of abstract arrays laid out by `sharding_tree`."""
    leaves = jax.tree.leaves(abstract_tree)
    shardings = jax.tree.leaves(sharding_tree, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
    return sum(_nbytes(s.shard_shape(x.shape), x.dtype) for x, s in zip(leaves, shardings))


def measure(name: str, mesh_text: str, per_device_batch: int) -> dict:
    path, variant, mel = MODELS[name]
    config = config_loader.load_config(f"{os.path.join(REPO, path)}:{variant}")
    shape = tuple(int(s) for s in mesh_text.split(","))
    mesh = mesh_lib.make_mesh(shape, config.mesh.axes)
    batch_sharding = sharding_lib.batch_sharding(mesh, config.rules)
    batch_shards = math.prod(mesh.shape[a] for a in jax.tree.leaves(tuple(batch_sharding.spec)) if a)
    global_batch = per_device_batch * batch_shards
    frames = int(config.data.crop_frames)
    batch = {
        "features": jax.ShapeDtypeStruct((global_batch, frames, mel), jnp.float32, sharding=batch_sharding),
        "valid": jax.ShapeDtypeStruct((global_batch, frames), jnp.bool_, sharding=batch_sharding),
        "labels": jax.ShapeDtypeStruct((global_batch, 527), jnp.float32, sharding=batch_sharding),
    }
    objective = objectives.build(config)
    tx, schedule = optimizer.make_optimizer(config.optimizer, int(config.train.steps))
    rng = jax.random.key(0)
    t0 = time.time()
    with jax.set_mesh(mesh):
        state, shardings = step_lib.abstract_train_state(objective, tx, rng, batch, mesh, config.rules)
        batch_shardings = jax.tree.map(lambda x: x.sharding, batch)
        train_step = step_lib.make_train_step(objective, tx, schedule, mesh=mesh, rules=config.rules)
        step = step_lib.jit_train_step(train_step, shardings, batch_shardings, mesh)
        lowered = step.lower(
            state, batch, jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=sharding_lib.replicated(mesh))
        )
        cost = lowered.cost_analysis() or {}
        compiled = lowered.compile()
    memory = compiled.memory_analysis()
    params = _per_device_bytes(state["params"], shardings["params"]) + _per_device_bytes(state["aux"], shardings["aux"])
    opt = _per_device_bytes(state["opt_state"], shardings["opt_state"])
    num_params = sum(int(math.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    peak = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )
    return {
        "model": name,
        "config": f"{path}:{variant}",
        "mesh": mesh_text,
        "global_batch": global_batch,
        "per_device_batch": per_device_batch,
        "frames": frames,
        "mel": mel,
        "num_params": num_params,
        "params_bytes": params,
        "optimizer_bytes": opt,
        "temp_bytes": int(memory.temp_size_in_bytes),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes),
        "peak_bytes": int(peak),
        "flops_per_step": float(cost.get("flops", float("nan"))),
        "compile_seconds": time.time() - t0,
    }


def format_table(rows: list[dict]) -> str:
    gib = 2**30
    header = (
        "| model | mesh | params (M) | batch/device | params+aux GiB | optimizer GiB | temp GiB "
        "| peak GiB | TFLOP/step | TFLOP/clip |"
    )
    lines = [header, "|" + " --- |" * 10]
    for r in rows:
        lines.append(
            f"| {r['model']} | ({r['mesh']}) | {r['num_params'] / 1e6:.1f} | {r['per_device_batch']} "
            f"| {r['params_bytes'] / gib:.3f} | {r['optimizer_bytes'] / gib:.3f} | {r['temp_bytes'] / gib:.3f} "
            f"| {r['peak_bytes'] / gib:.3f} | {r['flops_per_step'] / 1e12:.2f} "
            f"| {r['flops_per_step'] / 1e12 / r['global_batch']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--meshes", nargs="+", default=list(MESHES))
    parser.add_argument("--per-device-batch", type=int, default=2, help="clips per batch shard")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the rows of other models/meshes already in --out (run models one at a time)",
    )
    args = parser.parse_args(argv)
    if jax.device_count() != NUM_DEVICES:
        raise SystemExit(
            f"memory_report.py needs {NUM_DEVICES} devices, JAX has {jax.device_count()}: run it as a "
            "script (it sets --xla_force_host_platform_device_count before importing JAX)"
        )
    rows = []
    for name in args.models:
        for mesh_text in args.meshes:
            row = measure(name, mesh_text, args.per_device_batch)
            rows.append(row)
            print(
                f"{name} ({mesh_text}): peak {row['peak_bytes'] / 2**30:.3f} GiB/device, "
                f"compiled in {row['compile_seconds']:.0f} s",
                flush=True,
            )
    if args.update and os.path.exists(args.out):
        with open(args.out) as f:
            new = {(r["model"], r["mesh"]) for r in rows}
            rows = [r for r in json.load(f)["rows"] if (r["model"], r["mesh"]) not in new] + rows
        order = {name: i for i, name in enumerate(MODELS)}
        rows.sort(
            key=lambda r: (
                order.get(r["model"], len(order)),
                MESHES.index(r["mesh"]) if r["mesh"] in MESHES else len(MESHES),
            )
        )
    print("\n" + format_table(rows))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "devices": NUM_DEVICES,
                "backend": jax.default_backend(),
                "jax": jax.__version__,
                "machine": platform.machine(),
                "rows": rows,
            },
            f,
            indent=2,
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
