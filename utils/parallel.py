"""Device mesh and batch sharding: data parallelism is built here and used at the edges only."""

from __future__ import annotations

import logging
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


def devices_for_batch(batch_sizes: dict[str, int], devices: Any = None) -> list[Any]:
    """The most devices, the same number on every host, that split every batch evenly.

    ``batch_sizes`` maps a config key to a global batch size. A machine whose device (core)
    count does not divide a batch uses fewer devices, with a warning, rather than failing:
    a user never has to pick batch sizes for the machine. Raises ``ValueError`` naming the
    keys when no count works (a batch not divisible by the host count).
    """
    devices = list(jax.devices() if devices is None else devices)
    by_host: dict[int, list[Any]] = {}
    for device in devices:
        by_host.setdefault(device.process_index, []).append(device)
    hosts = len(by_host)
    per_host = min(len(v) for v in by_host.values())
    sizes = batch_sizes.values()
    fits = [k for k in range(per_host, 0, -1) if all(b % (k * hosts) == 0 for b in sizes)]
    if not fits:
        raise ValueError(f'{_describe(batch_sizes)}: each must be divisible by the {hosts} hosts')
    chosen = [d for host in sorted(by_host) for d in by_host[host][: fits[0]]]
    if len(chosen) < len(devices):
        logging.warning(
            'using %d of the %d devices: the largest count that divides %s',
            len(chosen), len(devices), _describe(batch_sizes),
        )  # fmt: skip
    return chosen


def _describe(batch_sizes: dict[str, int]) -> str:
    return ', '.join(f'config.{k}={v}' for k, v in batch_sizes.items())


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
