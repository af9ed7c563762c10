"""bench/gpu_suite.py must run right the first time on a lent GPU: its arguments, budget, failure
handling, MFU arithmetic and JSON/markdown here, and its real step path on CPU with tiny configs
(bf16 in-process). Under -m slow: the per-method subprocess path in f32, the paper sizes traced
in bf16 (--dry-run), and the CPU bench's MFU line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

# what users run: XLA's default optimisation level (tests/conftest.py)
pytestmark = pytest.mark.xla_default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import gpu_suite  # noqa: E402
import mfu  # noqa: E402


def test_arguments_defaults_and_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    a = gpu_suite.parse_args([])
    assert a.out == str(tmp_path) and a.dtype == "bfloat16" and a.variant == "paper"
    assert a.methods == ["eat", "wav2vec2", "slicer"] and a.budget_s == 480 and not a.in_process
    monkeypatch.delenv("OUT")
    assert gpu_suite.parse_args([]).out == os.path.join(REPO, "bench", "results", "gpu")
    s = gpu_suite.parse_args(["--smoke", "--methods", "slicer,eat"])
    assert s.variant == "tiny" and s.in_process and s.peak_n == 256 and s.methods == ["slicer", "eat"]
    assert not gpu_suite.parse_args(["--smoke", "--isolate"]).in_process
    for bad in (
        ["--methods", "byol"],
        ["--batch", "eat"],
        ["--batch", "eat=0"],
        ["--batch", "x=4"],
        ["--override", "eat:model.depth"],
        ["--override", "model.depth=2"],
        ["--dtype", "float16"],
    ):
        with pytest.raises(SystemExit):
            gpu_suite.parse_args(bad)


def test_method_setup_paper_sizes_and_overrides():
    a = gpu_suite.parse_args(
        ["--batch", "eat=24", "--override", "eat:model.remat=True", "--override", "slicer:model.dim=512"]
    )
    eat = gpu_suite.method_setup("eat", a)
    assert eat["config"] == "configs/eat.py:base" and eat["batch"] == 24 and eat["batch_note"] == "--batch"
    assert eat["overrides"] == ["train.compute_dtype=bfloat16", "model.remat=True"]
    assert (eat["frames"], eat["mel"]) == (1024, 128)
    w = gpu_suite.method_setup("wav2vec2", a)
    assert (
        w["config"] == "configs/wav2vec2_conformer.py:S" and w["batch"] == 64 and "model.dim=512" not in w["overrides"]
    )
    s = gpu_suite.method_setup("slicer", a)
    assert (s["config"], s["batch"], s["frames"], s["clip_frames"]) == ("configs/slicer.py:paper", 512, 96, 1000)
    t = gpu_suite.method_setup("eat", gpu_suite.parse_args(["--smoke", "--dtype", "float32"]))
    assert t["config"] == "configs/eat.py:tiny" and t["overrides"][0] == "train.compute_dtype=float32"


class _Cost:
    def __init__(self, flops):
        self.flops = flops

    def cost_analysis(self):
        return None if self.flops is None else {"flops": self.flops}


def test_mfu_arithmetic_and_flops_source():
    assert mfu.mfu(2e12, 0.01, 4e14) == pytest.approx(0.5)
    assert mfu.mfu(float("nan"), 0.01, 4e14) != mfu.mfu(float("nan"), 0.01, 4e14)  # nan
    assert mfu.step_flops(_Cost(100.0), _Cost(95.0))["flops_source"] == "compiled"
    f = mfu.step_flops(_Cost(100.0), _Cost(10.0))  # backend left library calls out of its count
    assert f["flops_source"] == "lowered" and f["flops"] == 100.0 and f["flops_compiled"] == 10.0
    assert mfu.step_flops(_Cost(100.0), _Cost(None))["flops"] == 100.0
    import ml_collections

    with pytest.raises(ValueError, match="scan"):
        mfu.assert_unrolled(ml_collections.ConfigDict({"model": {"scan": True}}))
    mfu.assert_unrolled(ml_collections.ConfigDict({"model": {"scan": False}}))


def test_matmul_dtype_counts_from_the_lowered_step_or_its_text():
    import jax
    import jax.numpy as jnp

    def f(a, b):
        return jnp.dot(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=jnp.float32) + a @ b

    x = jnp.ones((4, 4), jnp.float32)
    lowered = jax.jit(f).lower(x, x)
    text = mfu.lowered_text(lowered)
    assert mfu.matmul_operand_dtypes(text) == mfu.matmul_operand_dtypes(lowered) == {"bf16->f32": 1, "f32->f32": 1}
    assert mfu.matmul_dtypes(text) == {"f32": 2}

    class _Unprintable:
        def as_text(self):
            raise RuntimeError("no text")

    assert mfu.lowered_text(_Unprintable()) == "" and mfu.matmul_dtypes(_Unprintable()) == {}


def _fake_result(name, args):
    setup = gpu_suite.method_setup(name, args)
    step = {
        "median_step_seconds": 0.1,
        "min_step_seconds": 0.09,
        "max_step_seconds": 0.12,
        "gflop_per_step": 400.0,
        "flops_source": "compiled",
        "compile_seconds": 30.0,
        "device": "FAKE H100",
        "memory": {"device_peak_bytes_in_use": 2**33, "compiled_peak_bytes": 1},
    }
    return {
        "status": "ok",
        **setup,
        "method": name,
        "step": step,
        "matmul_peak": {"flops_per_s": 8e12},
        "pipeline": {"clips_per_s": 600.0, "clips_per_cpu_s": 100.0},
    }


def test_budget_and_failures_keep_the_other_rows(monkeypatch, tmp_path):
    suite = gpu_suite.main(["--out", str(tmp_path / "a"), "--budget-s", "0"])  # nothing fits: all skipped
    assert [r["status"] for r in suite["methods"].values()] == ["skipped"] * 3
    assert "time budget" in suite["methods"]["eat"]["reason"] and len(suite["markdown"]) == 5

    def fake(name, args):
        if name == "wav2vec2":
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
        return _fake_result(name, args)

    monkeypatch.setattr(gpu_suite, "run_method", fake)
    gpu_suite.main(["--out", str(tmp_path / "b"), "--in-process"])
    suite = json.load(open(tmp_path / "b" / "gpu_suite.json"))
    assert [r["status"] for r in suite["methods"].values()] == ["ok", "error", "ok"]
    assert "RESOURCE_EXHAUSTED" in suite["methods"]["wav2vec2"]["error"]
    r = suite["methods"]["eat"]["summary"]
    assert r["mfu"] == pytest.approx(400e9 / 0.1 / 8e12) and r["peak_memory_gib"] == pytest.approx(8.0)
    assert r["appetite_clips_per_s"] == pytest.approx(120.0) and r["pipeline_over_appetite"] == pytest.approx(5.0)
    assert r["host_cores_to_feed"] == pytest.approx(1.2)
    md = open(tmp_path / "b" / "gpu_suite.md").read().splitlines()
    assert md[0].startswith("| method |") and len(md) == 5
    assert (
        md[2].startswith("| eat | configs/eat.py:base | 12 x 1024 x 128 | bfloat16 | FAKE H100 |") and "50.0%" in md[2]
    )
    assert md[3].startswith("| wav2vec2 | configs/wav2vec2_conformer.py:S |") and "error: RuntimeError" in md[3]


def test_isolated_method_stopped_when_the_budget_ends(tmp_path):
    """A worker still running when the budget ends is killed; its row says so and the JSON is written."""
    suite = gpu_suite.main(
        [
            "--smoke",
            "--isolate",
            "--methods",
            "slicer,eat",
            "--budget-s",
            "2",
            "--min-method-s",
            "0.5",
            "--out",
            str(tmp_path),
        ]
    )
    statuses = {k: r["status"] for k, r in suite["methods"].items()}
    assert statuses == {"slicer": "timeout", "eat": "skipped"}, statuses
    assert json.load(open(tmp_path / "gpu_suite.json"))["isolated"] is True
    assert "timeout: stopped after" in suite["markdown"][2]


def _check_ok(result, dtype):
    assert result["status"] == "ok", result.get("traceback") or result.get("error")
    s, r = result["step"], result["summary"]
    assert result["config"].endswith(":tiny")
    assert s["compute_dtype"] == dtype and s["gflop_per_step"] > 0 and s["compile_seconds"] > 0
    short = {"bfloat16": "bf16", "float32": "f32"}[dtype]
    assert s["matmul_dtypes"].get(short, 0) > 0, s["matmul_dtypes"]  # compute_dtype reached the matmuls
    if dtype == "float32":
        assert "bf16" not in s["matmul_dtypes"]
    assert len(s["step_seconds"]) == 2 and len(s["warmup_step_seconds"]) == 1
    assert result["matmul_peak"]["dtype"] == dtype and result["matmul_peak"]["flops_per_s"] > 0
    assert r["mfu"] == pytest.approx(s["gflop_per_step"] * 1e9 / s["median_step_seconds"] / r["peak_tflops"] / 1e12)
    assert 0 < r["mfu"] < 5 and r["peak_memory_gib"] > 0 and r["clips_per_s"] > 0


def test_smoke_bf16_real_step_in_process(tmp_path):
    """The real path at tiny size: config load, bf16 step, cost analysis, peak, pipeline, JSON, markdown."""
    suite = gpu_suite.main(["--smoke", "--methods", "eat", "--out", str(tmp_path)])
    on_disk = json.load(open(tmp_path / "gpu_suite.json"))
    assert on_disk["markdown"] == suite["markdown"] and on_disk["dtype"] == "bfloat16" and on_disk["variant"] == "tiny"
    result = on_disk["methods"]["eat"]
    _check_ok(result, "bfloat16")
    if "skipped" not in result["pipeline"]:
        assert result["pipeline"]["clips_per_s"] > 0 and result["summary"]["pipeline_over_appetite"] > 0
    assert on_disk["matmul_peak"]["flops_per_s"] == result["matmul_peak"]["flops_per_s"]
    assert suite["markdown"][2].startswith("| eat | configs/eat.py:tiny | 2 x 64 x 128 | bfloat16 | cpu |")


@pytest.mark.slow
def test_smoke_isolated_f32_every_method(tmp_path):
    """The GPU run's own path: one subprocess per method (here f32, all three methods, CLI)."""
    out = tmp_path / "iso"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "bench", "gpu_suite.py"),
            "--smoke",
            "--isolate",
            "--dtype",
            "float32",
            "--pipeline-seconds",
            "0",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    suite = json.load(open(out / "gpu_suite.json"))
    assert suite["isolated"] and suite["dtype"] == "float32"
    for name in ("eat", "wav2vec2", "slicer"):
        _check_ok(suite["methods"][name], "float32")
    assert "| slicer | configs/slicer.py:tiny |" in proc.stdout


@pytest.mark.slow
def test_cpu_bench_prints_mfu(tmp_path):
    """With a PyTorch peer row in the table (a stand-in peer: its JSON line only), the MFU line still
    reports JAX's achieved GFLOP/s. Run with bf16-operand matmuls: the step's dots take bf16 operands,
    the MFU peak is a bf16 -> f32 matmul, and the peer is asked for bf16 autocast (`--bf16`)."""
    out = tmp_path / "step.json"
    peer = tmp_path / "fake_torch_python"
    peer_args = tmp_path / "peer_args"
    peer.write_text(
        f'#!/bin/sh\necho "$@" >> {peer_args}\n'
        'echo \'{"step_seconds": [2.0, 2.0, 2.0], "cpu_seconds": [3.0, 3.0, 3.0]}\'\n'
    )
    peer.chmod(0o755)
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "bench", "bench_train_step.py"),
            "--config",
            "configs/eat.py:tiny",
            "--batch",
            "2",
            "--frames",
            "64",
            "--mel",
            "128",
            "--steps",
            "3",
            "--peak-n",
            "128",
            "--out",
            str(out),
            "--torch-python",
            str(peer),
            "--rounds",
            "1",
            "--config.model.depth=1",
            "--config.objective.average_top_k_layers=1",
            "--config.model.decoder_layers=1",
            "--config.train.matmul_dtype=bfloat16",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "JAX MFU" in proc.stdout and "bfloat16 -> float32 128^3 matmul peak" in proc.stdout
    result = json.load(open(out))
    run = result["runs"]["jax"][0]
    assert result["mfu"] == pytest.approx(
        run["gflop_per_step"] * 1e9 / statistics_median(run["step_seconds"]) / result["matmul_peak"]["flops_per_s"]
    )
    assert len(result["matmul_peak"]["runs"]) == 2 and run["matmul_dtypes"].get("f32", 0) > 0
    assert run["matmul_dtype"] == "bfloat16" and run["matmul_operand_dtypes"].get("bf16->f32", 0) > 0
    assert all(p["dtype"] == "bfloat16" and p["result_dtype"] == "float32" for p in result["matmul_peak"]["runs"])
    assert "--bf16" in peer_args.read_text()
    achieved = float(re.search(r"JAX MFU [\d.]+%: (\S+) GFLOP/s", proc.stdout).group(1))
    assert achieved == pytest.approx(run["gflop_per_step"] / statistics_median(run["step_seconds"]), abs=0.06)
    assert result["speedup_vs_pytorch"] == pytest.approx(2.0 / statistics_median(run["step_seconds"]))


def test_cpu_bench_matmul_mode():
    """Which matmul the MFU peak times and whether the PyTorch peer autocasts, per precision setting."""
    import bench_train_step

    from audiossl_jax.config_loader import load_config

    config = load_config(os.path.join(REPO, "configs/eat.py:tiny"))
    assert bench_train_step.peak_matmul_kind(config) == ("float32", "float32")
    assert not bench_train_step.peer_uses_bf16(config)
    config.train.matmul_dtype = "bfloat16"
    assert bench_train_step.peak_matmul_kind(config) == ("bfloat16", "float32")
    assert bench_train_step.peer_uses_bf16(config)
    config.train.compute_dtype = "bfloat16"
    assert bench_train_step.peak_matmul_kind(config) == ("bfloat16", "bfloat16")


def statistics_median(xs):
    import statistics

    return statistics.median(xs)


@pytest.mark.slow
def test_dry_run_paper_sizes_trace_in_bf16(tmp_path):
    """The GPU run's paper configs and batches trace and lower in bf16 (abstract state: nothing allocated)."""
    rows = gpu_suite.main(["--dry-run", "--out", str(tmp_path)])["methods"]
    per_clip = {"eat": 1087, "wav2vec2": 30.7, "slicer": 2.34}  # GFLOP per clip, docs/scaling.md
    for name, r in rows.items():
        assert r["status"] == "lowered", r.get("traceback")
        assert r["config"] == gpu_suite.METHODS[name].config and r["batch"] == gpu_suite.METHODS[name].batch
        assert r["matmul_dtypes"]["bf16"] > r["matmul_dtypes"].get("f32", 0), r["matmul_dtypes"]
        assert r["gflop_per_clip_lowered"] == pytest.approx(per_clip[name], rel=0.05)
    assert json.load(open(tmp_path / "gpu_suite_dry_run.json"))["dtype"] == "bfloat16"
