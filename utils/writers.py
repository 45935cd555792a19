"""Metric writers: TensorBoard event files plus a JSON-lines log, on the first host only.

clu's ``metric_writers`` imports TensorFlow (../shared/STACK.md), which is not part of the
default install, so TensorBoard files are written with the pure-Python ``tensorboardX``; the
interface (``write_scalars``, ``write_images``, ``flush``, ``close``) follows clu's.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


class MetricWriter:
    """Writes scalars and images under ``logdir``; a no-op when ``enabled`` is False.

    ``resume_step``: a run resumed from a checkpoint at that step re-trains the steps after it,
    so their records from before the kill are dropped from ``metrics.jsonl`` (rewritten
    atomically) and TensorBoard is told to purge them: each step is logged once.
    """

    def __init__(self, logdir: str | Path, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.logdir = Path(logdir)
        self._tb = None
        self._jsonl = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.logdir.mkdir(parents=True, exist_ok=True)
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.logdir), purge_step=purge)
            if resume_step is not None:
                drop_after(self.logdir / 'metrics.jsonl', resume_step)
            self._jsonl = open(self.logdir / 'metrics.jsonl', 'a')  # noqa: SIM115 (closed in close)

    def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        for name, value in values.items():
            self._tb.add_scalar(name, value, step)
        self._jsonl.write(json.dumps({'step': step, 'time': time.time(), **values}) + '\n')

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """``images`` maps a name to a uint8 or [0, 1] float HWC image."""
        if not self.enabled:
            return
        for name, image in images.items():
            self._tb.add_image(name, np.asarray(image), step, dataformats='HWC')

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False


def drop_after(path: Path, step: int) -> None:
    """Removes the records of steps after ``step`` from a JSON-lines log (atomic rewrite).

    A last line cut short by a kill is dropped too (it cannot be parsed).
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get('step', 0) <= step:
            kept.append(line + '\n')
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(''.join(kept))
    os.replace(tmp, path)


def read_metrics(logdir: str | Path) -> list[dict[str, float]]:
    """The JSON-lines metric log written by :class:`MetricWriter`."""
    path = Path(logdir) / 'metrics.jsonl'
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
