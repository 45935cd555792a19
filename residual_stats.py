"""Training-set statistics of the residual ``x - mu(y)``, stored with the run (``--mode stats``).

ECDP's mean-reverting SDE has the prior ``N(mu(y), sigma^2 I)`` with ``sigma^2`` the variance of
the residual between an HR face and its upsampled LR image; with that value every marginal of
the forward SDE has the data's variance (the paper's Proposition 1). The value depends on the
data, the LR kernels and the value range, so it is measured, never typed in: ``--mode stats``
makes one ordered pass over the training split and writes ``residual_stats.json`` (atomically)
into the workdir; train, sr and eval read it and refuse to run without it, naming the file.
The ECDP code fixes ``sigma = 0.2`` for every data set; a measured value keeps Proposition 1
true for ours (celeba_id128 train faces at 64x64 from 8x8 LR: sigma^2 = 0.01499, sigma 0.122).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import datasets
from utils import package

STATS_FILE = 'residual_stats.json'
# The data fields the statistics depend on; a run whose config differs from the record refuses.
# (``data.path`` is recorded too, but not compared: a run may move to another machine.)
DATA_FIELDS = (
    'source',
    'image_size',
    'resize_mode',
    'downscale',
    'down_kernel',
    'up_kernel',
    'antialias',
    'centered',
    'noise_sigma',
    'blur_sigma',
    'jpeg_quality',
    'num_channels',
)


def stats_path(config: Any, workdir: str | Path) -> Path:
    """``config.sde.stats_file``, or ``<workdir>/residual_stats.json`` when it is empty."""
    return Path(config.sde.stats_file or Path(workdir) / STATS_FILE)


def compute(
    data_config: Any,
    batch_size: int = 64,
    mean: Callable[[dict], dict] = lambda batch: batch,
    mean_key: str = 'lr_up',
) -> dict[str, Any]:
    """Mean, variance and second moment of ``x - mu(y)`` over the whole training split, in the
    model's value range (``data.centered``), accumulated in float64 over every pixel.

    ``mu(y) = mean(batch)[mean_key]``: bicubic (``lr_up``), or a learned mean
    (``mean_model.MeanModel``, key ``lr_mu``).
    """
    scaler = datasets.get_data_scaler(data_config.centered)
    total = total_sq = count = images = 0
    for batch in datasets.get_dataset(data_config, 'train', batch_size, train=False):
        keep = batch['mask']
        mu = np.asarray(mean(batch)[mean_key])
        residual = np.asarray(scaler(batch['hr'][keep]), np.float64) - np.asarray(
            scaler(mu[keep]), np.float64
        )
        total += residual.sum()
        total_sq += np.square(residual).sum()
        count += residual.size
        images += int(keep.sum())
    if images == 0:
        raise ValueError(f'data.path={data_config.path!r} has no training images')
    mean = total / count
    return {
        'residual_mean': mean,
        'residual_var': total_sq / count - mean**2,
        'residual_second_moment': total_sq / count,
        'num_images': images,
        'data': {k: data_config[k] for k in ('path', *DATA_FIELDS)},
    }


def write(stats: dict[str, Any], path: Path) -> None:
    """Writes ``stats`` as JSON, atomically (a temporary file renamed over the target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(stats, indent=2))
    os.replace(tmp, path)


def load(path: Path, data_config: Any, mean_model: str | None = None) -> dict[str, Any]:
    """The statistics in ``path``; raises naming the file if it is missing or unreadable, and
    naming each data field (and ``sde.mean_model``, unless None) whose configured value differs
    from the one they were made with."""
    if not path.is_file():
        raise FileNotFoundError(
            f'{path}: no residual statistics; this SDE needs them. Make them with '
            '`python main.py --config C --workdir W --mode stats` (or set config.sde.stats_file)'
        )
    try:
        stats = json.loads(path.read_text())
        recorded = stats['data']
        float(stats['residual_var'])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f'{path}: not a residual statistics file ({err})') from err
    differ = [
        f'data.{k} (stats: {recorded.get(k)!r}, config: {data_config[k]!r})'
        for k in DATA_FIELDS
        if _normalise(recorded.get(k)) != _normalise(data_config[k])
    ]
    recorded_mean = package.resolve(stats.get('mean_model', ''), path.parent)
    if mean_model is not None and recorded_mean != mean_model:
        differ.append(f'sde.mean_model (stats: {recorded_mean!r}, config: {mean_model!r})')
    if differ:
        raise ValueError(f'{path} was made with other data settings: ' + '; '.join(differ))
    return stats


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def run(config: Any, workdir: str | Path) -> dict[str, Any]:
    """``--mode stats``: computes the statistics of ``config.data`` around the configured
    ``mu(y)`` (``config.sde.mean_model``, else bicubic) and writes them."""
    import mean_model  # Loads a trained network: not needed by the readers of the file.

    path = stats_path(config, workdir)
    mean = mean_model.load(config)
    key = mean_model.MEAN_KEY if mean.apply is not None else 'lr_up'
    stats = {**compute(config.data, mean=mean, mean_key=key), **mean.record()}
    write(stats, path)
    logging.info(
        'residual statistics of %d training images: mean %.5f, variance %.5f (std %.4f) -> %s',
        stats['num_images'],
        stats['residual_mean'],
        stats['residual_var'],
        np.sqrt(stats['residual_var']),
        path,
    )
    return stats
