"""Training-set statistics of the residual ``x - mu(y)``, stored with the run (``--mode stats``).

ECDP's mean-reverting SDE has the prior ``N(mu(y), sigma^2 I)`` with ``sigma^2`` the variance of
the residual between an HR face and its upsampled LR image; with that value every marginal of
the forward SDE has the data's variance (the paper's Proposition 1). The value depends on the
data, the LR kernels and the value range, so it is measured, never typed in: ``--mode stats``
makes one ordered pass over the training split and writes ``residual_stats.json`` (atomically)
into the workdir; train, sr and eval read it (``runs.Run.read_stats``) and refuse to run
without it, naming the file.
The ECDP code fixes ``sigma = 0.2`` for every data set; a measured value keeps Proposition 1
true for ours (celeba_id128 train faces at 64x64 from 8x8 LR: sigma^2 = 0.01499, sigma 0.122).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import datasets
import mean_model
import runs


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
        'data': {k: data_config[k] for k in ('path', *runs.STATS_DATA_FIELDS)},
    }


def run(config: Any, workdir: str | Path) -> dict[str, Any]:
    """``--mode stats``: computes the statistics of ``config.data`` around the configured
    ``mu(y)`` (``config.sde.mean_model``, else bicubic) and writes them."""
    mean = mean_model.load(config)  # Its latest step: the statistics pin it for every later use.
    key = mean_model.MEAN_KEY if mean.apply is not None else 'lr_up'
    stats = {**compute(config.data, mean=mean, mean_key=key), **mean.record()}
    path = runs.Run.open(workdir).write_stats(config, stats)
    logging.info(
        'residual statistics of %d training images: mean %.5f, variance %.5f (std %.4f) -> %s',
        stats['num_images'],
        stats['residual_mean'],
        stats['residual_var'],
        np.sqrt(stats['residual_var']),
        path,
    )
    return stats
