"""Model FLOP utilisation: FLOPs of a compiled step, a matmul peak measured in the same run, memory.

Used by bench/bench_train_step.py (CPU, f32) and bench/gpu_suite.py (GPU, bf16).

* `step_flops(lowered, compiled)`: XLA's cost analysis. The compiled figure is the program as it
  runs; the lowered (unoptimised HLO) figure is a cross-check that does not depend on which ops the
  backend turned into library calls. A backend may leave custom calls (cuDNN attention, some
  cuBLAS/cuDNN convolutions) out of its count, so when the compiled count is missing or below 90%
  of the lowered one the lowered one is used; `flops_source` says which.
  Both count a `scan` / `nn.scan` body ONCE (shared/ENV.md: 14 vs 131 GFLOP for the same step), so
  the step must be traced unrolled (`model.scan=False`, the configs' default); `assert_unrolled`
  checks the config.
* `matmul_peak(dtype, n, result_dtype=None)`: best FLOP/s of a jitted [n, n] x [n, n] matmul of `dtype`
  operands (result in `result_dtype`, default `dtype`), timed here.
* `mfu(flops, seconds, peak)`: achieved FLOP/s / peak.
"""

from __future__ import annotations

import re
import time

import jax
import jax.numpy as jnp
import numpy as np

LOWERED_FALLBACK_RATIO = 0.9  # compiled count below this fraction of the lowered one: use the lowered


def _flops(cost) -> float:
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    if not cost:
        return float("nan")
    return float(cost.get("flops", float("nan")))


def step_flops(lowered, compiled) -> dict:
    """{'flops', 'flops_compiled', 'flops_lowered', 'flops_source'} of one step."""
    try:
        compiled_f = _flops(compiled.cost_analysis())
    except Exception:  # noqa: BLE001 - some backends do not implement it
        compiled_f = float("nan")
    try:
        lowered_f = _flops(lowered.cost_analysis()) if lowered is not None else float("nan")
    except Exception:  # noqa: BLE001
        lowered_f = float("nan")
    use_lowered = np.isfinite(lowered_f) and (
        not np.isfinite(compiled_f) or compiled_f <= 0 or compiled_f < LOWERED_FALLBACK_RATIO * lowered_f
    )
    flops = lowered_f if use_lowered else compiled_f
    return {
        "flops": flops,
        "flops_compiled": compiled_f,
        "flops_lowered": lowered_f,
        "flops_source": "lowered" if use_lowered else "compiled",
    }


_TENSOR = r"tensor<(?:[0-9?]+x)*([a-z]+[0-9]*)>"


def lowered_text(lowered) -> str:
    """The lowered step's StableHLO text ('' where it cannot be printed). Print it once and pass the
    text to `matmul_dtypes` and `matmul_operand_dtypes`: a large step takes seconds to print."""
    try:
        return lowered.as_text()
    except Exception:  # noqa: BLE001
        return ""


def _count_dtypes(lowered, ops: tuple[str, ...], pattern: str) -> dict[str, int]:
    """Counts of the `pattern` groups (joined by '->') over the lines naming one of `ops` of the
    lowered step (a `jax.stages.Lowered` or its `lowered_text`)."""
    counts: dict[str, int] = {}
    text = lowered if isinstance(lowered, str) else lowered_text(lowered)
    for line in text.splitlines():
        if any(op in line for op in ops):
            m = re.search(pattern, line)
            if m:
                key = "->".join(m.groups())
                counts[key] = counts.get(key, 0) + 1
    return counts


def matmul_dtypes(lowered) -> dict[str, int]:
    """Result dtypes of the dot_general / convolution ops of the lowered step ({'bf16': n, 'f32': m}):
    shows whether compute_dtype reached the matmuls, on any backend."""
    return _count_dtypes(lowered, ("stablehlo.dot_general", "stablehlo.convolution"), r"->\s*" + _TENSOR)


def matmul_operand_dtypes(lowered) -> dict[str, int]:
    """Operand -> result dtypes of the lowered step's dot_general ops ({'bf16->f32': n, 'f32->f32': m}):
    shows whether `train.matmul_dtype=bfloat16` reached the matmuls."""
    return _count_dtypes(lowered, ("stablehlo.dot_general",), r":\s*\(" + _TENSOR + r".*->\s*" + _TENSOR)


def assert_unrolled(config) -> None:
    """Cost analysis counts a scanned layer body once: refuse a config that scans its layers."""
    model = config.get("model", {})
    if model.get("scan", False):
        raise ValueError(
            "model.scan=True: XLA's cost analysis would count the scanned layer body once; "
            "run with --config.model.scan=False for FLOPs / MFU"
        )


def matmul_peak(
    dtype: str = "float32", n: int = 2048, reps: int = 5, calls: int = 10, result_dtype: str | None = None
) -> dict:
    """Best achieved FLOP/s of a jitted n^3 matmul of `dtype` operands (`calls` chained calls per timing,
    best of `reps`), with the output in `result_dtype` (default `dtype`) and XLA's default precision.
    `dtype="bfloat16", result_dtype="float32"` is the kind of matmul `train.matmul_dtype=bfloat16` runs."""
    dt = jnp.dtype(dtype)
    out = jnp.dtype(result_dtype or dtype)
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(dt)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=out))
    jax.block_until_ready(f(a, b))  # compile + warm up
    jax.block_until_ready(f(a, b))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        outs = [f(a, b) for _ in range(calls)]
        jax.block_until_ready(outs)
        best = min(best, (time.perf_counter() - t0) / calls)
    flops = 2.0 * n**3
    return {
        "dtype": str(dt),
        "result_dtype": str(out),
        "n": n,
        "seconds_per_matmul": best,
        "flops_per_s": flops / best,
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
    }


def mfu(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Achieved FLOP/s over the peak (nan if anything is missing)."""
    if not (np.isfinite(flops) and seconds > 0 and peak_flops_per_s > 0):
        return float("nan")
    return flops / seconds / peak_flops_per_s


def memory(compiled, device=None) -> dict:
    """XLA's compiled memory analysis (bytes) and, where the backend keeps them (GPU/TPU), the device's
    allocator statistics (`peak_bytes_in_use` is the process's peak since start)."""
    out = {}
    try:
        m = compiled.memory_analysis()
        for k in (
            "argument_size_in_bytes",
            "output_size_in_bytes",
            "alias_size_in_bytes",
            "temp_size_in_bytes",
            "generated_code_size_in_bytes",
        ):
            out[k] = int(getattr(m, k))
        out["compiled_peak_bytes"] = (
            out["argument_size_in_bytes"]
            + out["output_size_in_bytes"]
            - out["alias_size_in_bytes"]
            + out["temp_size_in_bytes"]
        )
    except Exception:  # noqa: BLE001
        pass
    try:
        stats = (device or jax.devices()[0]).memory_stats()
    except Exception:  # noqa: BLE001
        stats = None
    if stats:
        for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit"):
            if k in stats:
                out[f"device_{k}"] = int(stats[k])
    return out
