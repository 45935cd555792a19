"""``--mode export``: a trained run into a model package (``utils.package``), e.g. ``pretrained/``.

    python main.py --config C --workdir W --mode export --config.export.output=pretrained/NAME \
        [--config.sampling.*=...]   # the sampler the package will use by default

The package gets the EMA weights of W's latest checkpoint (``export.dtype``, float16 by
default: half the size), the config as given (so the sampler settings chosen here travel with
the weights), W's residual statistics when the SDE needs them, and, for a learned mean
(``sde.mean_model = R``), R's regression branch as the package ``mean/``. It is written into a
temporary folder and renamed into place, so a failed export leaves no half package.

The float16 check (``export.check_images`` faces of the eval split) super-resolves the same
faces with the run and with the written package and records the largest output difference and
both PSNRs in ``export.json``; more than 1/255 is refused (export float32 instead).
"""

from __future__ import annotations

import json
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
import inference
import mean_model
import pretrained
import residual_stats
from utils import package

DTYPES = ('float16', 'float32')
# Config sections that are options of a run of the model, not the model: a package leaves them
# out, so that its users get today's defaults (e.g. sr.detect_scale) and their own flags
# (training and optim stay: the recipe, for the record).
RUN_OPTIONS = ('sr', 'eval', 'export', 'classifier_training', 'guidance')
# The largest change of an output pixel (on [0, 1]) that the weight dtype may cause.
MAX_OUTPUT_CHANGE = 1.0 / 255.0
CARD_FILE = 'MODEL_CARD.md'


def write_weights(params: Any, folder: Path, dtype: str) -> dict[str, Any]:
    """``params`` as ``folder/ema_params.msgpack`` in ``dtype``; size and array count."""
    cast = jax.tree.map(lambda a: np.asarray(a).astype(dtype), params)
    data = flax.serialization.msgpack_serialize(cast)
    (folder / package.WEIGHTS_FILE).write_bytes(data)
    return {'bytes': len(data), 'arrays': len(flatten_dict(cast))}


def _export_run(
    config: Any, workdir: Path, folder: Path, dtype: str, scopes: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Writes ``workdir``'s EMA weights (``scopes`` only, if given) and ``config`` into
    ``folder``; the record that goes into ``export.json``."""
    exp = experiment.build(config, None, workdir)
    params, step = inference.load_ema_params(exp, workdir, scopes=scopes)
    folder.mkdir(parents=True)
    record = {'source': str(workdir.absolute()), 'step': step, 'dtype': dtype,
              'scopes': list(scopes), **write_weights(params, folder, dtype)}  # fmt: skip
    packaged = {k: v for k, v in config.to_dict().items() if k not in RUN_OPTIONS}
    if packaged['sde'].get('mean_model', ''):
        packaged['sde']['mean_model'] = package.MEAN_DIR
    packaged['sde']['stats_file'] = ''
    text = ml_collections.ConfigDict(packaged).to_json_best_effort(indent=2)
    (folder / package.CONFIG_FILE).write_text(text)
    return record


def _export_stats(config: Any, workdir: Path, folder: Path) -> None:
    """The run's residual statistics, their mean recorded as the package's ``mean/``."""
    path = residual_stats.stats_path(config, workdir)
    if not path.is_file():
        return  # This SDE needs none (experiment.build would have failed otherwise).
    stats = json.loads(path.read_text())
    if stats.get('mean_model'):
        stats['mean_model'] = package.MEAN_DIR
    residual_stats.write(stats, folder / residual_stats.STATS_FILE)


def _write_export(folder: Path, record: dict[str, Any]) -> None:
    (folder / package.EXPORT_FILE).write_text(json.dumps(record, indent=1))


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
        packaged = pretrained.package_config(folder)
        packaged.data.path = config.data.path
        theirs, psnr_package = sr_psnr(packaged, folder, Path(tmp) / 'package', images)
    change = float(np.max(np.abs(ours - theirs)))
    return {'images': images, 'max_output_change': change, 'psnr_run': round(psnr_run, 4),
            'psnr_package': round(psnr_package, 4)}  # fmt: skip


def run(config: Any, workdir: str | Path) -> dict[str, Any]:
    """``--mode export``: writes the package ``config.export.output``; its export record."""
    cfg, workdir = config.export, Path(workdir)
    if not cfg.output:
        raise ValueError('config.export.output: give the package folder to write')
    if cfg.dtype not in DTYPES:
        raise ValueError(f'config.export.dtype={cfg.dtype!r}: one of {DTYPES}')
    target = Path(cfg.output)
    tmp = target.with_name(target.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    record = _export_run(config, workdir, tmp, cfg.dtype)
    _export_stats(config, workdir, tmp)
    if config.sde.get('mean_model', ''):
        source = Path(config.sde.mean_model)
        mean_config = mean_model.read_run_config(source)
        scopes = experiment.build_model(mean_config).regress_scopes
        mean_record = _export_run(mean_config, source, tmp / package.MEAN_DIR, cfg.dtype, scopes)
        _write_export(tmp / package.MEAN_DIR, mean_record)
        record['mean'] = mean_record
    _write_export(tmp, record)
    if cfg.check_images > 0:
        record['check'] = check_package(config, workdir, tmp, cfg.check_images)
        _write_export(tmp, record)
        if record['check']['max_output_change'] > MAX_OUTPUT_CHANGE + 1e-6:
            raise ValueError(
                f'{cfg.dtype} weights change an output by '
                f'{record["check"]["max_output_change"]:.4f} > 1/255 ({tmp}): export with '
                '--config.export.dtype=float32'
            )
    card = target / CARD_FILE
    if card.is_file():  # Written by hand about this model: kept across re-exports.
        shutil.copy2(card, tmp / CARD_FILE)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    logging.info('exported %s step %d (%s, %d bytes) to %s', workdir, record['step'],
                 cfg.dtype, record['bytes'], target)  # fmt: skip
    return record
