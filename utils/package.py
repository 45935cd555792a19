"""Model packages: a trained run reduced to what inference reads (``--mode export``).

A package is a read-only run folder, small enough to ship in the repository (``pretrained/``):

* ``config.json``: the run's config, with the sampler settings chosen at export;
* ``ema_params.msgpack``: the EMA weights (flax msgpack, float16 by default), in place of
  ``checkpoints/``;
* ``export.json``: what was exported, from where, the weight dtype, the parameter scopes kept,
  and the float16 check (marks the folder as a package);
* ``residual_stats.json`` when the SDE needs them; ``mean/`` (itself a package, pruned to the
  regression branch) when the SDE's mean is a learned ``mu(y)``; ``MODEL_CARD.md``.

Paths inside a package name its own parts relative to the package (``sde.mean_model = 'mean'``),
so that it works wherever the repository is checked out. Every reader of a run record
(:func:`read_config`, the residual statistics) resolves them here, in one place: a path field of
a package is made absolute against the package folder; a normal run's record is left as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTS_FILE = 'ema_params.msgpack'
EXPORT_FILE = 'export.json'
CONFIG_FILE = 'config.json'
MEAN_DIR = 'mean'
#: Where sr and eval write for a package (it is read-only): in the working directory, as
#: GFPGAN's 'results'.
PACKAGE_OUTPUT = 'results'
#: Config fields holding paths to other parts of a run (relative inside a package).
PATH_FIELDS = (('sde', 'mean_model'),)


def is_package(folder: str | Path) -> bool:
    """Whether ``folder`` is an exported model package (it holds :data:`EXPORT_FILE`)."""
    return (Path(folder) / EXPORT_FILE).is_file()


def resolve(value: str, folder: str | Path) -> str:
    """A path recorded in ``folder``: absolute against the folder when ``folder`` is a package
    and the path is relative; as recorded otherwise ('' stays '')."""
    if not value or Path(value).is_absolute() or not is_package(folder):
        return value
    return str((Path(folder) / value).absolute())


def read_config(folder: str | Path) -> dict[str, Any]:
    """The config recorded in ``folder`` (a run or a package) as a dict, package paths resolved.

    Raises ``FileNotFoundError`` naming the file when there is none, ``ValueError`` when it is
    not JSON.
    """
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f'{path}: no run config (not a run folder or model package)')
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f'{path}: not a JSON config ({err})') from err
    for section, key in PATH_FIELDS:
        if key in record.get(section, {}):
            record[section][key] = resolve(record[section][key], folder)
    return record


def read_export(folder: str | Path) -> dict[str, Any]:
    """The package's ``export.json``."""
    return json.loads((Path(folder) / EXPORT_FILE).read_text())
