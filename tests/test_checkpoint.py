"""Restore failures of ``utils.checkpoint``: damaged files against failures of the machine
(issue 19 #10), and readers that never take an older step on their own."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from utils.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointIOError,
    is_damage,
    rejected_dir,
)


def _tiny_state(value: float) -> dict:
    return {'step': np.int32(value), 'w': np.full((3, 4), value, np.float32)}


def _truncate(step_dir: Path) -> None:
    for path in step_dir.rglob('*'):
        if path.is_file() and path.stat().st_size > 0 and 'METADATA' not in path.name:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _garbage(step_dir: Path) -> None:
    for path in (step_dir / 'default' / 'd').iterdir():
        path.write_bytes(os.urandom(path.stat().st_size))


def _empty_folder(step_dir: Path) -> None:
    shutil.rmtree(step_dir)
    step_dir.mkdir()


# What each damage raises through orbax 0.12 / tensorstore 0.1 (probed): ValueError
# 'DATA_LOSS: ...', ValueError 'NOT_FOUND: ...', json.JSONDecodeError, FileNotFoundError,
# KeyError, orbax's ValueError for a folder without items.
DAMAGE = {
    'truncated_files': _truncate,
    'garbage_data': _garbage,
    'deleted_manifest': lambda d: (d / 'default' / 'manifest.ocdbt').unlink(),
    'folder_for_a_file': lambda d: [
        p.unlink() or p.mkdir() for p in (d / 'default' / 'd').iterdir()
    ],
    'garbage_metadata': lambda d: (d / 'default' / '_METADATA').write_bytes(b'\x00{garbage'),
    'deleted_metadata': lambda d: (d / 'default' / '_METADATA').unlink(),
    'other_metadata': lambda d: (d / 'default' / '_METADATA').write_text('{"a": 1}'),
    'empty_folder': _empty_folder,
}


@pytest.fixture(scope='module')
def two_steps(tmp_path_factory) -> Path:
    """Checkpoints 10 and 20 of a tiny pytree (copied by each test that damages them)."""
    directory = tmp_path_factory.mktemp('two_steps') / 'checkpoints'
    ckpt = Checkpointer(directory, keep=5, async_save=False)
    for step in (10, 20):
        ckpt.save(step, _tiny_state(step))
    ckpt.close()
    return directory


def _copy(two_steps: Path, tmp_path: Path) -> Path:
    directory = tmp_path / 'checkpoints'
    shutil.copytree(two_steps, directory)
    return directory


@pytest.mark.parametrize('kind', sorted(DAMAGE))
def test_damaged_newest_falls_back_in_training_and_stops_a_reader(kind, two_steps, tmp_path):
    """Each damage is "unreadable": training (set aside, fall back) restores step 10 and moves
    20 aside, as before; a reader raises naming the folder and how to pick a step, moving
    nothing."""
    directory = _copy(two_steps, tmp_path)
    DAMAGE[kind](directory / '20')
    reader = Checkpointer(directory, keep=None, async_save=False)
    with pytest.raises(CheckpointError) as err:
        reader.restore_latest(_tiny_state(0))  # Readers default to fall_back=False.
    reader.close()
    message = str(err.value)
    assert str(directory / '20') in message and '--config.sr.checkpoint=STEP' in message, message
    assert '--config.eval.checkpoint=STEP' in message and '[10]' in message, message
    assert (directory / '20').is_dir() and not rejected_dir(directory).exists()

    training = Checkpointer(directory, keep=5, set_aside=True)
    assert int(training.restore_latest(_tiny_state(0), fall_back=True)['step']) == 10
    training.close()
    assert (rejected_dir(directory) / '20').is_dir() and not (directory / '20').exists()


def test_reader_may_fall_back_when_asked(two_steps, tmp_path, caplog):
    directory = _copy(two_steps, tmp_path)
    _truncate(directory / '20')
    reader = Checkpointer(directory, keep=None, async_save=False)
    assert int(reader.restore_latest(_tiny_state(0), fall_back=True)['step']) == 10
    reader.close()
    assert str(directory / '20') in caplog.text
    assert (directory / '20').is_dir() and not rejected_dir(
        directory
    ).exists()  # Readers move nothing.


def _raising(error: BaseException):
    def restore(self, *args, **kwargs):
        raise error

    return restore


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


MACHINE_FAILURES = {
    'EIO': OSError(errno.EIO, 'Input/output error'),
    'EAGAIN': OSError(errno.EAGAIN, 'Resource temporarily unavailable'),
    'ETIMEDOUT': TimeoutError(errno.ETIMEDOUT, 'Connection timed out'),
    'ENOMEM': OSError(errno.ENOMEM, 'Cannot allocate memory'),
    'ENOSPC': OSError(errno.ENOSPC, 'No space left on device'),
    'EACCES': PermissionError(errno.EACCES, 'Permission denied'),
    'MemoryError': MemoryError(),
    'tensorstore_resource_exhausted': ValueError('RESOURCE_EXHAUSTED: Error reading "w/.zarray"'),
    'tensorstore_unavailable': ValueError('UNAVAILABLE: Error reading local file "d/1"'),
    # Older tensorstore reports EIO as FAILED_PRECONDITION, with the OS error in the message.
    'tensorstore_eio': ValueError(
        'FAILED_PRECONDITION: Error reading local file "d/1" [OS error: Input/output error]'
    ),
    'xla_out_of_memory': RuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating 4 bytes'),
    'unexpected': TypeError('an unexpected bug'),
    'raised_from_EIO': _raised_from(ValueError('cannot decode'), OSError(errno.EIO, 'I/O error')),
}


@pytest.mark.parametrize('kind', sorted(MACHINE_FAILURES))
def test_machine_failure_moves_nothing_and_propagates(kind, two_steps, tmp_path, monkeypatch):
    """A transient failure says nothing about the files: training neither sets the newest
    checkpoint aside nor falls back to an older step; the error names the folder."""
    directory = _copy(two_steps, tmp_path)
    error = MACHINE_FAILURES[kind]
    assert not is_damage(error)
    monkeypatch.setattr(ocp.CheckpointManager, 'restore', _raising(error))
    for fall_back in (True, False):
        ckpt = Checkpointer(directory, keep=5, set_aside=True)
        with pytest.raises(CheckpointIOError, match='nothing was set aside') as err:
            ckpt.restore_latest(_tiny_state(0), fall_back=fall_back)
        ckpt.close()
        assert str(directory / '20') in str(err.value)
        assert err.value.__cause__ is error
    assert not rejected_dir(directory).exists()
    assert Checkpointer(directory, keep=5).steps() == [10, 20]


def test_keyboard_interrupt_is_not_classified(two_steps, tmp_path, monkeypatch):
    directory = _copy(two_steps, tmp_path)
    monkeypatch.setattr(ocp.CheckpointManager, 'restore', _raising(KeyboardInterrupt()))
    ckpt = Checkpointer(directory, keep=5, set_aside=True)
    with pytest.raises(KeyboardInterrupt):
        ckpt.restore_latest(_tiny_state(0))
    ckpt.close()
    assert not rejected_dir(directory).exists()


def test_tensorstore_missing_file_is_damage():
    assert is_damage(ValueError('NOT_FOUND: Error reading "d/1" [OS error 2: ENOENT No such file]'))
    assert is_damage(ValueError('DATA_LOSS: Error decoding manifest'))
    assert is_damage(FileNotFoundError('Metadata file (named _METADATA) does not exist'))
    assert not is_damage(ValueError('NOT_FOUND: reading "d/1" [OS error 5: EIO Input/output]'))
