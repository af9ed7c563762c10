"""The interface every pre-training method implements (`objectives/registry.py` builds one by name).

A method ("objective") bundles an encoder and its self-supervised loss as pure functions. The train
loop (`audiossl_jax.train`) knows nothing else about a method:

* `init(rng, batch)` returns `{"params": trainable pytree, "aux": non-trainable pytree}`. Leaves may be
  `flax.linen.LogicallyPartitioned` boxes (from `nn.with_logical_partitioning` or wrapped by hand);
  the loop turns those logical axis names into shardings and unboxes them. `aux` holds whatever is
  not trained by the optimizer: an EMA teacher, BatchNorm statistics, a queue of negatives. It may be
  `{}`.
* `loss(params, aux, batch, rng, step)` returns `(loss, (metrics, aux))`: a scalar loss to minimise,
  a flat dict of scalar metrics, and `aux` as updated by the forward pass (e.g. batch statistics).
  It is differentiated with respect to `params` only.
* `update_aux(params, aux, batch_out, step)` runs after the optimizer step with the new params: EMA
  teacher updates, queue pushes. `batch_out` is whatever the loss put in `metrics["_carry"]` (popped
  by the loop before logging), e.g. the keys to enqueue.
* `embed(params, aux, features, valid)` maps features [batch, time, mel] and a validity mask
  [batch, time] (True = real frame) to `{"frames": [batch, time', dim'], "valid": [batch, time'],
  "clip": [batch, dim]}` (frames in time order, which of them cover real input, one vector per clip)
  with the encoder in inference mode; probes and `audiossl embed` use only this.

An objective may also define `progress_keys`, the metric names the progress bar shows next to the
loss, and these hooks, which the loop uses when present (fine-tuning, `objectives/finetune.py`, has all
three): `lr_scales(params)` (a per-leaf LR multiplier tree, the optimizer's last stage),
`warm_start(state, shardings, mesh)` (the state of a new run, before step 1, e.g. with pre-trained
weights restored) and `logits(params, aux, features, valid)` (in-loop evaluation scores the objective
as a classifier, `evaluate/classifier_eval.py`, instead of probing `embed`). A method whose encoder can
be fine-tuned defines `encoder_variables(params, aux)` and `encode(variables, features, valid, *,
train, rng)` -> (the encoder's outputs: `frames`, `valid`, `clip` and, for an encoder with a CLS token,
`cls` (`models/factory.py`); updated non-param collections).

Batches are dicts of arrays: `features` float32 [batch, time, mel] (normalised), `valid` bool
[batch, time], `labels` float32 [batch, classes] (multi-hot; ignored by pre-training).
"""

from __future__ import annotations

from typing import Any, Protocol

import jax

PyTree = Any
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class Objective(Protocol):
    """A self-supervised method: encoder + loss as pure functions (see module docstring)."""

    name: str

    def init(self, rng: jax.Array, batch: Batch) -> dict[str, PyTree]: ...

    def loss(
        self, params: PyTree, aux: PyTree, batch: Batch, rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, tuple[Metrics, PyTree]]: ...

    def update_aux(self, params: PyTree, aux: PyTree, carry: PyTree, step: jax.Array) -> PyTree: ...

    def embed(self, params: PyTree, aux: PyTree, features: jax.Array, valid: jax.Array) -> dict[str, jax.Array]: ...
