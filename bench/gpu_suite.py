"""The GPU set in one command: each method's real jitted train step at its paper size, bf16, with MFU.

    bash bench/run_gpu_suite.sh                       # on a lent H100/H200: writes $OUT or bench/results/gpu
    python3 bench/gpu_suite.py [--out DIR] [--budget-s 480] [--methods eat,wav2vec2,slicer]
    .venv/bin/python bench/gpu_suite.py --smoke       # the same code path on CPU, tiny configs (seconds)
    .venv/bin/python bench/gpu_suite.py --dry-run     # paper sizes traced + lowered only (CPU, ~15 s)

For each method (EAT base, wav2vec 2.0 Conformer S, SLICER paper; batch sizes in METHODS):
* compile time of the train step that `audiossl pretrain` runs (bench/bench_train_step.py
  `time_jax_step`, synthetic batch already on the device), then --warmup steps and --steps timed
  steps, each blocked on (median, min, max);
* FLOPs per step from XLA's cost analysis of the compiled step (bench/mfu.py: the layers are traced
  unrolled, `model.scan=False`, since a scan body is counted once; the unoptimised lowering is a
  cross-check and the fallback where the backend leaves library calls out of its count);
* achieved FLOP/s and MFU against the best FLOP/s of a jitted N^3 matmul in the same dtype
  (--peak-n, default 8192), measured in the same run by every method's process;
* peak memory: the device allocator's `peak_bytes_in_use` (GPU/TPU; each method runs in its own
  process, so it is that method's), else XLA's compiled memory analysis;
* the input pipeline (`audiossl_jax.data.pipeline.train_iterator` on synthetic shards of the
  method's clip shape, host CPU) in clips/s against the step's appetite (batch / step time). It
  needs tensorflow; without it the row says so and gives the host CPU cores that the appetite would
  need at the per-CPU-second rate of bench/results/bench_pipeline.json.

Compute dtype: `--dtype` sets `config.train.compute_dtype` (train/precision.py `compute_dtype`):
activations and matmuls in bf16, parameters and optimizer state in float32.

Each method runs in a subprocess (one crash or OOM loses one row) under a global time budget
(--budget-s); a method that would start with less than --min-method-s left is skipped, and a
running one is stopped when the budget ends. Writes DIR/gpu_suite.json and DIR/gpu_suite.md
(rows for bench/RESULTS.md) and prints the rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (REPO, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)


@dataclasses.dataclass(frozen=True)
class Method:
    config: str  # config file:variant at paper size
    batch: int  # clips per step on one GPU
    frames: int  # frames per training crop
    mel: int
    clip_frames: int  # frames of a stored clip (the pipeline crops `frames` from it)
    why: str  # why this batch
    tiny_config: str  # --variant tiny: same code path, seconds on CPU
    tiny_batch: int
    tiny_frames: int
    tiny_overrides: tuple[str, ...] = ()


METHODS = {
    "eat": Method(
        "configs/eat.py:base",
        12,
        1024,
        128,
        1024,
        "the reference's per-GPU batch (4 GPUs x 12 = 48 per update), 16 clones each",
        "configs/eat.py:tiny",
        2,
        64,
        ("model.depth=1", "objective.average_top_k_layers=1", "model.decoder_layers=1"),
    ),
    "wav2vec2": Method(
        "configs/wav2vec2_conformer.py:S",
        64,
        1000,
        64,
        1000,
        "10 s crops; ~0.3 GiB of f32 activations per clip (bench/RESULTS.md memory table), well inside 80 GB",
        "configs/wav2vec2_conformer.py:tiny",
        2,
        64,
        ("model.num_layers=1",),
    ),
    "slicer": Method(
        "configs/slicer.py:paper",
        512,
        96,
        64,
        1000,
        "the paper's batch (LAPE: 128 x 4 GPUs) on one GPU; 6.7 GiB peak measured on an H100",
        "configs/slicer.py:tiny",
        4,
        32,
    ),
}
DEFAULT_ORDER = ("eat", "wav2vec2", "slicer")  # EAT first: its MFU is the goal (>= 45% on H100/H200)
PIPELINE_REFERENCE = os.path.join(HERE, "results", "bench_pipeline.json")


def method_setup(name: str, args) -> dict:
    """Config spec, overrides and shapes of one method for this run."""
    m = METHODS[name]
    tiny = args.variant == "tiny"
    overrides = [f"train.compute_dtype={args.dtype}"]  # the configs keep model.scan=False (mfu.assert_unrolled)
    overrides += list(m.tiny_overrides) if tiny else []
    overrides += [o.split(":", 1)[1] for o in args.override if o.split(":", 1)[0] == name]
    batch = dict(b.split("=") for b in args.batch).get(name)
    return {
        "config": m.tiny_config if tiny else m.config,
        "overrides": overrides,
        "batch": int(batch) if batch else (m.tiny_batch if tiny else m.batch),
        "batch_note": "--batch" if batch else ("tiny" if tiny else m.why),
        "frames": m.tiny_frames if tiny else m.frames,
        "mel": m.mel,
        "clip_frames": m.tiny_frames if tiny else m.clip_frames,
    }


# ---------------------------------------------------------------------------------------------- worker


def pipeline_rate(config, setup: dict, clips: int, seconds: float) -> dict:
    """clips/s of the training iterator on synthetic shards of this method's clip shape (host CPU)."""
    if importlib.util.find_spec("tensorflow") is None:
        return {"skipped": "tensorflow is not installed here"}
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # leave the accelerator to JAX
    import bench_pipeline

    from audiossl_jax.data import pipeline

    tmp = tempfile.mkdtemp(prefix="gpu_suite_pipeline_")
    try:
        bench_pipeline.write_synthetic(tmp, clips, frames=setup["clip_frames"], mel=setup["mel"], shards_=min(8, clips))
        it = pipeline.train_iterator(
            tmp,
            batch_size=setup["batch"],
            crop_frames=setup["frames"],
            seed=0,
            shuffle_buffer=min(int(config.data.shuffle_buffer), clips),
            **pipeline.normalization_kwargs(config.data),
        )
        wall, cpu = bench_pipeline.rate(it, setup["batch"], seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "clips_per_s": wall,
        "clips_per_cpu_s": cpu,
        "clips": clips,
        "seconds": seconds,
        "clip_shape": [setup["clip_frames"], setup["mel"]],
        "host_cpu_count": os.cpu_count(),
    }


def run_method(name: str, args) -> dict:
    """One method: compile, warm up, timed steps, FLOPs, memory, matmul peak, input pipeline."""
    import bench_train_step
    import jax
    import mfu as mfu_lib
    import numpy as np

    from audiossl_jax import config_loader

    setup = method_setup(name, args)
    config = config_loader.load_config(setup["config"], setup["overrides"])
    batch_np = bench_train_step.synthetic_batch(setup["batch"], setup["frames"], setup["mel"])
    step = bench_train_step.time_jax_step(config, batch_np, args.warmup + args.steps, warmup=args.warmup)
    peak = mfu_lib.matmul_peak(args.dtype, args.peak_n, reps=args.peak_reps)
    pipe = (
        pipeline_rate(config, setup, args.pipeline_clips, args.pipeline_seconds)
        if args.pipeline_seconds > 0
        else {"skipped": "--pipeline-seconds 0"}
    )
    versions = {"jax": jax.__version__, "numpy": np.__version__}
    for mod in ("jaxlib", "flax", "optax"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = None
    return {
        "status": "ok",
        **setup,
        "method": name,
        "step": step,
        "matmul_peak": peak,
        "pipeline": pipe,
        "versions": versions,
        "device_count": jax.device_count(),
    }


def lower_method(name: str, args) -> dict:
    """--dry-run: trace and lower one method's step at this run's size from an abstract state (no
    parameters allocated, nothing compiled or run): checks that the config, batch and dtype trace, and
    gives the lowered step's FLOPs (XLA cost analysis, unoptimised) and matmul dtypes."""
    import bench_train_step
    import jax
    import mfu as mfu_lib

    from audiossl_jax import config_loader
    from audiossl_jax.objectives import registry as objectives
    from audiossl_jax.parallel import mesh as mesh_lib
    from audiossl_jax.parallel import sharding as sharding_lib
    from audiossl_jax.train import optimizer
    from audiossl_jax.train import step as step_lib

    setup = method_setup(name, args)
    config = config_loader.load_config(setup["config"], setup["overrides"])
    mfu_lib.assert_unrolled(config)
    objective = objectives.build(config)
    mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
    tx, schedule = optimizer.make_optimizer(config.optimizer, int(config.train.steps))
    batch_np = bench_train_step.synthetic_batch(setup["batch"], setup["frames"], setup["mel"])
    with jax.set_mesh(mesh):
        batch = sharding_lib.global_batch(batch_np, sharding_lib.batch_sharding(mesh, config.rules))
        abstract, shardings = step_lib.abstract_train_state(objective, tx, jax.random.key(0), batch, mesh, config.rules)
        train_step = step_lib.make_train_step(objective, tx, schedule, mesh=mesh, rules=config.rules)
        step = step_lib.jit_train_step(train_step, shardings, jax.tree.map(lambda x: x.sharding, batch), mesh)
        t0 = time.perf_counter()
        lowered = step.lower(abstract, batch, jax.random.key(1))
        lower_s = time.perf_counter() - t0
    flops = mfu_lib.step_flops(lowered, None)["flops_lowered"]
    params = sum(int(x.size) for x in jax.tree.leaves(abstract["params"]))
    return {
        "status": "lowered",
        **setup,
        "method": name,
        "lower_seconds": lower_s,
        "params": params,
        "gflop_per_step_lowered": flops / 1e9,
        "gflop_per_clip_lowered": flops / 1e9 / setup["batch"],
        "matmul_dtypes": mfu_lib.matmul_dtypes(lowered),
    }


def _worker_main(args) -> None:
    try:
        result = run_method(args.worker, args)
    except Exception as e:  # noqa: BLE001 - the parent records it
        result = {
            "status": "error",
            "method": args.worker,
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc()[-4000:],
        }
    with open(args.result, "w") as f:
        json.dump(result, f, indent=1, default=str)


# ---------------------------------------------------------------------------------------------- parent


def _worker_argv(name: str, args, result_path: str) -> list[str]:
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        name,
        "--result",
        result_path,
        "--variant",
        args.variant,
        "--dtype",
        args.dtype,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--peak-n",
        str(args.peak_n),
        "--peak-reps",
        str(args.peak_reps),
        "--pipeline-clips",
        str(args.pipeline_clips),
        "--pipeline-seconds",
        str(args.pipeline_seconds),
    ]
    for b in args.batch:
        argv += ["--batch", b]
    for o in args.override:
        argv += ["--override", o]
    return argv


def run_isolated(name: str, args, timeout_s: float) -> dict:
    """run_method in a fresh process (own device memory, own peak_bytes_in_use), killed at timeout_s."""
    fd, path = tempfile.mkstemp(prefix=f"gpu_suite_{name}_", suffix=".json")
    os.close(fd)
    try:
        proc = subprocess.run(
            _worker_argv(name, args, path), capture_output=True, text=True, timeout=timeout_s, cwd=REPO
        )
        log_tail = (proc.stdout + proc.stderr)[-3000:]
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, json.JSONDecodeError):
            result = {
                "status": "error",
                "method": name,
                "error": f"worker exited {proc.returncode} without a result (crash or out of memory?)",
            }
        if result.get("status") != "ok" or proc.returncode:
            result["log_tail"] = log_tail
        return result
    except subprocess.TimeoutExpired:
        return {
            "status": "timeout",
            "method": name,
            "error": f"stopped after {timeout_s:.0f} s: the suite's time budget ran out",
        }
    finally:
        os.unlink(path)


def summarise(result: dict, peak_flops: float) -> dict:
    """The row's figures from one method's result and the suite's matmul peak."""
    import mfu as mfu_lib

    s = result["step"]
    med = s["median_step_seconds"]
    flops = s["gflop_per_step"] * 1e9
    appetite = result["batch"] / med
    mem = s.get("memory", {})
    if "device_peak_bytes_in_use" in mem:
        peak_mem, mem_source = mem["device_peak_bytes_in_use"], "device peak_bytes_in_use"
    else:
        peak_mem, mem_source = mem.get("compiled_peak_bytes", float("nan")), "XLA compiled memory analysis"
    row = {
        "median_step_s": med,
        "min_step_s": s["min_step_seconds"],
        "max_step_s": s["max_step_seconds"],
        "clips_per_s": appetite,
        "gflop_per_step": s["gflop_per_step"],
        "flops_source": s["flops_source"],
        "achieved_tflops": flops / med / 1e12,
        "peak_tflops": peak_flops / 1e12,
        "mfu": mfu_lib.mfu(flops, med, peak_flops),
        "compile_s": s["compile_seconds"],
        "peak_memory_gib": peak_mem / 2**30,
        "memory_source": mem_source,
        "appetite_clips_per_s": appetite,
    }
    pipe = result.get("pipeline", {})
    if "clips_per_s" in pipe:
        row["pipeline_clips_per_s"] = pipe["clips_per_s"]
        row["pipeline_over_appetite"] = pipe["clips_per_s"] / appetite
        row["host_cores_to_feed"] = appetite / pipe["clips_per_cpu_s"]
    else:
        ref = _pipeline_reference()
        if ref:
            row["host_cores_to_feed"] = appetite / ref
            row["host_cores_to_feed_source"] = (
                f"{ref:.0f} clips per CPU-second, 1000 x 128 clips, bench/results/bench_pipeline.json (CPU dev host)"
            )
    return row


def _pipeline_reference() -> float | None:
    try:
        with open(PIPELINE_REFERENCE) as f:
            rows = json.load(f)["rows"]
        return float(next(r["clips_per_cpu_s"] for r in rows if r["iterator"].startswith("train_iterator")))
    except (OSError, KeyError, StopIteration, ValueError):
        return None


TABLE_HEADER = [
    "| method | config | batch x frames x mel | dtype | device | compile s | ms/step (min-max) | "
    "clips/s | GFLOP/step | TFLOP/s | MFU | peak mem GiB | pipeline clips/s (x appetite) |",
    "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]


def markdown_row(name: str, result: dict, dtype: str) -> str:
    if result.get("status") != "ok":
        reason = result.get("reason") or result.get("error", "")
        return (
            f"| {name} | {result['config']} | | {dtype} | | | {result['status']}: "
            f"{reason.splitlines()[0][:120] if reason else ''} | | | | | | |"
        )
    r = result["summary"]
    if "pipeline_clips_per_s" in r:
        pipe = f"{r['pipeline_clips_per_s']:,.0f} ({r['pipeline_over_appetite']:.1f}x)"
    elif "host_cores_to_feed" in r:
        pipe = f"not run (no tensorflow); ~{r['host_cores_to_feed']:.1f} CPU cores to feed"
    else:
        pipe = "not run"
    flops_note = "" if r["flops_source"] == "compiled" else " (lowered)"
    return (
        f"| {name} | {result['config']} | {result['batch']} x {result['frames']} x {result['mel']} | {dtype} | "
        f"{result['step']['device']} | {r['compile_s']:.1f} | {1e3 * r['median_step_s']:.1f} "
        f"({1e3 * r['min_step_s']:.1f}-{1e3 * r['max_step_s']:.1f}) | {r['clips_per_s']:,.1f} | "
        f"{_num(r['gflop_per_step'])}{flops_note} | {r['achieved_tflops']:.3g} | {r['mfu']:.1%} | "
        f"{r['peak_memory_gib']:.3g} | {pipe} |"
    )


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _gpu_info() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def run_suite(args) -> dict:
    start = time.monotonic()
    results: dict[str, dict] = {}
    for name in args.methods:
        left = args.budget_s - (time.monotonic() - start)
        if left < args.min_method_s:
            results[name] = {
                "status": "skipped",
                "method": name,
                "reason": f"time budget: {max(left, 0):.0f} s left of {args.budget_s:.0f} s "
                f"(< --min-method-s {args.min_method_s:.0f})",
            }
        elif args.in_process:
            print(f"[gpu_suite] {name}: starting, {left:.0f} s of the budget left", flush=True)
            try:
                results[name] = run_method(name, args)
            except Exception as e:  # noqa: BLE001 - one method's failure must not lose the others' rows
                results[name] = {
                    "status": "error",
                    "method": name,
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()[-4000:],
                }
                traceback.print_exc()
        else:
            print(f"[gpu_suite] {name}: starting in a subprocess, {left:.0f} s of the budget left", flush=True)
            results[name] = run_isolated(name, args, left)
        r = results[name]
        for k, v in method_setup(name, args).items():
            r.setdefault(k, v)
        print(
            f"[gpu_suite] {name}: {r['status']} ({time.monotonic() - start:.0f} s elapsed)"
            + (f": {r.get('error') or r.get('reason')}" if r["status"] != "ok" else ""),
            flush=True,
        )
    peaks = [r["matmul_peak"]["flops_per_s"] for r in results.values() if r.get("status") == "ok"]
    peak = max(peaks) if peaks else float("nan")
    for r in results.values():
        if r.get("status") == "ok":
            r["summary"] = summarise(r, peak)
    return {
        "suite": "bench/gpu_suite.py",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "host": platform.node(),
        "host_cpu_count": os.cpu_count(),
        "gpu": _gpu_info(),
        "variant": args.variant,
        "dtype": args.dtype,
        "steps": args.steps,
        "warmup": args.warmup,
        "budget_s": args.budget_s,
        "elapsed_s": time.monotonic() - start,
        "isolated": not args.in_process,
        "matmul_peak": {
            "dtype": args.dtype,
            "n": args.peak_n,
            "flops_per_s": peak,
            "per_method": {k: r["matmul_peak"] for k, r in results.items() if r.get("status") == "ok"},
        },
        "methods": results,
        "markdown": TABLE_HEADER + [markdown_row(k, r, args.dtype) for k, r in results.items()],
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out",
        default=os.environ.get("OUT") or os.path.join(HERE, "results", "gpu"),
        help="output folder (default: $OUT if set, else bench/results/gpu)",
    )
    p.add_argument("--methods", default=",".join(DEFAULT_ORDER), help="comma-separated, run in this order")
    p.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("bfloat16", "float32"),
        help="config.train.compute_dtype, and the dtype of the matmul peak",
    )
    p.add_argument(
        "--variant",
        default="paper",
        choices=("paper", "tiny"),
        help="paper: the sizes in METHODS; tiny: the configs' tiny variants (CPU smoke)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CPU check of the whole path: --variant tiny, 2 timed steps, 256^3 peak, short pipeline, "
        "in-process unless --isolate",
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--peak-n", type=int, default=8192, help="N of the N^3 matmul peak")
    p.add_argument("--peak-reps", type=int, default=5)
    p.add_argument("--pipeline-clips", type=int, default=512, help="synthetic clips written for the pipeline rate")
    p.add_argument("--pipeline-seconds", type=float, default=5.0, help="0: no pipeline measurement")
    p.add_argument("--batch", action="append", default=[], metavar="METHOD=N", help="batch for one method")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="config override for one method, e.g. eat:model.remat=True",
    )
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget for all methods")
    p.add_argument(
        "--min-method-s", type=float, default=45.0, help="skip a method that would start with less than this left"
    )
    p.add_argument("--in-process", action="store_true", help="run methods in this process (no isolation)")
    p.add_argument("--isolate", action="store_true", help="with --smoke: still one subprocess per method")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only trace + lower each step at its size from an abstract state (nothing allocated or "
        "run; works on CPU at paper sizes): GFLOP/step and matmul dtypes to gpu_suite_dry_run.json",
    )
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.methods = (
        [m.strip() for m in args.methods.split(",") if m.strip()] if isinstance(args.methods, str) else args.methods
    )
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        p.error(f"--methods: unknown {unknown}; choose from {sorted(METHODS)}")
    for b in args.batch:
        name, _, n = b.partition("=")
        if name not in METHODS or not n.isdigit() or int(n) < 1:
            p.error(f"--batch {b!r}: expected METHOD=N with METHOD in {sorted(METHODS)} and N >= 1")
    for o in args.override:
        name, sep, kv = o.partition(":")
        if name not in METHODS or not sep or "=" not in kv:
            p.error(f"--override {o!r}: expected METHOD:KEY=VALUE with METHOD in {sorted(METHODS)}")
    if args.smoke:
        args.variant = "tiny"
        args.steps = min(args.steps, 2)
        args.warmup = min(args.warmup, 1)
        args.peak_n = min(args.peak_n, 256)
        args.peak_reps = min(args.peak_reps, 2)
        args.pipeline_clips = min(args.pipeline_clips, 16)
        args.pipeline_seconds = min(args.pipeline_seconds, 0.5)
        args.in_process = args.in_process or not args.isolate
    if args.steps < 1 or args.warmup < 0 or args.peak_n < 1:
        p.error("--steps >= 1, --warmup >= 0, --peak-n >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        _worker_main(args)
        return {}
    if args.dry_run:
        rows = {}
        for name in args.methods:
            try:
                rows[name] = lower_method(name, args)
            except Exception as e:  # noqa: BLE001
                rows[name] = {
                    "status": "error",
                    "method": name,
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()[-4000:],
                }
            r = rows[name]
            print(
                f"[gpu_suite --dry-run] {name}: "
                + (
                    f"{r['config']} batch {r['batch']} {args.dtype}: {r['params'] / 1e6:.1f} M params, "
                    f"{r['gflop_per_step_lowered']:,.1f} GFLOP/step lowered "
                    f"({r['gflop_per_clip_lowered']:,.1f} per clip), "
                    f"matmul dtypes {r['matmul_dtypes']}, lowered in {r['lower_seconds']:.1f} s"
                    if r["status"] == "lowered"
                    else f"{r['status']}: {r['error']}"
                ),
                flush=True,
            )
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_suite_dry_run.json"), "w") as f:
            json.dump({"dtype": args.dtype, "variant": args.variant, "methods": rows}, f, indent=1, default=str)
        return {"methods": rows}
    suite = run_suite(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_suite.json"), "w") as f:
        json.dump(suite, f, indent=1, default=str)
    md = "\n".join(suite["markdown"])
    with open(os.path.join(args.out, "gpu_suite.md"), "w") as f:
        f.write(md + "\n")
    print(
        f"\n{suite['gpu'] or platform.node()}  {args.dtype}  matmul peak "
        f"{suite['matmul_peak']['flops_per_s'] / 1e12:.3g} TFLOP/s ({args.peak_n}^3)  "
        f"budget {args.budget_s:.0f} s, used {suite['elapsed_s']:.0f} s"
    )
    print(md)
    print(f"wrote {os.path.join(args.out, 'gpu_suite.json')} and gpu_suite.md")
    return suite


if __name__ == "__main__":
    main()
