"""audiossl-jax: self-supervised pre-training of audio encoders in JAX/Flax."""

import os as _os

from audiossl_jax import xla_cpu_flags as _xla_cpu_flags

# TensorFlow is only our data reader: keep its C++ start-up banners out of the logs (a user's own
# setting wins). oneDNN only affects TF's own float kernels, which the pipeline barely uses.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# XLA:CPU convolutions by XLA rather than YNNPACK on AVX2 CPUs (xla_cpu_flags.py); read when JAX
# starts its backend, so import audiossl_jax before running any JAX computation.
_os.environ["XLA_FLAGS"] = _xla_cpu_flags.with_cpu_flags(
    _os.environ.get("XLA_FLAGS", ""), _xla_cpu_flags.jaxlib_version(), _xla_cpu_flags.cpu_features()
)

__version__ = "0.1.0"
