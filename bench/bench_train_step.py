"""Times one jitted pre-training step (forward + backward + AdamW) of any config on synthetic data.

    .venv/bin/python bench/bench_train_step.py --config configs/wav2vec2_conformer.py:S --batch 4 \
        --frames 1000 [--torch-python /path/to/torch-venv/bin/python]

Prints a table (median step time, clips/s, GFLOP per step from XLA's cost analysis of the unrolled
step, achieved GFLOP/s) and writes bench/results/train_step_<config>.json. With --torch-python it also
runs the PyTorch peer (bench/torch_wav2vec2_conformer.py) on the same shapes, alternating A/B runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from audiossl_jax.objectives import base as objectives  # noqa: E402
from audiossl_jax.parallel import mesh as mesh_lib  # noqa: E402
from audiossl_jax.parallel import sharding as sharding_lib  # noqa: E402
from audiossl_jax.train import optimizer  # noqa: E402
from audiossl_jax.train import state as state_lib  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def load_config(spec: str, overrides: list[str]):
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=False)
    fv(["bench", f"--config={spec}"] + overrides)
    return fv.config


def synthetic_batch(batch: int, frames: int, mel: int, classes: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"features": rng.normal(size=(batch, frames, mel)).astype(np.float32),
            "valid": np.ones((batch, frames), bool),
            "labels": (rng.random((batch, classes)) < 0.2).astype(np.float32)}


def time_jax_step(config, batch_np: dict, steps: int) -> dict:
    objective = objectives.build(config)
    mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
    tx, schedule = optimizer.make_optimizer(config.optimizer, int(config.train.steps))
    with jax.set_mesh(mesh):
        batch = sharding_lib.global_batch(batch_np, sharding_lib.batch_sharding(mesh, config.rules))
        state, shardings = state_lib.init_train_state(objective, tx, jax.random.key(0), batch, mesh, config.rules)
        train_step = state_lib.make_train_step(objective, tx, schedule, mesh=mesh, rules=config.rules)
        step = state_lib.jit_train_step(train_step, shardings, jax.tree.map(lambda x: x.sharding, batch), mesh)
        t0 = time.perf_counter()
        compiled = step.lower(state, batch, jax.random.key(1)).compile()
        compile_s = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch, jax.random.key(i))
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - t0)
    median = statistics.median(times[1:])
    return {"framework": "jax", "jax": jax.__version__, "device": str(jax.devices()[0].device_kind),
            "compile_seconds": compile_s, "step_seconds": times[1:], "median_step_seconds": median,
            "gflop_per_step": flops / 1e9, "achieved_gflops": flops / 1e9 / median,
            "loss": float(metrics["loss"])}


def time_torch_step(torch_python: str, batch: int, frames: int, steps: int, device: str, bf16: bool) -> dict:
    cmd = [torch_python, os.path.join(HERE, "torch_wav2vec2_conformer.py"), "--batch", str(batch),
           "--frames", str(frames), "--steps", str(steps), "--device", device] + (["--bf16"] if bf16 else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/wav2vec2_conformer.py:S")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--mel", type=int, default=64, help="mel bins of the synthetic input")
    p.add_argument("--steps", type=int, default=6, help="timed steps (the first is dropped)")
    p.add_argument("--rounds", type=int, default=2, help="A/B rounds when comparing with PyTorch")
    p.add_argument("--torch-python", default="", help="python of an environment with torch + torchaudio")
    p.add_argument("--out", default="")
    a, overrides = p.parse_known_args()  # the rest: --config.x=y overrides
    config = load_config(a.config, overrides)
    batch_np = synthetic_batch(a.batch, a.frames, a.mel)
    runs = {"jax": [], "pytorch": []}
    for _ in range(a.rounds if a.torch_python else 1):
        runs["jax"].append(time_jax_step(config, batch_np, a.steps))
        if a.torch_python:
            device = "cuda" if jax.default_backend() == "gpu" else "cpu"
            runs["pytorch"].append(time_torch_step(a.torch_python, a.batch, a.frames, a.steps, device,
                                                   config.train.compute_dtype == "bfloat16"))
    result = {"config": a.config, "batch": a.batch, "frames": a.frames, "host": platform.node(),
              "cpu_count": os.cpu_count(), "runs": runs}
    jax_median = statistics.median(t for r in runs["jax"] for t in r["step_seconds"])
    rows = [("jax", jax_median, runs["jax"][0]["gflop_per_step"])]
    if runs["pytorch"]:
        torch_median = statistics.median(t for r in runs["pytorch"] for t in r["step_seconds"])
        rows.append(("pytorch", torch_median, float("nan")))
        result["speedup_vs_pytorch"] = torch_median / jax_median
    print(f"\n{a.config}  batch {a.batch} x {a.frames} frames  ({jax.devices()[0].device_kind})")
    print(f"{'framework':<10} {'median s/step':>14} {'clips/s':>9} {'GFLOP/step':>11} {'GFLOP/s':>9}")
    for name, med, gflop in rows:
        print(f"{name:<10} {med:>14.3f} {a.batch / med:>9.2f} {gflop:>11.1f} {gflop / med:>9.1f}")
    if "speedup_vs_pytorch" in result:
        print(f"speed-up of JAX over PyTorch: {result['speedup_vs_pytorch']:.2f}x")
    out = a.out or os.path.join(HERE, "results", "train_step_" + a.config.split("/")[-1].replace(".py", "")
                                .replace(":", "_") + ".json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
