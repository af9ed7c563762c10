"""audiossl-jax: self-supervised pre-training of audio encoders in JAX/Flax."""

import os as _os

# TensorFlow is only our data reader: keep its C++ start-up banners out of the logs (a user's own
# setting wins). oneDNN only affects TF's own float kernels, which the pipeline barely uses.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
