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


@MODES.register('distill')
def run_distill(config: Any, workdir: str | Path) -> None:
    """Trains a one-step student of ``training.distill_teacher`` (``distillation.py``)."""
    import distillation

    distillation.prepare(config, workdir)
    train.train(config, workdir)


@MODES.register('sr')
def run_sr(config: Any, workdir: str | Path) -> None:
    import sr  # Written alongside; imported on use so that a mode's import cost is its own.

    sr.run(config, workdir)


@MODES.register('eval')
def run_eval(config: Any, workdir: str | Path) -> None:
    from evaluation import run as evaluation_run

    evaluation_run.run(config, workdir)


@MODES.register('stats')
def run_stats(config: Any, workdir: str | Path) -> None:
    import residual_stats

    residual_stats.run(config, workdir)


@MODES.register('train_classifier')
def run_train_classifier(config: Any, workdir: str | Path) -> None:
    import classifier_train

    classifier_train.run(config, workdir)


@MODES.register('export')
def run_export(config: Any, workdir: str | Path) -> None:
    import export

    export.run(config, workdir)
