"""The models shipped in ``pretrained/<name>/`` (model packages, see ``runs.py``).

``python main.py --mode sr --sr.input photo.jpg --sr.output out/`` with neither ``--config`` nor
``--workdir`` super-resolves with :data:`DEFAULT_MODEL`; ``--sr.model NAME`` picks another
(:func:`main_flags`). Each package carries its config, so ``configs/pretrained.py:NAME`` is its
config file. Packages are made from trained runs with ``--mode export`` (``export.py``).
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

import runs

PRETRAINED_DIR = Path(__file__).resolve().parent / 'pretrained'
CONFIG_FILE = Path(__file__).resolve().parent / 'configs' / 'pretrained.py'
#: ``--sr.model auto``: not a package but a size ladder of them (``ladder.py``): each face of
#: a photo goes to the model whose LR side is nearest its size. The first is the primary: its
#: config and folder are the run's, and it takes aligned crops.
AUTO = 'auto'
AUTO_LADDER = ('ecdp_x4_student', 'ecdp_x8_student')
#: The default of ``--mode sr`` without a config: the ladder of the best models trained here
#: (their cards say what they are and how they measure).
DEFAULT_MODEL = AUTO
MODEL_FLAG = '--sr.model'


def _shipped(name: str) -> bool:
    """A package under a name a user may pick: hidden names are exports in progress (or
    killed mid-way, see ``export.py``), never models."""
    return not name.startswith('.') and runs.Run.open(PRETRAINED_DIR / name).is_package


def available() -> list[str]:
    """Names of the shipped packages."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if _shipped(p.name))


def package_dir(name: str) -> Path:
    """The folder of shipped model ``name`` (``auto``: its primary's); unknown names are
    refused, listing the known."""
    name = AUTO_LADDER[0] if name == AUTO else name
    folder = PRETRAINED_DIR / name
    if not name or '/' in name or not _shipped(name):
        raise ValueError(
            f'no shipped model {name!r} in {PRETRAINED_DIR} (available: {available()}, or {AUTO!r})'
        )
    return folder


def load_config(name: str) -> ml_collections.ConfigDict:
    """The complete config of shipped model ``name`` (``runs.Run.config``), ``sr.model`` set;
    ``auto``: its primary's (``sr.model``), with ``sr.ladder`` the ladder's models."""
    config = runs.Run.open(package_dir(name)).config()
    config.sr.model = AUTO_LADDER[0] if name == AUTO else name  # (The model of this config.)
    if name == AUTO:
        config.sr.ladder = AUTO_LADDER
    return config


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
