"""Where shared data lives: ``$FACESR_DATA``, else ``../shared/data`` beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV_VAR = 'FACESR_DATA'


def shared_data_dir() -> Path:
    """The shared data folder (may not exist; callers decide whether that is an error)."""
    return Path(os.environ.get(DATA_ENV_VAR, REPO_ROOT.parent / 'shared' / 'data'))
