"""Profiles one config's jitted train step: where the time goes, per op category and per module.

    .venv/bin/python bench/profile_step.py --config configs/wav2vec2_conformer.py:S --batch 4 --frames 1000
    .venv/bin/python bench/profile_step.py --config configs/eat.py:local --batch 8 --frames 400 --mel 128

Compiles the step `audiossl pretrain` runs (bench/bench_train_step.py, synthetic data), runs it
`--warmup` times, then `--steps` times under `jax.profiler.trace`, and joins the trace's op times
with the compiled HLO (`audiossl_jax/train/op_profile.py`; a training run does the same with
`--config.train.profile_start=N`). Prints op time per step (summed over threads, so on
2 busy threads it is about twice the wall time) by category (matmul, convolution, elementwise, ...),
by forward / backward pass and module scope (`--depth` components of the JAX name stack, block
indices merged), and the `--top` ops; writes the tables as JSON (`--out`, default
bench/results/profile_<config>.json) and keeps the trace under `--trace-dir` for Perfetto /
TensorBoard when given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_train_step as bts  # noqa: E402  (bench/bench_train_step.py)

from audiossl_jax.train import op_profile  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def profile(config, batch_np: dict, steps: int, warmup: int, trace_dir: str, depth: int, top: int) -> dict:
    """op_profile.summarise of `steps` profiled runs of the config's compiled step, and their wall times."""
    compiled, _, state, batch, mesh, _ = bts.compile_train_step(config, batch_np)
    with jax.set_mesh(mesh):
        for i in range(warmup):
            state, metrics = compiled(state, batch, jax.random.key(i))
            jax.block_until_ready(metrics["loss"])
        wall = []
        cpu0 = time.process_time()
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for i in range(steps):
                t0 = time.perf_counter()
                state, metrics = compiled(state, batch, jax.random.key(warmup + i))
                jax.block_until_ready(metrics["loss"])
                wall.append(time.perf_counter() - t0)
            cpu_seconds = time.process_time() - cpu0
    trace = op_profile.newest_trace(trace_dir)
    summary = op_profile.add_cpu_time(
        op_profile.profile_summary(trace, compiled.as_text(), steps, depth, top), cpu_seconds, steps
    )
    return {**summary, "wall_seconds": wall, "trace": trace}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bts.add_step_arguments(p)
    p.add_argument("--steps", type=int, default=3, help="profiled steps")
    p.add_argument("--warmup", type=int, default=2, help="steps run before profiling")
    p.add_argument("--depth", type=int, default=6, help="name-stack components per scope")
    p.add_argument("--top", type=int, default=25, help="ops listed")
    p.add_argument("--scopes", type=int, default=25, help="scopes listed")
    p.add_argument("--trace-dir", default="", help="keep the trace here (default: a temporary folder)")
    p.add_argument("--out", default="")
    a, config, overrides = bts.parse_config(p)
    if a.steps < 1:
        p.error("--steps must be >= 1")
    batch_np = bts.synthetic_batch(a.batch, a.frames, a.mel)
    with tempfile.TemporaryDirectory() as tmp:
        summary = profile(config, batch_np, a.steps, a.warmup, a.trace_dir or tmp, a.depth, a.top)
    trace, wall_seconds = summary.pop("trace"), summary.pop("wall_seconds")
    wall = sorted(wall_seconds)[len(wall_seconds) // 2]
    print(f"\n{a.config}  batch {a.batch} x {a.frames} x {a.mel}  ({jax.devices()[0].device_kind})")
    print(f"median wall time per profiled step {wall:.3f} s; load average {os.getloadavg()[0]:.2f}")
    print(op_profile.format_summary(summary, a.scopes))
    out = a.out or os.path.join(HERE, "results", f"profile_{bts.result_name(a.config, overrides)}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    result = {
        **bts.step_header(a, overrides),
        "steps": a.steps,
        "wall_seconds": wall_seconds,
        "jax": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
        **summary,
    }
    if a.trace_dir:
        result["trace"] = trace
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
