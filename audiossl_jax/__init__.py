"""audiossl-jax: self-supervised pre-training of audio encoders in JAX/Flax."""
__version__ = "0.1.0"
