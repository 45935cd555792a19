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
#: Size ladders of shipped models (``ladder.py``), picked like a model (``--sr.model auto``):
#: each face of a photo goes to the model whose LR side is nearest its size. The first is the
#: primary: its config and folder are the run's, and it takes aligned crops.
#:
#: * ``auto`` (the default): the models trained on clean LR, best on clean photos (16x16 and
#:   8x8 LR; larger faces are resized).
#: * ``auto_degraded``: for blurred, noisy, JPEG-compressed footage or an unknown downscaling
#:   kernel: ``photo_x4``, trained on random degradations (its card: above the clean model on
#:   degraded LR and every kernel it did not train on, below it on clean LR), and the clean 8x8
#:   model (no degraded 8x8 one yet).
#:
#: No 32x32-LR model is in a ladder: the one trained (``bench/results/kernels_photo_x2.md``)
#: was below bicubic on clean LR, so faces past 1.5x the 16x16 crop are still resized.
LADDERS: dict[str, tuple[str, ...]] = {
    'auto': ('ecdp_x4_student', 'ecdp_x8_student'),
    'auto_degraded': ('photo_x4', 'ecdp_x8_student'),
}
AUTO = 'auto'
#: The default of ``--mode sr`` without a config: the ladder of the best models trained here
#: for clean photos (their cards say what they are and how they measure).
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
    """The folder of shipped model ``name`` (a ladder: its primary's); unknown names are
    refused, listing the known."""
    name = LADDERS[name][0] if name in LADDERS else name
    folder = PRETRAINED_DIR / name
    if not name or '/' in name or not _shipped(name):
        raise ValueError(
            f'no shipped model {name!r} in {PRETRAINED_DIR} (available: {available()}, or a '
            f'ladder {sorted(LADDERS)})'
        )
    return folder


def load_config(name: str) -> ml_collections.ConfigDict:
    """The complete config of shipped model ``name`` (``runs.Run.config``), ``sr.model`` set;
    a ladder (:data:`LADDERS`): its primary's (``sr.model``), ``sr.ladder`` its models."""
    config = runs.Run.open(package_dir(name)).config()
    config.sr.model = LADDERS[name][0] if name in LADDERS else name  # (This config's model.)
    if name in LADDERS:
        config.sr.ladder = LADDERS[name]
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
