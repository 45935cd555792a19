"""Atomic, resumable checkpoints on top of orbax.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-write leaves no half checkpoint behind. Restoring tries the newest step first; if its
files are damaged (truncated, missing, garbage, an empty folder), the failure is logged with the
folder at fault and, when falling back (training), the previous step is tried. If checkpoints
exist but none can be read, :class:`CheckpointError` names them all: a run never silently
restarts from scratch. Readers (sr, eval: ``fall_back=False``) never take an older step than
asked for: an unreadable newest checkpoint is an error that says how to name a step.

Only damage counts as unreadable (:func:`is_damage`). A failure that says nothing about the
files (out of memory, an I/O error such as EIO, EAGAIN, ETIMEDOUT, ENOSPC or EACCES, an
unexpected error) raises :class:`CheckpointIOError` at once: the checkpoint may be perfectly
good, so it is neither set aside nor replaced by an older one, and rerunning may just work.

Training (``set_aside=True``) moves an unreadable checkpoint, and any leftover folder in the
way of a new save, to ``<directory>.rejected/<step>[-k]`` with a warning: orbax refuses to
write a step whose folder exists, so leaving it would stop the run again at that step, and
deleting it would destroy what may still be inspected or repaired by hand.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from utils import parallel


class CheckpointError(RuntimeError):
    """No usable checkpoint, although checkpoints exist (or a restore does not fit the model)."""


class CheckpointIOError(RuntimeError):
    """A restore failed for a reason other than damaged files (memory, I/O, unexpected).

    Not a :class:`CheckpointError`: code that handles "no usable checkpoint" (falling back,
    setting aside) must not handle this one, since the checkpoint itself may be fine.
    """


# Errno values that mean a file or folder is not there (or not of the kind expected): the
# checkpoint is incomplete. Any other OS error (EIO, EAGAIN, ETIMEDOUT, ENOMEM, ENOSPC, EACCES,
# ...) is a failure of the machine, not of the files.
_MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR})
# How tensorstore words those in its messages ("[OS error 2: ENOENT No such file ...]").
_MISSING_WORDS = (
    'ENOENT',
    'ENOTDIR',
    'EISDIR',
    'No such file',
    'Not a directory',
    'Is a directory',
)
# Tensorstore raises ValueError('<absl status code>: ...'). These codes are what damaged files
# give (probed by damaging checkpoints: DATA_LOSS for truncated or garbage files, NOT_FOUND for
# missing ones); the others (RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED,
# PERMISSION_DENIED, UNKNOWN, ...) describe the machine.
_DAMAGE_STATUSES = frozenset(
    {'DATA_LOSS', 'NOT_FOUND', 'INVALID_ARGUMENT', 'OUT_OF_RANGE', 'FAILED_PRECONDITION'}
)
_STATUS = re.compile(r'^([A-Z_]+): ')
# What orbax and tensorstore raise for damaged files: ValueError (tensorstore's statuses,
# orbax's structure checks, json.JSONDecodeError of a garbage _METADATA), KeyError (a _METADATA
# of another layout), FileNotFoundError / NotADirectoryError / IsADirectoryError (a file or
# folder missing or replaced).
_DAMAGE_TYPES = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from or while handling."""
    chain: list[BaseException] = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _is_machine_failure(err: BaseException) -> bool:
    """Whether ``err`` says something failed on this machine, not in the files."""
    if isinstance(err, MemoryError):
        return True
    if isinstance(err, OSError) and not isinstance(err, _DAMAGE_TYPES):
        return err.errno not in _MISSING_ERRNOS
    message = str(err)
    status = _STATUS.match(message)
    if status and status.group(1) not in _DAMAGE_STATUSES:
        return True
    # An OS error that tensorstore reported under a damage status (older versions give EIO as
    # FAILED_PRECONDITION): the errno decides.
    os_error = message.find('[OS error')
    return os_error >= 0 and not any(w in message[os_error:] for w in _MISSING_WORDS)


def is_damage(err: BaseException) -> bool:
    """Whether a restore failure means the checkpoint's files are damaged (so that an older
    step may be used instead): a damage type, and nothing in its chain says the machine
    failed. Unknown errors are not damage: moving a good checkpoint aside loses training."""
    chain = _chain(err)
    return isinstance(err, _DAMAGE_TYPES) and not any(_is_machine_failure(e) for e in chain)


def _describe(err: BaseException) -> str:
    """``Type: message`` on one line, without tensorstore's long spec of what it opened."""
    message = str(err).split(' [tensorstore_spec=')[0]
    return f'{type(err).__name__}: ' + ' '.join(message.split())


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
        """Checkpoint ``step`` in the structure (and shardings) of ``target``.

        Raises :class:`CheckpointError` when its files are damaged, :class:`CheckpointIOError`
        for any other failure (module doc), both naming the folder.
        """
        template = flax.serialization.to_state_dict(target)
        try:
            tree = self._manager.restore(step, args=ocp.args.StandardRestore(_abstract(template)))
        except Exception as err:  # orbax/tensorstore raise many types: classified, re-raised.
            folder = self.step_dir(step)
            if is_damage(err):
                raise CheckpointError(f'cannot read checkpoint {folder}: {_describe(err)}') from err
            raise CheckpointIOError(
                f'cannot read checkpoint {folder} ({_describe(err)}), not because its files are '
                'damaged (memory, I/O or an unexpected error): nothing was set aside and no '
                'older checkpoint was tried; fix the cause and run again'
            ) from err
        return flax.serialization.from_state_dict(target, tree)

    def restore_latest(self, target: Any, fall_back: bool | None = None) -> Any | None:
        """The newest checkpoint, or None when there is none at all.

        ``fall_back`` (default: ``set_aside``, i.e. training): when the newest checkpoint's
        files are damaged, use the newest readable older one (training then retrains the steps
        after it). Readers pass False: an output must come from the step asked for, so a
        damaged newest checkpoint raises :class:`CheckpointError` saying how to name an older
        step. :class:`CheckpointIOError` (not damage) always propagates, nothing moved.
        """
        fall_back = self.set_aside if fall_back is None else fall_back
        steps = self.steps()
        failures = []
        for step in reversed(steps):
            try:
                state = self.restore(step, target)
            except CheckpointError as err:
                if not fall_back:
                    raise self._newest_unreadable(err, steps) from err
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

    def _newest_unreadable(self, err: CheckpointError, steps: list[int]) -> CheckpointError:
        """The error of a reader whose newest checkpoint is damaged: it names the folder and
        the config fields that pick another step (readers do not fall back on their own)."""
        older = steps[:-1]
        return CheckpointError(
            f'{err}; the newest checkpoint is unreadable and no older one is used unless asked '
            f'for: name a step with --config.sr.checkpoint=STEP (sr) or '
            f'--config.eval.checkpoint=STEP (eval) (older steps in {self.directory}: '
            f'{older or "none"}), or move {self.step_dir(steps[-1])} away'
        )

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
