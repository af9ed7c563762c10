"""Logical axis names -> shardings, and host-local batches -> global arrays."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, Any]]


def _as_rules(rules: Rules) -> tuple[tuple[str, Any], ...]:
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def logical_shardings(boxed_tree: Any, mesh: jax.sharding.Mesh, rules: Rules) -> Any:
    """Shardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes (others replicated)."""
    specs = nn.get_partition_spec(boxed_tree)
    specs = jax.tree.map(
        lambda s: PartitionSpec() if s is None else s,
        specs,
        is_leaf=lambda s: s is None or isinstance(s, PartitionSpec),
    )
    return nn.logical_to_mesh_sharding(specs, mesh, _as_rules(rules))


@contextlib.contextmanager
def activation_rules(mesh: jax.sharding.Mesh, rules: Rules) -> Iterator[None]:
    """Binds the logical axis rules and the mesh, so `nn.with_logical_constraint` in a model pins
    activations while a function is traced (without both it returns its input unchanged).

    Enter it inside the jitted function: the rules are Python state read at trace time, and the
    abstract mesh may be set inside `jax.jit` (`jax.set_mesh` may not).
    """
    with nn.logical_axis_rules(_as_rules(rules)), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        yield


def with_activation_rules(fn: Callable, mesh: jax.sharding.Mesh, rules: Rules) -> Callable:
    """`fn` whose body runs inside `activation_rules(mesh, rules)`: wrap a function before `jax.jit`."""

    def wrapped(*args, **kwargs):
        with activation_rules(mesh, rules):
            return fn(*args, **kwargs)

    return wrapped


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules) -> NamedSharding:
    """Sharding of the leading (batch) dimension of every batch array."""
    axes = nn.logical_to_mesh_axes(("batch",), _as_rules(rules))
    return NamedSharding(mesh, axes)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles each host's local batch into global arrays sharded over the batch axes."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def unbox(tree: Any) -> Any:
    return nn.unbox(tree)
