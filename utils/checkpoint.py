"""Atomic, resumable checkpoints on top of orbax.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-write leaves no half checkpoint behind. Restoring tries the newest step first; if it
cannot be read (truncated or corrupt files), the failure is logged with the folder at fault and
the previous step is tried. If checkpoints exist but none can be read, :class:`CheckpointError`
names them all: a run never silently restarts from scratch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """No usable checkpoint, although checkpoints exist (or a restore does not fit the model)."""


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of ``tree``: what restored arrays must look like."""

    def leaf(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x  # Already abstract (e.g. from jax.eval_shape, with a sharding).
        if isinstance(x, jax.Array):
            return ocp.utils.to_shape_dtype_struct(x)
        x = np.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    return jax.tree.map(leaf, tree)


class Checkpointer:
    """Saves and restores a flax-serializable training state under ``directory``."""

    def __init__(self, directory: str | Path, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any) -> None:
        """Starts writing ``state`` as checkpoint ``step`` (asynchronously; see :meth:`wait`)."""
        tree = flax.serialization.to_state_dict(state)
        self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)

    def wait(self) -> None:
        """Blocks until pending saves are complete on disk."""
        self._manager.wait_until_finished()

    def restore(self, step: int, target: Any) -> Any:
        """Checkpoint ``step`` in the structure (and shardings) of ``target``."""
        template = flax.serialization.to_state_dict(target)
        try:
            tree = self._manager.restore(step, args=ocp.args.StandardRestore(_abstract(template)))
        except Exception as err:  # orbax/tensorstore raise many types; re-raised with the path.
            raise CheckpointError(
                f'cannot read checkpoint {self.step_dir(step)}: {type(err).__name__}: {err}'
            ) from err
        return flax.serialization.from_state_dict(target, tree)

    def restore_latest(self, target: Any) -> Any | None:
        """The newest readable checkpoint, or None when there is none at all."""
        steps = self.steps()
        failures = []
        for step in reversed(steps):
            try:
                state = self.restore(step, target)
            except CheckpointError as err:
                logging.warning('%s; falling back to the previous checkpoint', err)
                failures.append(str(err))
                continue
            logging.info('restored checkpoint %s', self.step_dir(step))
            return state
        if failures:
            raise CheckpointError(
                'no readable checkpoint in ' + str(self.directory) + ':\n' + '\n'.join(failures)
            )
        return None

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def read_arrays(step_dir: str | Path) -> Any:
    """Every array of a checkpoint folder as numpy, whatever topology wrote it (inspection,
    export, comparing runs)."""
    item = Path(step_dir) / 'default'
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(item).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata
    )
    return jax.device_get(checkpointer.restore(item, target))
