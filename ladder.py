"""The models of one ``--mode sr`` run: a size ladder (``sr.ladder``, ``--sr.model auto``).

A face in a photo is restored best by the model whose LR side is nearest the face's own size
(issue 22): shrinking a 30 px face into a 16x16 LR crop throws away what the photo has, and
enlarging a 7 px face into it invents a blurred LR the model never trained on. ``sr.ladder``
lists models of different LR sizes (shipped names or run / package folders) beside the run's
own; each face goes to one of them (``photos.choose_rung``), and the manifest records which
and why. The run's own model (``--workdir``, or the shipped primary of ``auto``) is rung 0:
it takes the aligned crops, the eval split, and gives the manifest's checkpoint.

Decisions: the rungs must share the HR side and channels (the SR crops are then alike and the
paste's feather is one width), their LR sides must differ, and guidance (SRDG) is one
model's: a ladder with ``guidance.attributes`` is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import ml_collections

import pretrained
import runs
from photos import Rung


@dataclasses.dataclass(frozen=True)
class Model:
    """One model of the run: its name, its complete config (the run's ``sr`` options) and its
    folder."""

    name: str
    config: ml_collections.ConfigDict
    workdir: Path

    @property
    def rung(self) -> Rung:
        data = self.config.data
        return Rung(self.name, int(data.image_size) // int(data.downscale), int(data.image_size))


def _entry(name: str) -> tuple[ml_collections.ConfigDict, Path]:
    """The config and folder of ladder entry ``name``: a shipped model or a folder."""
    if name in pretrained.available():
        return pretrained.load_config(name), pretrained.package_dir(name)
    folder = Path(name)
    run = runs.Run.open(folder)
    if not run.has_config():
        raise ValueError(
            f'sr.ladder entry {name!r} is neither a shipped model {pretrained.available()} nor '
            'a run or package folder'
        )
    return run.config(), folder


def ladder_names(ladder: Any) -> tuple[str, ...]:
    """``sr.ladder`` as entry names, in order, without repeats: a tuple or a string, entries
    may hold commas (``--config.sr.ladder=a,b`` arrives as ``('a,b',)``)."""
    items = (ladder,) if isinstance(ladder, str) else tuple(ladder)
    names = [n.strip() for item in items for n in str(item).split(',') if n.strip()]
    return tuple(dict.fromkeys(names))


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def resolve(config: ml_collections.ConfigDict, workdir: str | Path) -> list[Model]:
    """The run's models: ``config`` in ``workdir`` first, then the other ``sr.ladder``
    entries (the run's own folder, if listed, only once). Checks the rungs agree (module
    doc) before anything is loaded."""
    workdir = Path(workdir)
    models = [Model(config.sr.model or str(workdir), config, workdir)]
    for name in ladder_names(config.sr.ladder):
        entry, folder = _entry(name)
        if any(_same_folder(folder, m.workdir) for m in models):
            continue
        entry.sr = ml_collections.ConfigDict(config.sr.to_dict())
        models.append(Model(name, entry, folder))
    _check(models, config)
    return models


def _check(models: list[Model], config: ml_collections.ConfigDict) -> None:
    if len(models) == 1:
        return
    if tuple(config.guidance.attributes):
        raise ValueError('sr.ladder: guidance (guidance.attributes) is one model\'s; give one '
                         'model (no sr.ladder) to guide')  # fmt: skip
    first, sizes = models[0], {}
    for model in models:
        rung, data = model.rung, model.config.data
        if (
            rung.hr_size != first.rung.hr_size
            or data.num_channels != first.config.data.num_channels
        ):
            raise ValueError(
                f'sr.ladder: {model.name} makes {rung.hr_size} px faces of {data.num_channels} '
                f'channels, {first.name} {first.rung.hr_size} px of '
                f'{first.config.data.num_channels}: the models of a ladder must agree'
            )
        if rung.lr_size in sizes:
            raise ValueError(
                f'sr.ladder: {model.name} and {sizes[rung.lr_size]} both take {rung.lr_size} px '
                'LR faces: give one model per LR size'
            )
        sizes[rung.lr_size] = model.name
