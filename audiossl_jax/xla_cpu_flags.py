"""XLA:CPU flags the package sets at import (before JAX starts a backend; a user's own value wins).

XLA:CPU (jaxlib 0.10) hands large convolutions to YNNPACK (`--xla_cpu_experimental_ynn_fusion_type`
includes `individual_convolution`). On this project's 2-core AMD EPYC machines with AVX2 and no
AVX-512, its convolutions ran 2x slower forward and 4x slower for the weight gradient than XLA's
own, and the SLICER `local` step 1.41x slower (bench/RESULTS.md, "Where the step's time goes").
`dot,reduce` keeps YNNPACK for the matmuls and reductions (the ViT and Conformer steps ran as fast as
before) and gives the convolutions back to XLA. It is set only where it was measured: an x86 CPU
without AVX-512 (on the AVX-512 machines the earlier figures came from, YNNPACK's convolutions were
not compared), and a jaxlib version that has the flag (an unknown flag in XLA_FLAGS aborts the
process). Flags for other backends are ignored by GPU and TPU compilers.
"""

from __future__ import annotations

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_FUSION_TYPES = "dot,reduce"
MEASURED_JAXLIB = ("0.10.",)  # jaxlib versions where the flag exists and was measured


def with_cpu_flags(xla_flags: str, jaxlib_version: str, cpu_features: frozenset[str]) -> str:
    """XLA_FLAGS with the YNNPACK fusion types set to `dot,reduce` where that was measured faster
    (jaxlib 0.10, an AVX2 CPU without AVX-512), unless XLA_FLAGS already sets them."""
    if YNN_FUSION_FLAG in xla_flags or not jaxlib_version.startswith(MEASURED_JAXLIB):
        return xla_flags
    if "avx2" not in cpu_features or "avx512f" in cpu_features:
        return xla_flags
    return f"{xla_flags} {YNN_FUSION_FLAG}={YNN_FUSION_TYPES}".strip()


def jaxlib_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return ""


def cpu_features(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()
