"""Device mesh and batch sharding: data parallelism is built here and used at the edges only."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices: Any = None, axis: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all global devices) with an automatic axis type."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    # Explicit axis types (jax.make_mesh's default) reject a U-Net's reshapes on sharded arrays.
    return Mesh(devices, (axis,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh, axis: str = DATA_AXIS) -> NamedSharding:
    return NamedSharding(mesh, P(axis))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(
    local_batch: dict[str, np.ndarray], mesh: Mesh, axis: str = DATA_AXIS
) -> dict[str, jax.Array]:
    """Assembles each host's slice of the batch into one global array split over ``axis``."""
    sharding = batch_sharding(mesh, axis)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places ``tree`` on every device of ``mesh``."""
    return jax.device_put(tree, replicated_sharding(mesh))


def check_divisible(global_batch: int, mesh: Mesh, key: str = 'config.training.batch_size') -> None:
    """Fails, naming ``key``, when the global batch cannot be split evenly over the mesh."""
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(f'{key}={global_batch} is not divisible by the {n} devices of the mesh')
