"""Device mesh from the config: `mesh.shape` sizes over `mesh.axes`, one size may be -1."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fills in a -1 entry and checks that the mesh uses exactly `num_devices` devices."""
    shape = [int(s) for s in shape]
    if shape.count(-1) > 1:
        raise ValueError(f"config.mesh.shape={tuple(shape)}: at most one size may be -1")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"config.mesh.shape={tuple(shape)}: sizes must be positive or -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(
                f"config.mesh.shape={tuple(shape)}: {num_devices} devices are not divisible by the "
                f"fixed axes' product {known}"
            )
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"config.mesh.shape={tuple(shape)} needs {math.prod(shape)} devices but {num_devices} are "
            f"available (jax.devices()); change config.mesh.shape or the device count"
        )
    return tuple(shape)


def make_mesh(shape: Sequence[int], axes: Sequence[str], devices=None) -> jax.sharding.Mesh:
    """Builds a mesh with Auto axis types (linen logical partitioning needs them, see ENV.md)."""
    devices = list(jax.devices() if devices is None else devices)
    if len(shape) != len(axes):
        raise ValueError(f"config.mesh.shape={tuple(shape)} and config.mesh.axes={tuple(axes)} differ in length")
    resolved = resolve_mesh_shape(shape, len(devices))
    axis_types = (jax.sharding.AxisType.Auto,) * len(axes)
    if devices == list(jax.devices()):
        return jax.make_mesh(resolved, tuple(axes), axis_types=axis_types)
    return jax.sharding.Mesh(np.array(devices).reshape(resolved), tuple(axes), axis_types=axis_types)
