"""Times one jitted pre-training step (forward + backward + AdamW) of any config on synthetic data.

    .venv/bin/python bench/bench_train_step.py --config configs/wav2vec2_conformer.py:S --batch 4 \
        --frames 1000 [--torch-python /path/to/torch-venv/bin/python]

Prints a table (median step time, clips/s, GFLOP per step from XLA's cost analysis of the unrolled
step, achieved GFLOP/s) and the MFU: achieved FLOP/s over the best FLOP/s of an n^3 matmul in the
config's compute dtype (--peak-n, default 2048), timed before and after the steps in the same run
(bench/mfu.py) and writes bench/results/train_step_<config>.json. With --torch-python it also
runs the PyTorch peer of the config's method on the same shapes, alternating A/B runs: wav2vec2 ->
bench/torch_wav2vec2_conformer.py, eat -> bench/torch_eat.py, slicer -> bench/torch_slicer.py (CNN encoder,
random-resize-crop views only) (model / objective shapes from the config,
--config.x=y overrides included), e.g. the reduced EAT step:

    .venv/bin/python bench/bench_train_step.py --config configs/eat.py:base --batch 1 --frames 1024 \
        --mel 128 --config.model.depth=4 --config.model.dim=384 --config.model.num_heads=6 \
        --config.model.decoder_dim=384 --config.objective.average_top_k_layers=4 \
        --torch-python /path/to/torch-venv/bin/python
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

from audiossl_jax.config_loader import load_config, split_overrides  # noqa: E402
from audiossl_jax.objectives import registry as objectives  # noqa: E402
from audiossl_jax.parallel import mesh as mesh_lib  # noqa: E402
from audiossl_jax.parallel import sharding as sharding_lib  # noqa: E402
from audiossl_jax.train import optimizer, precision  # noqa: E402
from audiossl_jax.train import step as step_lib  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mfu as mfu_lib  # noqa: E402  (bench/mfu.py)

HERE = os.path.dirname(os.path.abspath(__file__))


def synthetic_batch(batch: int, frames: int, mel: int, classes: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "features": rng.normal(size=(batch, frames, mel)).astype(np.float32),
        "valid": np.ones((batch, frames), bool),
        "labels": (rng.random((batch, classes)) < 0.2).astype(np.float32),
    }


def compile_train_step(config, batch_np: dict):
    """The config's jitted train step (the one `audiossl pretrain` runs), lowered and compiled for
    `batch_np`: (compiled, lowered, state, batch, mesh, compile seconds)."""
    objective = objectives.build(config)
    mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
    tx, schedule = optimizer.make_optimizer(config.optimizer, int(config.train.steps))
    with jax.set_mesh(mesh):
        batch = sharding_lib.global_batch(batch_np, sharding_lib.batch_sharding(mesh, config.rules))
        state, shardings = step_lib.init_train_state(objective, tx, jax.random.key(0), batch, mesh, config.rules)
        train_step = step_lib.make_train_step(objective, tx, schedule, mesh=mesh, rules=config.rules)
        step = step_lib.jit_train_step(train_step, shardings, jax.tree.map(lambda x: x.sharding, batch), mesh)
        t0 = time.perf_counter()
        lowered = step.lower(state, batch, jax.random.key(1))
        compiled = lowered.compile()
    return compiled, lowered, state, batch, mesh, time.perf_counter() - t0


def time_jax_step(config, batch_np: dict, steps: int, warmup: int = 1) -> dict:
    """Compiles the config's jitted train step (the one `audiossl pretrain` runs) on `batch_np` and runs
    it `steps` times, blocking on each; the first `warmup` steps are left out of the statistics. FLOPs
    per step from XLA's cost analysis (bench/mfu.py), compile time, memory."""
    if steps <= warmup:
        raise ValueError(f"steps={steps} must exceed warmup={warmup}")
    mfu_lib.assert_unrolled(config)
    compiled, lowered, state, batch, mesh, compile_s = compile_train_step(config, batch_np)
    with jax.set_mesh(mesh):
        flops = mfu_lib.step_flops(lowered, compiled)
        text = mfu_lib.lowered_text(lowered)
        matmul_dtypes = mfu_lib.matmul_dtypes(text)
        operand_dtypes = mfu_lib.matmul_operand_dtypes(text)
        params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
        times, cpu = [], []
        for i in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            state, metrics = compiled(state, batch, jax.random.key(i))
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        memory = mfu_lib.memory(compiled)
    timed, timed_cpu = times[warmup:], cpu[warmup:]
    median = statistics.median(timed)
    return {
        "framework": "jax",
        "jax": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "compute_dtype": str(config.train.compute_dtype),
        "matmul_dtype": matmul_mode(config),
        "compile_seconds": compile_s,
        "params": params,
        "warmup_step_seconds": times[:warmup],
        "step_seconds": timed,
        "median_step_seconds": median,
        "min_step_seconds": min(timed),
        "max_step_seconds": max(timed),
        "cpu_seconds": timed_cpu,
        "median_cpu_seconds": statistics.median(timed_cpu),
        "gflop_per_step": flops["flops"] / 1e9,
        "achieved_gflops": flops["flops"] / 1e9 / median,
        "gflop_per_step_compiled": flops["flops_compiled"] / 1e9,
        "gflop_per_step_lowered": flops["flops_lowered"] / 1e9,
        "flops_source": flops["flops_source"],
        "matmul_dtypes": matmul_dtypes,
        "matmul_operand_dtypes": operand_dtypes,
        "memory": memory,
        "loss": float(metrics["loss"]),
    }


def matmul_mode(config) -> str:
    """'bfloat16' when the step's matmuls take bf16 operands with float32 results
    (`train.matmul_dtype=bfloat16` under a float32 compute dtype), else the compute dtype."""
    return "bfloat16" if precision.matmul_dtype(config) is not None else str(config.train.compute_dtype)


def peak_matmul_kind(config) -> tuple[str, str]:
    """(operand dtype, result dtype) of the matmul whose FLOP/s is the MFU peak: the kind the step runs."""
    return (matmul_mode(config), str(config.train.compute_dtype))


def peer_uses_bf16(config) -> bool:
    """The PyTorch peer runs its step under bf16 autocast when our matmuls are bf16 (same precision)."""
    return matmul_mode(config) == "bfloat16"


TORCH_PEERS = {"wav2vec2": "torch_wav2vec2_conformer.py", "eat": "torch_eat.py", "slicer": "torch_slicer.py"}


def torch_peer_args(config, batch: int, frames: int, mel: int) -> list[str]:
    """The peer script (by `config.method`) and its shape flags, from the same config as the JAX side."""
    method = config.method
    if method not in TORCH_PEERS:
        raise SystemExit(f"no PyTorch peer for method {method!r}; peers: {sorted(TORCH_PEERS)}")
    args = [os.path.join(HERE, TORCH_PEERS[method]), "--batch", str(batch), "--frames", str(frames)]
    if method == "eat":
        m, o = config.model, config.objective
        args += [
            "--mel",
            str(mel),
            "--patch",
            str(m.patch_size),
            "--dim",
            str(m.dim),
            "--depth",
            str(m.depth),
            "--heads",
            str(m.num_heads),
            "--clones",
            str(o.clone_batch),
            "--mask-prob",
            str(o.mask_prob),
            "--top-k",
            str(o.average_top_k_layers),
            "--decoder-dim",
            str(m.decoder_dim),
            "--decoder-layers",
            str(m.decoder_layers),
            "--decoder-kernel",
            str(m.decoder_kernel),
            "--decoder-groups",
            str(m.decoder_groups),
            "--utterance-weight",
            str(o.utterance_loss_weight),
        ]
    if method == "slicer":
        m, o = config.model, config.objective
        if m.encoder != "cnn" or o.augment.mixup_ratio or o.augment.kmix_ratio or not o.augment.rrc:
            raise SystemExit(
                "the PyTorch SLICER peer has the CNN encoder and random-resize-crop views only: "
                "set model.encoder=cnn, objective.augment.mixup_ratio=0, kmix_ratio=0, rrc=True "
                "(configs/slicer.py:local)"
            )
        args += [
            "--mel",
            str(mel),
            "--channels",
            str(m.channels),
            "--blocks",
            str(m.blocks),
            "--dim",
            str(m.dim),
            "--dropout",
            str(m.dropout),
            "--instance-dim",
            str(m.instance_dim),
            "--clusters",
            str(m.clusters),
            "--cluster-hidden",
            str(m.cluster_hidden),
            "--queue",
            str(o.queue_size),
            "--temperature",
            str(o.temperature),
            "--cluster-temperature",
            str(o.cluster_temperature),
            "--momentum",
            str(o.momentum),
        ]
    return args


def time_torch_step(
    torch_python: str, peer_args: list[str], steps: int, device: str, bf16: bool, threads: int = 0
) -> dict:
    cmd = [torch_python] + peer_args + ["--steps", str(steps), "--device", device]
    cmd += (["--bf16"] if bf16 else []) + (["--threads", str(threads)] if threads else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    """--config and the synthetic batch's shape (shared with bench/profile_step.py)."""
    p.add_argument("--config", default="configs/wav2vec2_conformer.py:S")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--mel", type=int, default=64, help="mel bins of the synthetic input")


def parse_config(p: argparse.ArgumentParser):
    """(args, config with the --config.x=y overrides, the overrides)."""
    a, rest = p.parse_known_args()
    overrides, unknown = split_overrides(rest)  # --config.x=y
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    return a, load_config(a.config, overrides), overrides


def result_name(config_arg: str, overrides) -> str:
    """`eat_local` for configs/eat.py:local (+ `_overridden` with --config.x=y overrides)."""
    return config_arg.split("/")[-1].replace(".py", "").replace(":", "_") + ("_overridden" if overrides else "")


def step_header(a, overrides) -> dict:
    """The JSON fields that say which step was run: config, overrides, batch shape."""
    return {
        "config": a.config,
        "overrides": [f"--config.{o}" for o in overrides],
        "batch": a.batch,
        "frames": a.frames,
        "mel": a.mel,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(p)
    p.add_argument("--steps", type=int, default=6, help="timed steps (the first is dropped)")
    p.add_argument("--rounds", type=int, default=2, help="A/B rounds when comparing with PyTorch")
    p.add_argument(
        "--torch-python",
        default="",
        help="python of an environment with torch (+ torchaudio for wav2vec2); the peer is picked "
        "by the config's method: " + ", ".join(f"{k} -> bench/{v}" for k, v in TORCH_PEERS.items()),
    )
    p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads for the peer (0: default)")
    p.add_argument(
        "--peak-n",
        type=int,
        default=2048,
        help="size n of the n^3 matmul whose FLOP/s (config's compute dtype, best of 5) is the MFU "
        "peak, measured before and after the steps; 0: no peak, no MFU",
    )
    p.add_argument("--out", default="")
    a, config, overrides = parse_config(p)
    batch_np = synthetic_batch(a.batch, a.frames, a.mel)
    load_start = os.getloadavg()
    runs = {"jax": [], "pytorch": []}
    peak_kind = peak_matmul_kind(config)
    peaks = [mfu_lib.matmul_peak(peak_kind[0], a.peak_n, result_dtype=peak_kind[1])] if a.peak_n else []
    peer_args = torch_peer_args(config, a.batch, a.frames, a.mel) if a.torch_python else []
    for _ in range(a.rounds if a.torch_python else 1):
        runs["jax"].append(time_jax_step(config, batch_np, a.steps))
        if a.torch_python:
            device = "cuda" if jax.default_backend() == "gpu" else "cpu"
            runs["pytorch"].append(
                time_torch_step(a.torch_python, peer_args, a.steps, device, peer_uses_bf16(config), a.torch_threads)
            )
    if a.peak_n:
        peaks.append(mfu_lib.matmul_peak(peak_kind[0], a.peak_n, result_dtype=peak_kind[1]))
    result = {
        **step_header(a, overrides),
        "method": config.method,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "runs": runs,
    }
    jax_median = statistics.median(t for r in runs["jax"] for t in r["step_seconds"])
    gflop = runs["jax"][0]["gflop_per_step"]
    if peaks:
        peak = max(p_["flops_per_s"] for p_ in peaks)
        result["matmul_peak"] = {"runs": peaks, "flops_per_s": peak}
        result["mfu"] = mfu_lib.mfu(gflop * 1e9, jax_median, peak)
    rows = [("jax", jax_median, gflop)]
    if runs["pytorch"]:
        torch_median = statistics.median(t for r in runs["pytorch"] for t in r["step_seconds"])
        rows.append(("pytorch", torch_median, runs["pytorch"][0].get("gflop_per_step_estimate", float("nan"))))
        result["speedup_vs_pytorch"] = torch_median / jax_median
    print(f"\n{a.config}  batch {a.batch} x {a.frames} frames  ({jax.devices()[0].device_kind})")
    print(f"{'framework':<10} {'median s/step':>14} {'clips/s':>9} {'GFLOP/step':>11} {'GFLOP/s':>9}")
    for name, med, row_gflop in rows:  # not `gflop`: the MFU line below reports JAX's
        print(f"{name:<10} {med:>14.3f} {a.batch / med:>9.2f} {row_gflop:>11.1f} {row_gflop / med:>9.1f}")
    if peaks:
        print(
            f"JAX MFU {result['mfu']:.1%}: {gflop / jax_median:.1f} GFLOP/s ({runs['jax'][0]['flops_source']} "
            f"cost analysis) / {peak / 1e9:.1f} GFLOP/s {peak_kind[0]} -> {peak_kind[1]} {a.peak_n}^3 matmul peak "
            f"(best of the {len(peaks)} measured in this run: "
            + ", ".join(f"{p_['flops_per_s'] / 1e9:.1f}" for p_ in peaks)
            + ")"
        )
    if "speedup_vs_pytorch" in result:
        print(f"speed-up of JAX over PyTorch: {result['speedup_vs_pytorch']:.2f}x")
        if "gflop_per_step_estimate" in runs["pytorch"][0]:
            print("(PyTorch GFLOP/step: the peer's rough matmul + conv count, not a measurement)")
    cpu = {
        k: statistics.median(t for r in v for t in r.get("cpu_seconds", []))
        for k, v in runs.items()
        if v and all("cpu_seconds" in r for r in v)
    }
    if cpu:
        result["median_cpu_seconds"] = cpu
        print("median CPU-seconds per step (all threads): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    print(
        "load average (1, 5, 15 min): start %.2f %.2f %.2f, end %.2f %.2f %.2f"
        % (tuple(load_start) + tuple(result["loadavg_end"]))
    )
    out = a.out or os.path.join(HERE, "results", f"train_step_{result_name(a.config, overrides)}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
