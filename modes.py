"""The modes of ``main.py``, by name. Import after the device set-up (see main.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import train
from utils.registry import Registry

MODES = Registry('mode')


@MODES.register('train')
def run_train(config: Any, workdir: str | Path) -> None:
    train.train(config, workdir)
