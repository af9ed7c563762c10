"""Gumbel-softmax product quantizer (wav2vec 2.0; fairseq's GumbelVectorQuantizer).

x [B, T, d] -> logits over G groups x V codewords (one linear layer) -> per group one codeword of
width d_code / G: a hard Gumbel-softmax sample in training (one-hot forward, soft gradient:
straight-through), the argmax in inference -> concatenate the G codewords [B, T, d_code] -> linear to
`out_dim` (wav2vec 2.0's `project_q`).

Also returned: `prob_perplexity`, the perplexity of the soft distribution softmax(logits) averaged over
the selected frames, summed over groups (the diversity loss is (G V - prob_perplexity) / (G V));
`code_perplexity`, the same for the hard argmax assignments (logging only); the integer `codes`
[B, T, G] of the selected codewords (targets with equal codes are equal vectors).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PERPLEXITY_EPS = 1e-7  # inside the log, as fairseq


def gumbel_temperature(step: jax.Array, max_temp: float, min_temp: float, decay: float) -> jax.Array:
    """`max(max_temp * decay ** step, min_temp)` (wav2vec 2.0: 2 -> 0.5, decay 0.999995 per update)."""
    # log(decay) in float64 on the host: float32(0.999995) ** step drifts by ~1e-3 at step 1e5.
    step = jnp.asarray(step, jnp.float32)
    return jnp.maximum(max_temp * jnp.exp(step * math.log(decay)), min_temp)


def perplexity(probs: jax.Array, weights: jax.Array) -> jax.Array:
    """Sum over groups of exp(entropy) of the weighted mean distribution.

    probs [..., G, V] (rows of a distribution), weights [...] (0/1 frame selection) -> scalar.
    """
    w = weights.astype(jnp.float32)[..., None, None]
    mean = jnp.sum(probs.astype(jnp.float32) * w, axis=tuple(range(probs.ndim - 2)))
    mean = mean / jnp.maximum(jnp.sum(w), 1.0)
    entropy = -jnp.sum(mean * jnp.log(mean + PERPLEXITY_EPS), axis=-1)
    return jnp.sum(jnp.exp(entropy))


def straight_through_gumbel(logits: jax.Array, rng: jax.Array, temperature: jax.Array) -> jax.Array:
    """Hard one-hot sample of softmax((logits + Gumbel noise) / temperature) along the last axis;
    the gradient is that of the soft sample (torch's `gumbel_softmax(hard=True)`)."""
    gumbel = jax.random.gumbel(rng, logits.shape, jnp.float32)
    soft = jax.nn.softmax((logits.astype(jnp.float32) + gumbel) / temperature, axis=-1)
    hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1], dtype=soft.dtype)
    return soft + jax.lax.stop_gradient(hard - soft)


class GumbelQuantizer(nn.Module):
    """Product quantizer with `num_groups` codebooks of `num_vars` codewords (see module docstring)."""

    num_groups: int = 2  # G
    num_vars: int = 320  # V codewords per group
    code_dim: int = 256  # d_code: width of the concatenated codewords (each codeword d_code / G)
    out_dim: int = 256  # width after the output projection (wav2vec 2.0's final_dim)
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32
    # Frozen code assignment (BEST-RQ, Chiu et al. 2022): the logits projection gets no gradient and
    # codes are its argmax (no Gumbel noise), so the codes are a fixed random partition of the input;
    # the codebook and the output projection still learn. Weight decay scales the frozen projection
    # uniformly, which leaves every argmax unchanged.
    frozen_assignment: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, weights: jax.Array, temperature: jax.Array, deterministic: bool
    ) -> dict[str, jax.Array]:
        """x [B, T, d]; weights [B, T] selects the frames that count in the perplexities.

        Needs the `gumbel` rng collection when not deterministic.
        """
        if self.code_dim % self.num_groups:
            raise ValueError(f"quantizer code_dim={self.code_dim} is not divisible by num_groups={self.num_groups}")
        groups, num_vars = self.num_groups, self.num_vars
        logits = nn.Dense(
            groups * num_vars,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="logits",
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed", "codebook")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("codebook",)),
        )(x)
        logits = logits.astype(jnp.float32).reshape(*x.shape[:-1], groups, num_vars)
        if self.frozen_assignment:
            logits = jax.lax.stop_gradient(logits)

        codes = jnp.argmax(logits, axis=-1)
        hard = jax.nn.one_hot(codes, num_vars, dtype=jnp.float32)
        prob_perplexity = perplexity(jax.nn.softmax(logits, axis=-1), weights)
        code_perplexity = perplexity(hard, weights)
        if deterministic or self.frozen_assignment:
            assignment = hard
        else:
            assignment = straight_through_gumbel(logits, self.make_rng("gumbel"), temperature)
            codes = jnp.argmax(assignment, axis=-1)

        codebook = self.param(
            "codebook",
            nn.with_logical_partitioning(nn.initializers.uniform(1.0), ("codebook", None)),
            (groups * num_vars, self.code_dim // groups),
            self.param_dtype,
        )
        codebook = codebook.astype(self.dtype).reshape(groups, num_vars, self.code_dim // groups)
        quantized = jnp.einsum("...gv,gvc->...gc", assignment.astype(self.dtype), codebook)
        quantized = quantized.reshape(*x.shape[:-1], self.code_dim)
        quantized = nn.Dense(
            self.out_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out_projection",
            kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), (None, "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        )(quantized)
        return {
            "quantized": quantized,
            "codes": codes,
            "prob_perplexity": prob_perplexity,
            "code_perplexity": code_perplexity,
        }
