"""Atomic, resumable checkpoints on top of orbax.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-write leaves no half checkpoint behind. Restoring tries the newest step first; if it
cannot be read (truncated or corrupt files), the failure is logged with the folder at fault and
the previous step is tried. If checkpoints exist but none can be read, :class:`CheckpointError`
names them all: a run never silently restarts from scratch.

Training (``set_aside=True``) moves an unreadable checkpoint, and any leftover folder in the
way of a new save, to ``<directory>.rejected/<step>[-k]`` with a warning: orbax refuses to
write a step whose folder exists, so leaving it would stop the run again at that step, and
deleting it would destroy what may still be inspected or repaired by hand.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from utils import parallel


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


def rejected_dir(directory: str | Path) -> Path:
    """Where unreadable checkpoints of ``directory`` are set aside (a sibling folder)."""
    directory = Path(directory).absolute()
    return directory.with_name(directory.name + '.rejected')


def set_aside(step_dir: Path, reason: str) -> Path:
    """Moves ``step_dir`` into :func:`rejected_dir` (never overwriting); returns the new path."""
    target_dir = rejected_dir(step_dir.parent)
    target_dir.mkdir(parents=True, exist_ok=True)
    target, k = target_dir / step_dir.name, 1
    while target.exists():
        target, k = target_dir / f'{step_dir.name}-{k}', k + 1
    os.replace(step_dir, target)
    logging.warning('set aside checkpoint %s as %s: %s', step_dir, target, reason)
    return target


class Checkpointer:
    """Saves and restores a flax-serializable training state under ``directory``.

    ``set_aside`` (training only; readers leave files alone): unreadable checkpoints found by
    :meth:`restore_latest`, and folders in the way of :meth:`save`, are moved aside (module doc).
    """

    def __init__(
        self, directory: str | Path, keep: int, async_save: bool = True, set_aside: bool = False
    ):
        self.directory = Path(directory).absolute()
        self.set_aside = set_aside
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(self.directory, options=self._options)

    def _reopen(self) -> None:
        """A fresh manager: after a failed restore orbax may keep a wrong guess of the layout
        (an empty step folder makes it expect several items in every step)."""
        self._manager.close()
        self._manager = ocp.CheckpointManager(self.directory, options=self._options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any) -> None:
        """Starts writing ``state`` as checkpoint ``step`` (asynchronously; see :meth:`wait`)."""
        tree = flax.serialization.to_state_dict(state)
        if self.set_aside and self.step_dir(step).exists():
            # Not a checkpoint orbax lists (restore_latest sets those aside): an empty or
            # uncommitted folder, in the way of this save.
            self._set_aside([step], 'its folder is in the way of a new save')
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
                self._reopen()
                continue
            logging.info('restored checkpoint %s', self.step_dir(step))
            if self.set_aside and failures:
                self._set_aside([s for s in steps if s > step], 'unreadable')
            return state
        if failures:
            raise CheckpointError(
                'no readable checkpoint in ' + str(self.directory) + ':\n' + '\n'.join(failures)
            )
        return None

    def _set_aside(self, steps: list[int], reason: str) -> None:
        """Moves these steps' folders aside (process 0; every process then waits for it)."""
        if jax.process_index() == 0:
            for step in steps:
                if self.step_dir(step).exists():
                    set_aside(self.step_dir(step), reason)
        parallel.barrier(f'checkpoint_set_aside_{"_".join(map(str, steps))}')
        self._reopen()

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
