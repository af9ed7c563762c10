"""Matrix products of the feature front ends, computed the same way whatever the thread count.

A BLAS matmul split over threads adds its partial sums in another order and can differ in the last
bit, so features (and the prepared shards, stored as float16) would depend on `--workers`, on the
machine's core count and on `OPENBLAS_NUM_THREADS`. The front ends therefore run their products on
one BLAS thread (about 1.5 ms of overhead per call). Different CPU kernels of the same BLAS
(`OPENBLAS_CORETYPE`) may still round differently: the guarantee is per machine type.
"""

from __future__ import annotations

import numpy as np
import threadpoolctl


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`a @ b` on a single BLAS thread."""
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        return a @ b
