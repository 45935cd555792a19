"""``--mode export``: a trained run into a model package (``utils.package``), e.g. ``pretrained/``.

    python main.py --config C --workdir W --mode export --config.export.output=pretrained/NAME \
        [--config.sampling.*=...]   # the sampler the package will use by default

The package gets the EMA weights of W's latest checkpoint (``export.dtype``, float16 by
default: half the size), the config as given (so the sampler settings chosen here travel with
the weights), W's residual statistics when the SDE needs them, and, for a learned mean
(``sde.mean_model = R``), R's regression branch as the package ``mean/``; a distilled
student's teacher (folder, name and step: ``runs.Run.teacher``) is recorded in ``export.json``.
It is written into a hidden sibling folder (``.NAME.partial``) and renamed into place; a
refused or failed export (the float16 check, an error, Ctrl-C) removes it, so nothing that
counts as a package is left (a process killed outright may leave the hidden folder:
``pretrained.available`` and ``--sr.model`` never take a hidden name, and the next export
removes it). The output must be a new folder or a package: a run folder, or any other folder,
is refused, naming it.

The float16 check (``export.check_images`` faces of the eval split) super-resolves the same
faces with the run and with the written package and records the largest output difference and
both PSNRs in ``export.json``; more than 1/255 is refused (export float32 instead).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import ml_collections
import numpy as np
from flax.traverse_util import flatten_dict
from PIL import Image

import experiment
import mean_model
import runs

DTYPES = ('float16', 'float32')
# The largest change of an output pixel (on [0, 1]) that the weight dtype may cause.
MAX_OUTPUT_CHANGE = 1.0 / 255.0
PARTIAL_SUFFIX = '.partial'


def write_weights(params: Any, folder: Path, dtype: str) -> dict[str, Any]:
    """``params`` as ``folder/ema_params.msgpack`` in ``dtype``; size and array count."""
    cast = jax.tree.map(lambda a: np.asarray(a).astype(dtype), params)
    data = flax.serialization.msgpack_serialize(cast)
    (folder / runs.WEIGHTS_FILE).write_bytes(data)
    return {'bytes': len(data), 'arrays': len(flatten_dict(cast))}


def _export_run(
    config: Any,
    workdir: Path,
    folder: Path,
    dtype: str,
    scopes: tuple[str, ...] = (),
    step: int | None = None,
) -> dict[str, Any]:
    """Writes ``workdir``'s EMA weights of ``step`` (latest if None; ``scopes`` only, if given)
    and ``config`` into ``folder``; the record that goes into ``export.json``."""
    exp = experiment.build(config, None, workdir)
    params, step = exp.load_ema_params(workdir, step, scopes=scopes)
    folder.mkdir(parents=True)
    record = {'source': str(workdir.absolute()), 'step': step, 'dtype': dtype,
              'scopes': list(scopes), **write_weights(params, folder, dtype)}  # fmt: skip
    runs.write_package_config(config, folder)
    return record


def _export_stats(config: Any, workdir: Path, folder: Path) -> int | None:
    """The run's residual statistics into the package; the step of the learned mean they
    were made around (None without one)."""
    path = runs.Run.open(workdir).stats_path(config)
    if not path.is_file():
        return None  # This SDE needs none (experiment.build would have failed otherwise).
    stats = runs.Run.open(workdir).read_stats(config)
    runs.write_package_stats(stats, folder)
    return stats.get('mean_model_step') if stats.get('mean_model') else None


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), np.float32) / 255.0


def sr_psnr(config: Any, workdir: Path, out: Path, images: int) -> tuple[np.ndarray, float]:
    """SR of the first ``images`` eval-split faces with the model in ``workdir``: the SR images
    [N, H, W, C] on [0, 1] and their mean PSNR against the HR faces."""
    import sr  # --mode sr: imported on use (it imports this mode's dependencies lazily too).

    check = ml_collections.ConfigDict(config.to_dict())
    check.sr.update(input='', output=str(out), max_images=images, num_samples=1, grid=False)
    manifest = sr.run(check, workdir)
    srs = np.stack([_read(out / item['sr'][0]) for item in manifest['items']])
    hrs = np.stack([_read(out / item['hr']) for item in manifest['items']])
    mse = np.mean((srs - hrs) ** 2, axis=(1, 2, 3))
    return srs, float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))


def check_package(config: Any, workdir: Path, folder: Path, images: int) -> dict[str, Any]:
    """The run and the package super-resolve the same faces: largest difference and PSNRs."""
    with tempfile.TemporaryDirectory() as tmp:
        ours, psnr_run = sr_psnr(config, workdir, Path(tmp) / 'run', images)
        packaged = runs.Run.open(folder).config()
        packaged.data.path = config.data.path
        theirs, psnr_package = sr_psnr(packaged, folder, Path(tmp) / 'package', images)
    change = float(np.max(np.abs(ours - theirs)))
    return {'images': images, 'max_output_change': change, 'psnr_run': round(psnr_run, 4),
            'psnr_package': round(psnr_package, 4)}  # fmt: skip


def check_output(target: Path, workdir: Path) -> None:
    """Refuses an output that would overwrite what is not a package: the run itself (or a
    folder holding it), another run, or any existing folder or file that is not a package."""
    if not target.exists():
        return
    if target.resolve() == workdir.resolve() or workdir.resolve().is_relative_to(target.resolve()):
        raise ValueError(
            f'config.export.output={str(target)!r} is the run being exported (or holds it): '
            'give a new folder'
        )
    if not runs.Run.open(target).is_package:
        kind = 'a run folder' if runs.Run.open(target).is_run else 'not a model package'
        raise ValueError(
            f'config.export.output={str(target)!r} exists and is {kind}: export replaces only '
            'a package; give a new folder'
        )


def _write_package(config: Any, workdir: Path, tmp: Path) -> dict[str, Any]:
    """The package in ``tmp``: weights, config, statistics, the learned mean; its record."""
    cfg = config.export
    record = _export_run(config, workdir, tmp, cfg.dtype)
    teacher = runs.Run.open(workdir).teacher()  # A student names what it was distilled from.
    if teacher is not None:
        record['teacher'] = teacher
    mean_step = _export_stats(config, workdir, tmp)
    if config.sde.get('mean_model', ''):
        source = Path(config.sde.mean_model)
        mean_config = mean_model.read_run_config(source)
        scopes = experiment.build_model(mean_config).regress_scopes
        mean_dir = tmp / runs.MEAN_DIR
        mean_record = _export_run(mean_config, source, mean_dir, cfg.dtype, scopes, mean_step)
        runs.write_export_record(mean_dir, mean_record)
        record['mean'] = mean_record
    runs.write_export_record(tmp, record)
    if cfg.check_images > 0:
        record['check'] = check_package(config, workdir, tmp, cfg.check_images)
        runs.write_export_record(tmp, record)
        if record['check']['max_output_change'] > MAX_OUTPUT_CHANGE + 1e-6:
            raise ValueError(
                f'{cfg.dtype} weights change an output by '
                f'{record["check"]["max_output_change"]:.4f} > 1/255: export with '
                '--config.export.dtype=float32 (nothing was written)'
            )
    return record


def run(config: Any, workdir: str | Path) -> dict[str, Any]:
    """``--mode export``: writes the package ``config.export.output``; its export record."""
    cfg, workdir = config.export, Path(workdir)
    if not cfg.output:
        raise ValueError('config.export.output: give the package folder to write')
    if cfg.dtype not in DTYPES:
        raise ValueError(f'config.export.dtype={cfg.dtype!r}: one of {DTYPES}')
    target = Path(cfg.output)
    check_output(target, workdir)
    tmp = target.with_name(f'.{target.name}{PARTIAL_SUFFIX}')
    shutil.rmtree(tmp, ignore_errors=True)  # Left by an export killed outright.
    try:
        record = _write_package(config, workdir, tmp)
        card = target / runs.CARD_FILE
        if card.is_file():  # Written by hand about this model: kept across re-exports.
            shutil.copy2(card, tmp / runs.CARD_FILE)
    except BaseException:  # Refused, failed or interrupted: no half package stays behind.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    logging.info('exported %s step %d (%s, %d bytes) to %s', workdir, record['step'],
                 cfg.dtype, record['bytes'], target)  # fmt: skip
    return record
