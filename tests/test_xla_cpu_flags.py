"""audiossl_jax/xla_cpu_flags.py: the XLA:CPU flag the package sets at import, and its effect (a
large convolution is compiled by XLA, not handed to YNNPACK), in fresh processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from audiossl_jax import xla_cpu_flags

FLAG = xla_cpu_flags.YNN_FUSION_FLAG

# Compiles SLICER block 1's conv ([16, 200, 32, 32], 3x3, 32 -> 32) and its weight gradient; prints
# how many of the compiled program's convolutions YNNPACK runs.
PROBE = """
import audiossl_jax  # sets XLA_FLAGS before JAX starts its backend
import jax, jax.numpy as jnp
from audiossl_jax.train import op_profile
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
f = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=1))
ins = op_profile.parse_hlo(f.lower(jnp.ones((16, 200, 32, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text())
convs = [i for i in ins.values() if op_profile.category(i) == "convolution" and not i.computation.startswith("fused")]
print(sum(i.name.startswith("ynn") for i in convs), len(convs))
"""


AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})


def test_flag_is_added_only_where_measured_and_not_set(tmp_path):
    add = xla_cpu_flags.with_cpu_flags
    assert add("", "0.10.2", AVX2) == f"{FLAG}=dot,reduce"
    assert add("--xla_dump_to=/tmp/d", "0.10.2", AVX2) == f"--xla_dump_to=/tmp/d {FLAG}=dot,reduce"
    assert add(f"{FLAG}=dot", "0.10.2", AVX2) == f"{FLAG}=dot"  # the user's value wins
    assert add("--a=1", "0.11.0", AVX2) == "--a=1"  # an unmeasured jaxlib: untouched
    assert add("", "0.10.2", AVX2 | {"avx512f"}) == ""  # AVX-512: not measured, untouched
    assert add("", "0.10.2", frozenset()) == ""  # no /proc/cpuinfo (macOS, ARM): untouched
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 fma\nbugs\t\t: none\n")
    assert xla_cpu_flags.cpu_features(str(cpuinfo)) == frozenset({"fpu", "sse4_2", "avx2", "fma"})
    assert xla_cpu_flags.cpu_features(str(tmp_path / "missing")) == frozenset()


def _ynn_convolutions(xla_flags: str | None) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    ynn, total = map(int, out.stdout.split()[-2:])
    return ynn, total


def test_convolutions_run_in_xla_not_ynnpack():
    if not xla_cpu_flags.with_cpu_flags("", xla_cpu_flags.jaxlib_version(), xla_cpu_flags.cpu_features()):
        pytest.skip("the package leaves XLA_FLAGS alone on this CPU / jaxlib (xla_cpu_flags.py)")
    ynn, total = _ynn_convolutions(None)
    assert total >= 2 and ynn == 0, (ynn, total)  # forward and weight-gradient convolutions, none in YNNPACK
    # XLA:CPU's own default (the flag as XLA sets it) hands them to YNNPACK: the flag is what changes it
    ynn_default, _ = _ynn_convolutions(f"{FLAG}=dot,reduce,individual_convolution")
    assert ynn_default >= 1
