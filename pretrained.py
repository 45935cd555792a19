"""The models shipped in ``pretrained/<name>/`` (model packages, see ``utils.package``).

``python main.py --mode sr --sr.input photo.jpg --sr.output out/`` with neither ``--config`` nor
``--workdir`` super-resolves with :data:`DEFAULT_MODEL`; ``--sr.model NAME`` picks another
(:func:`main_flags`). Each package carries its config, so ``configs/pretrained.py:NAME`` is its
config file. Packages are made from trained runs with ``--mode export`` (``export.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections

from utils import package

PRETRAINED_DIR = Path(__file__).resolve().parent / 'pretrained'
CONFIG_FILE = Path(__file__).resolve().parent / 'configs' / 'pretrained.py'
#: The default of ``--mode sr`` without a config: the best model trained here (its card says
#: what it is and how it measures).
DEFAULT_MODEL = 'ecdp_x4'
MODEL_FLAG = '--sr.model'


def available() -> list[str]:
    """Names of the shipped packages."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if package.is_package(p))


def package_dir(name: str) -> Path:
    """The folder of shipped model ``name``; unknown names are refused, listing the known."""
    folder = PRETRAINED_DIR / name
    if not name or not package.is_package(folder):
        raise ValueError(
            f'no shipped model {name!r} in {PRETRAINED_DIR} (available: {available()})'
        )
    return folder


def load_config(name: str) -> ml_collections.ConfigDict:
    """The config of shipped model ``name`` (:func:`package_config`), ``sr.model`` set."""
    config = package_config(package_dir(name))
    config.sr.model = name
    return config


def package_config(folder: str | Path) -> ml_collections.ConfigDict:
    """The config of the package in ``folder`` over today's defaults: the run options it leaves
    out (``export.RUN_OPTIONS``) and fields added since its export get their defaults; its
    inner paths absolute; locked."""
    from configs import default  # (configs import this module: no cycle at import time)

    config = default.get_config()
    merge(config, package.read_config(folder), f'{folder}/{package.CONFIG_FILE}')
    return config


def merge(config: ml_collections.ConfigDict, record: dict[str, Any], where: str) -> None:
    """Sets every field of ``record`` in ``config`` (JSON lists become tuples where the field is
    a tuple); a field ``config`` does not have is refused, naming it and ``where``."""
    for key, value in record.items():
        if key not in config:
            raise ValueError(f'{where}: unknown config field {key!r}')
        if isinstance(config[key], ml_collections.ConfigDict):
            merge(config[key], value, f'{where}:{key}')
        else:
            config[key] = tuple(value) if isinstance(config[key], tuple) else value


def _flag_value(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    """The value of ``flag`` (``--f=v`` or ``--f v``) in ``argv`` and ``argv`` without it."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1], argv[:i] + argv[i + 2 :]
        if arg.startswith(flag + '='):
            return arg[len(flag) + 1 :], argv[:i] + argv[i + 1 :]
    return None, argv


def main_flags(argv: list[str]) -> list[str]:
    """``main.py``'s arguments with a shipped model filled in for ``--mode sr``.

    Without ``--config``, ``--mode sr`` uses ``--sr.model NAME`` (default
    :data:`DEFAULT_MODEL`): ``--config`` becomes ``configs/pretrained.py:NAME`` and
    ``--workdir`` its package. ``--sr.model`` with ``--config`` or ``--workdir`` is refused (a
    shipped model replaces both). Other modes and arguments are left alone.
    """
    mode, _ = _flag_value(argv, '--mode')
    name, rest = _flag_value(argv, MODEL_FLAG)
    has_config = any(a == '--config' or a.startswith('--config=') for a in argv)
    has_workdir = any(a == '--workdir' or a.startswith('--workdir=') for a in argv)
    if name is not None and (has_config or has_workdir):
        raise ValueError(
            f'{MODEL_FLAG} picks a shipped model, which brings its config and weights: '
            'give it without --config and --workdir'
        )
    if mode != 'sr' or has_config or has_workdir:
        return argv
    name = name or DEFAULT_MODEL
    folder = package_dir(name)
    return [rest[0], f'--config={CONFIG_FILE}:{name}', f'--workdir={folder}', *rest[1:]]
