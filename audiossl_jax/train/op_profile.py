"""Where a compiled step's time goes: `jax.profiler` op times joined with the compiled HLO.

`StepProfiler` traces a window of steps of a training run (`config.train.profile_start` /
`profile_steps`) and writes the tables below next to the trace; bench/profile_step.py does the same
for a config's step on synthetic data. The parsing is pure functions over text, tested without a
profiler run:

* `parse_hlo(text)`: {instruction name: Instruction} for every instruction of every computation of
  `compiled.as_text()`: opcode, fusion kind, the opcodes inside a fusion (transitively) and the
  `op_name` metadata (the JAX name stack, e.g. `jit(f)/transpose(jvp(Model))/encoder/block_1/mlp/dot_general`).
  An op without one takes that of the op inside it (a library fusion) or of its nearest named
  operand (copies and gradient convolutions that XLA adds).
* `op_times(trace)`: total microseconds per HLO op (`args.hlo_op`) of a Perfetto trace
  (`jax.profiler.trace(..., create_perfetto_trace=True)`), summed over threads. A control-flow op
  (while / call / conditional) is left out: the ops of its body have their own events.
* `category(instruction)`: matmul | convolution | transpose/copy | reduction | gather/scatter | rng |
  elementwise | other.
* `scope(op_name, depth)`: (pass, module path): `bwd` if the name passes through autodiff's
  `transpose(...)`, else `fwd`; the path with jit/jvp/transpose wrappers removed, block indices
  merged (`block_3` -> `block_*`) and cut to `depth` components.
* `summarise(times, instructions, steps, depth, top)`: per-step tables (by category, by scope, by
  both, top ops).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable

import jax
from tqdm import tqdm

CONTROL_FLOW = {"while", "call", "conditional"}
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?\s([a-z][a-z0-9\-]*)\(")
_CALLS = re.compile(r"(?:calls|to_apply)=%([\w.\-]+)")
_KIND = re.compile(r"kind=(k\w+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_OPERAND = re.compile(r"%([\w.\-]+)")
_WRAPPER = re.compile(r"^(?:jit|jvp|transpose|vmap|pjit|remat|checkpoint|custom_jvp_call|custom_vjp_call)\((.*)\)$")
_BLOCK_INDEX = re.compile(r"(_)(\d+)$")

MATMUL_OPS = {"dot"}
CONV_OPS = {"convolution"}
LAYOUT_OPS = {"transpose", "copy", "bitcast", "reshape", "parameter", "constant", "broadcast", "slice", "concatenate"}
LAYOUT_CORE = {"transpose", "copy", "concatenate", "slice"}
REDUCE_OPS = {"reduce", "reduce-window", "select-and-scatter"}
GATHER_OPS = {"gather", "scatter", "dynamic-slice", "dynamic-update-slice"}
RNG_OPS = {"rng-bit-generator", "rng"}


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    computation: str
    kind: str = ""
    op_name: str = ""
    inner: frozenset = frozenset()  # opcodes inside a fusion, transitively


def parse_hlo(text: str) -> dict[str, Instruction]:
    """{name: Instruction} of every instruction in the HLO module text (`compiled.as_text()`)."""
    instructions: dict[str, Instruction] = {}
    calls: dict[str, list[str]] = {}
    ops_of: dict[str, set[str]] = defaultdict(set)
    named_in: dict[str, str] = {}  # computation -> an op_name inside it (a library fusion may have none)
    operands: dict[str, list[str]] = {}
    computation = ""
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head:
            computation = head.group(1)
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, opcode = m.group(1), m.group(2)
        ins = Instruction(name=name, opcode=opcode, computation=computation)
        if k := _KIND.search(line):
            ins.kind = k.group(1)
        if o := _OP_NAME.search(line):
            ins.op_name = o.group(1)
        calls[name] = _CALLS.findall(line)
        args = line[m.end() :].split(")", 1)[0]
        operands[name] = _OPERAND.findall(args)
        ops_of[computation].add(opcode)
        if ins.op_name and (computation not in named_in or opcode in ("dot", "convolution")):
            named_in[computation] = ins.op_name
        instructions[name] = ins
    called_by_comp: dict[str, set[str]] = defaultdict(set)
    for ins in instructions.values():
        called_by_comp[ins.computation].update(calls[ins.name])

    def inner_ops(comp: str, seen: set[str]) -> set[str]:
        if comp in seen:
            return set()
        seen.add(comp)
        ops = set(ops_of.get(comp, ()))
        for sub in called_by_comp.get(comp, ()):
            ops |= inner_ops(sub, seen)
        return ops

    for ins in instructions.values():
        if ins.opcode == "fusion" or (ins.opcode == "custom-call" and calls[ins.name]):
            ops: set[str] = set()
            for comp in calls[ins.name]:
                ops |= inner_ops(comp, set())
            ins.inner = frozenset(ops)
            if not ins.op_name:
                ins.op_name = next((named_in[c] for c in calls[ins.name] if c in named_in), "")
    for ins in instructions.values():  # ops XLA added (layout copies, gradient convolutions): the
        if not ins.op_name:  # name of the nearest named operand, up to 3 hops back
            frontier = list(operands.get(ins.name, ()))
            for _ in range(3):
                named = [instructions[o].op_name for o in frontier if o in instructions and instructions[o].op_name]
                if named:
                    ins.op_name = named[0]
                    break
                frontier = [x for o in frontier for x in operands.get(o, ())]
    return instructions


def category(ins: Instruction | None) -> str:
    if ins is None:
        return "other"
    ops = set(ins.inner) | {ins.opcode}
    if ops & MATMUL_OPS:
        return "matmul"
    if ops & CONV_OPS:
        return "convolution"
    if ops & GATHER_OPS:
        return "gather/scatter"
    if ops & RNG_OPS:
        return "rng"
    if ops & REDUCE_OPS:
        return "reduction"
    if ops <= LAYOUT_OPS | {"fusion"} and ops & LAYOUT_CORE:
        return "transpose/copy"
    if ins.opcode in ("custom-call", "sort", "all-reduce", "infeed", "outfeed"):
        return "other"
    return "elementwise"


def _unwrap(component: str) -> tuple[str, bool]:
    """('Model', True) for 'transpose(jvp(Model))': the innermost name, and whether autodiff's
    transpose (the backward pass) wrapped it."""
    backward = False
    while m := _WRAPPER.match(component):
        backward |= component.startswith("transpose(")
        component = m.group(1)
    return component, backward


def scope(op_name: str, depth: int = 6) -> tuple[str, str]:
    """('fwd' | 'bwd', module path) of an op's JAX name stack; the last component (the primitive)
    is dropped, `block_3` becomes `block_*`."""
    parts = [p for p in op_name.split("/") if p]
    path, backward = [], False
    for p in parts[:-1] if len(parts) > 1 else parts:
        name, bwd = _unwrap(p)
        backward |= bwd
        if p.startswith("jit(") or name in ("wrapped", "main", "") or name.startswith("args["):
            continue  # jit(step), jit(silu): function boundaries, not modules
        path.append(_BLOCK_INDEX.sub(r"\1*", name) if name.startswith(("block", "layer")) else name)
    return ("bwd" if backward else "fwd"), "/".join(path[:depth]) or "(top level)"


def load_trace(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def op_times(events: list[dict], instructions: dict[str, Instruction] | None = None) -> dict[str, float]:
    """Total microseconds per HLO op over all threads; control-flow ops are left out."""
    times: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("ph") != "X":
            continue
        op = (e.get("args") or {}).get("hlo_op")
        if not op or str(e.get("name", "")).startswith("end: "):
            continue
        if instructions is not None and op in instructions and instructions[op].opcode in CONTROL_FLOW:
            continue
        times[op] += float(e.get("dur", 0.0))
    return dict(times)


def summarise(
    times: dict[str, float], instructions: dict[str, Instruction], steps: int, depth: int = 6, top: int = 25
) -> dict:
    """Milliseconds per step by category, by (pass, scope) and the `top` ops."""
    by_cat: dict[str, float] = defaultdict(float)
    by_scope: dict[tuple[str, str], float] = defaultdict(float)
    by_cat_scope: dict[tuple[str, str, str], float] = defaultdict(float)
    rows = []
    for op, us in times.items():
        ins = instructions.get(op)
        ms = us / 1e3 / steps
        cat = category(ins)
        by_cat[cat] += ms
        sc = scope(ins.op_name, depth) if ins is not None and ins.op_name else ("fwd", "(unknown)")
        by_scope[sc] += ms
        by_cat_scope[(cat, *sc)] += ms
        rows.append(
            {"op": op, "ms": ms, "category": cat, "pass": sc[0], "scope": sc[1], "op_name": ins.op_name if ins else ""}
        )
    total = sum(by_cat.values())
    rows.sort(key=lambda r: -r["ms"])
    return {
        "total_ms": total,
        "by_category": dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
        "by_scope": [
            {"pass": p, "scope": s, "ms": ms} for (p, s), ms in sorted(by_scope.items(), key=lambda kv: -kv[1])
        ],
        "by_category_scope": [
            {"category": c, "pass": p, "scope": s, "ms": ms}
            for (c, p, s), ms in sorted(by_cat_scope.items(), key=lambda kv: -kv[1])
        ],
        "top_ops": rows[:top],
        "ops": len(rows),
    }


def add_cpu_time(summary: dict, cpu_seconds: float, steps: int) -> dict:
    """Adds the process CPU time per step and the part of it no op event covers: Python, thread
    pools spinning while they wait between ops, and library work that goes on after its op's event
    ends (XLA:CPU's own convolutions run on the Eigen pool after their op returns, so their time
    shows here, not under `convolution`)."""
    cpu_ms = cpu_seconds * 1e3 / steps
    summary["cpu_ms"] = cpu_ms
    summary["unattributed_ms"] = max(cpu_ms - summary["total_ms"], 0.0)
    return summary


def format_summary(summary: dict, scopes: int = 20) -> str:
    total = summary["total_ms"] or float("nan")
    out = [f"op time per step, summed over threads: {summary['total_ms']:.1f} ms ({summary['ops']} ops)"]
    if "cpu_ms" in summary:
        out.append(
            f"process CPU time per step {summary['cpu_ms']:.1f} ms, of which no op event covers "
            f"{summary['unattributed_ms']:.1f} ms (Python, thread pools spinning between ops, library work "
            "after its op returns: XLA's Eigen convolutions)"
        )
    out.append("")
    out.append(f"{'category':<16} {'ms/step':>9} {'share':>7}")
    for cat, ms in summary["by_category"].items():
        out.append(f"{cat:<16} {ms:>9.1f} {ms / total:>7.1%}")
    out += ["", f"{'pass':<5} {'scope':<60} {'ms/step':>9} {'share':>7}"]
    for row in summary["by_scope"][:scopes]:
        out.append(f"{row['pass']:<5} {row['scope'][:60]:<60} {row['ms']:>9.1f} {row['ms'] / total:>7.1%}")
    out += ["", "outside the matmuls and convolutions:", f"{'category':<15} {'pass':<5} {'scope':<52} {'ms/step':>9}"]
    rest = [r for r in summary["by_category_scope"] if r["category"] not in ("matmul", "convolution")]
    for row in rest[:scopes]:
        out.append(f"{row['category']:<15} {row['pass']:<5} {row['scope'][:52]:<52} {row['ms']:>9.1f}")
    out += ["", f"{'op':<32} {'category':<15} {'ms/step':>9}  name stack"]
    for row in summary["top_ops"]:
        out.append(f"{row['op'][:32]:<32} {row['category']:<15} {row['ms']:>9.2f}  {row['op_name'][-90:]}")
    return "\n".join(out)


def newest_trace(trace_dir: str) -> str:
    """The newest Perfetto trace (`*.trace.json.gz`) under trace_dir."""
    traces = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
    if not traces:
        raise RuntimeError(f"jax.profiler wrote no Perfetto trace under {trace_dir}")
    return traces[-1]


def profile_summary(trace_path: str, hlo_text: str, steps: int, depth: int = 6, top: int = 25) -> dict:
    """`summarise` of a trace of `steps` runs of the program whose compiled HLO is hlo_text."""
    instructions = parse_hlo(hlo_text)
    times = op_times(load_trace(trace_path), instructions)
    if not times:
        raise RuntimeError(f"{trace_path} has no events with an `hlo_op`: this backend's profiler does not name ops")
    return summarise(times, instructions, steps, depth, top)


class StepProfiler:
    """Traces steps start .. start + steps - 1 (numbered from 1, as in metrics.jsonl) of a run into
    <workdir>/profile (TensorBoard's profile plugin or Perfetto open it) and, on the first host,
    writes op_profile.json and op_profile.txt there: op time per step by category, scope and op.
    start 0: off. A run resumed past `start` traces nothing."""

    def __init__(self, workdir: str, start: int, steps: int, write: bool = True):
        self.dir = os.path.join(workdir, "profile")
        self.start, self.steps, self.write = int(start), int(steps), write
        self.active = False
        self.first = 0
        self.cpu0 = 0.0

    def before_step(self, step: int) -> None:
        """Call before running step `step` (1-based)."""
        if self.start > 0 and step == self.start and not self.active:
            os.makedirs(self.dir, exist_ok=True)
            jax.profiler.start_trace(self.dir, create_perfetto_trace=True)
            self.active, self.first = True, step
            self.cpu0 = time.process_time()

    def after_step(self, step: int, outputs, end_step: int, hlo_text: Callable[[], str]) -> None:
        """Call after step `step` was dispatched with its outputs; stops the trace after the last
        step of the window (or of the run) and writes the tables (hlo_text: the compiled step's HLO)."""
        if not self.active or (step < self.first + self.steps - 1 and step < end_step):
            return
        jax.block_until_ready(outputs)
        cpu_seconds = time.process_time() - self.cpu0
        jax.profiler.stop_trace()
        self.active = False
        if not self.write:
            return
        t0 = time.time()
        traced = step - self.first + 1
        summary = add_cpu_time(profile_summary(newest_trace(self.dir), hlo_text(), traced), cpu_seconds, traced)
        summary.update({"first_step": self.first, "last_step": step, "steps": traced})
        with open(os.path.join(self.dir, "op_profile.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(self.dir, "op_profile.txt"), "w") as f:
            f.write(f"steps {self.first}-{step}\n" + format_summary(summary) + "\n")
        tqdm.write(
            f"profiled steps {self.first}-{step}: trace and op_profile.txt in {self.dir} "
            f"({time.time() - t0:.0f} s to summarise); by category, ms per step: "
            + ", ".join(f"{k} {v:.0f}" for k, v in summary["by_category"].items())
        )

    def close(self) -> None:
        """Stops a trace still open (the run ended inside the window)."""
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
