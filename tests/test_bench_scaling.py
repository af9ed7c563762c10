"""bench/bench_scaling.py: the exponent and quadratic-share arithmetic, and one tiny sweep end to end."""

from __future__ import annotations

import json
import os
import sys

import pytest

# what users run: XLA's default optimisation level (tests/conftest.py)
pytestmark = pytest.mark.xla_default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import bench_scaling  # noqa: E402


def test_local_exponents_and_quadratic_share():
    x = [1.0, 2.0, 4.0, 8.0]
    assert bench_scaling.local_exponents(x, [3 * v for v in x]) == [None, 1.0, 1.0, 1.0]
    assert bench_scaling.local_exponents(x, [v * v for v in x])[1:] == pytest.approx([2.0, 2.0, 2.0])
    gflop = [2 + 3 * v + 0.5 * v * v for v in x]  # fixed work, a linear part and an attention-like part
    share = bench_scaling.quadratic_share(x, gflop)
    assert share == pytest.approx([0.5 * v * v / (2 + 3 * v + 0.5 * v * v) for v in x])
    assert bench_scaling.quadratic_share([1.0, 2.0], [1.0, 2.0]) is None
    assert bench_scaling.quadratic_share(x, [5 + v - 0.01 * v * v for v in x]) == [0.0] * 4
    assert bench_scaling.frames_for(2.5, 16) == 256 and bench_scaling.frames_for(2.5, 4) == 248
    assert bench_scaling.frames_for(0.01, 16) == 16


def test_tiny_sweep_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "scaling.json"
    tiny = [
        "model.depth=1",
        "model.dim=32",
        "model.num_heads=2",
        "model.decoder_dim=32",
        "model.decoder_layers=1",
        "objective.average_top_k_layers=1",
        "objective.clone_batch=2",
    ]
    result = bench_scaling.main(
        ["--methods", "eat", "--seconds", "0.32,0.64", "--batches", "2", "--batch-seconds", "0.32"]
        + ["--steps", "2", "--out", str(out), "--override", *tiny]
    )
    eat = result["methods"]["eat"]
    assert [p["frames"] for p in eat["length"]] == [32, 64] and [p["batch"] for p in eat["batch"]] == [2]
    for p in eat["length"] + eat["batch"]:
        assert p["median_step_seconds"] > 0 and p["gflop_per_step"] > 0 and p["compiled_peak_bytes"] > 0
    # twice the clip is about twice the work for this tiny model; batch 2 of 0.32 s clips is twice
    # the first length point's work
    assert 0.8 < eat["length"][1]["flop_exponent"] < 1.5
    assert eat["batch"][0]["gflop_per_step"] == pytest.approx(2 * eat["length"][0]["gflop_per_step"], rel=0.25)
    assert "quadratic_share" not in eat["length"][0]  # two lengths: no fit (three needed)
    assert json.load(open(out))["methods"]["eat"]["overrides"][-1] == "objective.clone_batch=2"
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    (tmp_path / "scaling.png").unlink()
    assert bench_scaling.main(["--replot", str(out)]) == json.load(open(out))
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "eat (configs/eat.py:base): clip length, batch 1" in printed and "k_flop" in printed
    with pytest.raises(SystemExit):
        bench_scaling.main(["--methods", "nope"])
