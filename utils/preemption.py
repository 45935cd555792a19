"""Preemption (SIGTERM): checkpoint first, skip snapshots, exit promptly.

A preempted TPU or spot VM gets about 30 s between SIGTERM and the kill. The training loop
polls :class:`PreemptionFlag` after every step; work that can run long in one XLA call (a
sample snapshot: hours for PC with 2000 steps at 128x128) runs through :func:`run_abandonable`,
which returns as soon as the signal arrives. A computation abandoned that way cannot be
cancelled, and a Python interpreter that exits while XLA runs in another thread aborts, so the
driver raises :class:`Preempted` and ``main.py`` ends the process with ``os._exit`` once the
checkpoint is on disk.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Preempted(Exception):  # noqa: N818 (an event, not an error)
    """Raised after a preemption abandoned a running computation; the process must end now."""


class PreemptionFlag:
    """Set by SIGTERM while :meth:`installed`; the loop checkpoints and stops at the next step."""

    def __init__(self) -> None:
        self.raised = False

    def _handler(self, signum: int, frame: Any) -> None:
        del frame
        logging.warning('received signal %d: checkpointing and stopping', signum)
        self.raised = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[PreemptionFlag]:
        previous = signal.signal(signal.SIGTERM, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)


def run_abandonable(fn: Callable[[], None], flag: PreemptionFlag, poll_s: float = 0.2) -> bool:
    """Runs ``fn`` in a worker thread; returns True once it finished, False if ``flag`` was
    raised first (``fn`` then still runs in the background: raise :class:`Preempted`).

    Errors of ``fn`` are re-raised here. The main thread waits in ``join`` with a timeout, which
    lets the SIGTERM handler run while XLA computes.
    """
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as err:  # Re-raised in the calling thread below.
            errors.append(err)

    worker = threading.Thread(target=target, name='abandonable', daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(poll_s)
        if flag.raised and worker.is_alive():
            return False
    if errors:
        raise errors[0]
    return True
