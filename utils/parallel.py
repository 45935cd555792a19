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


def barrier(name: str, timeout_s: int = 1800) -> None:
    """Waits until every process reaches ``name``; a no-op on one host.

    Uses the coordination service of ``jax.distributed`` rather than a device collective: on
    CPU, gloo gives up setting up a collective after 30 s, and compiling a U-Net can make one
    process lag the other by more than that. Call it after compilation, before collectives.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # The public API exposes no barrier with a timeout.

    distributed.global_state.client.wait_at_barrier(f'facesr_{name}', timeout_s * 1000)
