"""How much of an SR face is invented: per-pixel spread and identity stability of K samples.

A diffusion model draws SR faces from p(x | y); where K draws disagree, the pixels are not
determined by the LR input. For forensic use (``--sr.num_samples K --sr.uncertainty=true``,
and ``--mode eval``'s ``posterior_mean`` method) we report, per face:

* the posterior mean and the per-pixel standard deviation over the K samples (std over the
  samples and averaged over colour channels, population std: ``ddof = 0``), the std written
  as a heat map with a fixed colour scale (``sr.std_max``), so maps of different faces compare;
* identity stability, per recogniser of ``sr.face`` (``eval.face`` in eval): the mean cosine
  similarity of face embeddings between every pair of samples, and between each sample and
  the posterior mean. The embedding crop is decided once per face, on the posterior mean (each
  recogniser's detector, the training geometry's fixed location when it finds no face), and
  applied to every sample, so a sample's artefact never moves its crop (the evaluation
  protocol's rule).

Statistics are computed over the samples as written (8-bit levels), so they equal what anyone
recomputes from the PNG files.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from utils.images import make_grid, to_uint8

MIN_SAMPLES = 2
#: Colour map of the std heat maps (perceptually uniform, dark = certain).
COLORMAP = 'inferno'


def check_num_samples(
    num_samples: int, what: str = 'sr.uncertainty', field: str = 'sr.num_samples'
) -> None:
    """Refuses fewer than two samples: the spread of one sample is undefined."""
    if num_samples < MIN_SAMPLES:
        raise ValueError(
            f'{what} needs {field} >= {MIN_SAMPLES} (got {num_samples}): the spread and '
            'identity stability of a single sample are undefined'
        )


def quantize(samples: np.ndarray) -> np.ndarray:
    """Samples on [0, 1] as their 8-bit PNG levels, back on [0, 1] (float64)."""
    return to_uint8(samples).astype(np.float64) / 255.0


def mean_and_std(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` [K, H, W, C] -> posterior mean [H, W, C] and per-pixel std [H, W] (channel
    mean of the per-channel population std), over the quantized samples."""
    check_num_samples(len(samples), 'the posterior mean and std', 'the sample count')
    levels = quantize(samples)
    return levels.mean(axis=0), levels.std(axis=0).mean(axis=-1)


def heat_map(std: np.ndarray, std_max: float) -> np.ndarray:
    """``std`` [H, W] -> RGB [H, W, 3] in [0, 1] through :data:`COLORMAP`, 0..``std_max``."""
    from matplotlib import colormaps  # Agg-free: only the colour table is used.

    return colormaps[COLORMAP](np.clip(std / std_max, 0.0, 1.0))[..., :3]


def sheet(lr: np.ndarray, samples: np.ndarray, mean: np.ndarray, std_rgb: np.ndarray) -> np.ndarray:
    """One face's row LR (nearest-neighbour enlarged) | samples | mean | std map, uint8."""
    factor = samples.shape[1] // lr.shape[0]
    lr_big = lr.repeat(factor, axis=0).repeat(factor, axis=1)
    if lr_big.shape[-1] != samples.shape[-1]:
        lr_big = np.repeat(lr_big, samples.shape[-1], axis=-1)
    columns = [lr_big, *samples, mean, std_rgb]
    if samples.shape[-1] == 1:
        columns = [np.repeat(c, 3, axis=-1) if c.shape[-1] == 1 else c for c in columns]
    return make_grid([c[None] for c in columns])


def identity_stability(
    samples: np.ndarray,
    mean: np.ndarray,
    embedder: Any,
    reference: np.ndarray | None = None,
    name: str = '',
) -> dict[str, float]:
    """Mean pairwise embedding cosine of the samples, and mean sample-to-mean cosine.

    ``embedder``: an ``evaluation.face.FaceEmbedder`` (one recogniser; callers loop over
    several); the crop is decided on ``reference`` (the HR image in evaluation) or, without
    one, on ``mean``. A tiny or blank one is refused, naming ``name`` (the face).
    """
    decide = mean if reference is None else reference
    alignment = embedder.align(decide[None], names=[name] if name else None)
    repeated = alignment.take(np.zeros(len(samples) + 1, int))  # The one crop for all.
    images = np.concatenate([samples, mean[None]]).astype(np.float32)
    feats = embedder.embed(embedder.apply_alignment(images, repeated))
    per_sample, centre = feats[:-1], feats[-1]
    pairs = [float(a @ b) for a, b in itertools.combinations(per_sample, 2)]
    return {
        'pairwise_cos': float(np.mean(pairs)),
        'to_mean_cos': float(np.mean(per_sample @ centre)),
        'face_detected': bool(alignment.detected[0]),
    }


def summarize(std: np.ndarray) -> dict[str, float]:
    """Scalar summaries of a std map: its mean and 95th percentile (on [0, 1] pixels)."""
    return {'std_mean': float(std.mean()), 'std_p95': float(np.percentile(std, 95))}
