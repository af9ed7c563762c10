"""audiossl_jax/train/op_profile.py and bench/profile_step.py: HLO parsing, op categories, name-stack scopes, the
join with a real `jax.profiler` trace, and one tiny step profiled end to end."""

from __future__ import annotations

import glob
import json
import os
import sys

import jax
import jax.numpy as jnp
import pytest

pytestmark = pytest.mark.xla_default  # the profiled program is the one users run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

from audiossl_jax.train import op_profile  # noqa: E402

HLO = """HloModule jit_f, is_scheduled=true

%fused_dot (p0: f32[8,8], p1: f32[8,8]) -> f32[8,8] {
  %p0 = f32[8,8]{1,0} parameter(0)
  %p1 = f32[8,8]{1,0} parameter(1)
  %dot.1 = f32[8,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %tanh.1 = f32[8,8]{1,0} tanh(%dot.1)
}

%fused_transpose (p0.1: f32[8,8]) -> f32[8,8] {
  %p0.1 = f32[8,8]{1,0} parameter(0)
  ROOT %transpose.1 = f32[8,8]{0,1} transpose(%p0.1), dimensions={1,0}
}

%fused_conv (p0.3: f32[1,8,8,1], p1.3: f32[3,3,1,1]) -> f32[1,8,8,1] {
  %p0.3 = f32[1,8,8,1]{3,2,1,0} parameter(0)
  %p1.3 = f32[3,3,1,1]{3,2,1,0} parameter(1)
  ROOT %convolution.1 = f32[1,8,8,1]{3,2,1,0} convolution(%p0.3, %p1.3), {conv_window}, {conv_meta}
}

%add_comp (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.9 = f32[] add(%a, %b)
}

%fused_reduce (p0.2: f32[8,8]) -> f32[8] {
  %p0.2 = f32[8,8]{1,0} parameter(0)
  %c = f32[] constant(0)
  ROOT %reduce.1 = f32[8]{0} reduce(%p0.2, %c), dimensions={1}, to_apply=%add_comp
}

ENTRY %main (x: f32[8,8], y: f32[8,8]) -> f32[8] {
  %x = f32[8,8]{1,0} parameter(0)
  %y = f32[8,8]{1,0} parameter(1)
  %ynn_fusion = f32[8,8]{1,0} fusion(%x, %y), kind=kCustom, calls=%fused_dot, {dot_meta}
  %transpose_fusion = f32[8,8]{0,1} fusion(%ynn_fusion), kind=kLoop, calls=%fused_transpose, {transpose_meta}
  %sine.2 = f32[8,8]{1,0} sine(%transpose_fusion), metadata={op_name="jit(step)/sin"}
  %ynn_fusion.7 = f32[1,8,8,1]{3,2,1,0} fusion(%x, %y), kind=kCustom, calls=%fused_conv
  %copy.5 = f32[8,8]{0,1} copy(%sine.2)
  ROOT %reduce_fusion = f32[8]{0} fusion(%sine.2), kind=kInput, calls=%fused_reduce, {reduce_meta}
}
"""
META = {  # the metadata of the lines above (kept out of them for the line length)
    "{conv_window}": "window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f",
    "{conv_meta}": 'metadata={op_name="jit(step)/jvp(Decoder)/conv_2/conv_general_dilated"}',
    "{dot_meta}": 'metadata={op_name="jit(step)/jvp(Model)/encoder/block_3/mlp/dot_general" stack_frame_id=1}',
    "{transpose_meta}": 'metadata={op_name="jit(step)/transpose(jvp(Model))/encoder/block_0/attn/transpose"}',
    "{reduce_meta}": 'metadata={op_name="jit(step)/transpose(jvp(Model))/encoder/block_12/norm/reduce_sum"}',
}
for _key, _value in META.items():
    HLO = HLO.replace(_key, _value)


def test_parse_hlo_reads_opcodes_fusion_contents_and_name_stacks():
    ins = op_profile.parse_hlo(HLO)
    assert ins["ynn_fusion"].opcode == "fusion" and ins["ynn_fusion"].kind == "kCustom"
    assert {"dot", "tanh"} <= ins["ynn_fusion"].inner
    assert ins["reduce_fusion"].inner >= {"reduce", "add"}  # through to_apply
    assert ins["sine.2"].op_name == "jit(step)/sin" and ins["sine.2"].computation == "main"
    assert ins["dot.1"].computation == "fused_dot"
    # a library fusion without metadata is named after the convolution inside it
    assert ins["ynn_fusion.7"].op_name == "jit(step)/jvp(Decoder)/conv_2/conv_general_dilated"
    assert op_profile.category(ins["ynn_fusion.7"]) == "convolution"
    # an op XLA added without a name (a layout copy) takes its operand's
    assert ins["copy.5"].op_name == "jit(step)/sin" and op_profile.category(ins["copy.5"]) == "transpose/copy"
    cats = {n: op_profile.category(ins[n]) for n in ("ynn_fusion", "transpose_fusion", "sine.2", "reduce_fusion")}
    assert cats == {
        "ynn_fusion": "matmul",
        "transpose_fusion": "transpose/copy",
        "sine.2": "elementwise",
        "reduce_fusion": "reduction",
    }
    assert op_profile.category(None) == "other"


def test_scope_splits_the_passes_and_merges_block_indices():
    assert op_profile.scope("jit(step)/jvp(Model)/encoder/block_3/mlp/dot_general") == (
        "fwd",
        "Model/encoder/block_*/mlp",
    )
    assert op_profile.scope("jit(step)/transpose(jvp(Model))/encoder/block_12/norm/reduce_sum", depth=3) == (
        "bwd",
        "Model/encoder/block_*",
    )
    assert op_profile.scope("jit(step)/sin") == ("fwd", "(top level)")


def test_op_times_sums_threads_and_skips_markers_and_control_flow():
    ins = op_profile.parse_hlo(HLO + "\n%loop = f32[] while(%x), condition=%c, body=%b\n")
    ev = [
        {"ph": "X", "name": "ynn_fusion", "dur": 10.0, "tid": 1, "args": {"hlo_op": "ynn_fusion"}},
        {"ph": "X", "name": "ynn_fusion", "dur": 5.0, "tid": 2, "args": {"hlo_op": "ynn_fusion"}},
        {"ph": "X", "name": "end: ynn_fusion", "dur": 1.0, "args": {"hlo_op": "ynn_fusion"}},
        {"ph": "X", "name": "loop", "dur": 99.0, "args": {"hlo_op": "loop"}},
        {"ph": "X", "name": "ParseArguments", "dur": 7.0},
        {"ph": "M", "name": "thread_name"},
    ]
    assert op_profile.op_times(ev, ins) == {"ynn_fusion": 15.0}
    s = op_profile.summarise({"ynn_fusion": 3000.0, "sine.2": 1000.0}, ins, steps=2)
    assert s["total_ms"] == pytest.approx(2.0)
    assert s["by_category"] == {"matmul": pytest.approx(1.5), "elementwise": pytest.approx(0.5)}
    assert s["top_ops"][0]["op"] == "ynn_fusion" and s["top_ops"][0]["scope"] == "Model/encoder/block_*/mlp"
    assert "matmul" in op_profile.format_summary(s)
    op_profile.add_cpu_time(s, cpu_seconds=0.01, steps=2)  # 5 ms of CPU per step, 2 ms in op events
    assert s["cpu_ms"] == pytest.approx(5.0) and s["unattributed_ms"] == pytest.approx(3.0)
    assert "no op event covers 3.0 ms" in op_profile.format_summary(s)


def test_a_real_trace_joins_with_the_compiled_hlo(tmp_path):
    f = jax.jit(lambda a, b: jnp.tanh(a @ b).sum(0) + jnp.sin(a).mean())
    a = jnp.ones((128, 128))
    compiled = f.lower(a, a).compile()
    compiled(a, a).block_until_ready()
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        for _ in range(2):
            compiled(a, a).block_until_ready()
    (trace,) = glob.glob(str(tmp_path / "**" / "*.trace.json.gz"), recursive=True)
    ins = op_profile.parse_hlo(compiled.as_text())
    times = op_profile.op_times(op_profile.load_trace(trace), ins)
    assert times and set(times) <= set(ins), set(times) - set(ins)  # every timed op is an HLO instruction
    cats = {op_profile.category(ins[op]) for op in times}
    assert "matmul" in cats


def test_profile_step_cli_on_a_tiny_config(tmp_path, monkeypatch, capsys):
    import profile_step

    out = tmp_path / "p.json"
    argv = ["profile_step.py", "--config", "configs/slicer.py:tiny", "--batch", "2", "--frames", "32"]
    monkeypatch.setattr(sys, "argv", argv + ["--steps", "1", "--warmup", "1", "--out", str(out)])
    monkeypatch.chdir(REPO)
    profile_step.main()
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["total_ms"] > 0 and result["by_category"] and result["top_ops"]
    assert any(r["pass"] == "bwd" for r in result["by_scope"])  # the step's backward pass is there
    assert "convolution" in result["by_category"]  # SLICER's CNN
    assert "op time per step" in printed
