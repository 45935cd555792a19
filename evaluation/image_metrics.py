"""Full-reference image metrics on batches of float images ``[B, H, W, 3]`` in [0, 1].

Every metric returns one value per image (shape ``[B]``); aggregate with :func:`summarize`.
Nothing is clipped or quantised here: clip SR outputs to [0, 1] (and round to 8 bits, if the
comparison should be on saved images) before calling.

- :func:`psnr`: ``10 log10(data_range^2 / MSE)`` in dB (``inf`` for identical images), as
  ``skimage.metrics.peak_signal_noise_ratio``.
- :func:`ssim`: as ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``: 11-tap Gaussian
  window (sigma 1.5, truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, the SSIM map averaged over
  the pixels at least 5 px from the border, then over channels. Matches scikit-image to ~1e-6.
- ``channel='y'``: both metrics on ITU-R BT.601 luma, as in the SR literature (the Matlab
  ``rgb2ycbcr`` convention): ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255``, so Y lies
  in [16/255, 235/255]; ``data_range`` stays 1 (i.e. 255 on the 8-bit scale).
- :func:`consistency`: LR-consistency ``mean((downscale(sr) - lr)^2)`` per image, in [0, 1]^2
  units (an MSE on the [0, 1] scale: 1e-4 is an RMS error of 0.01, i.e. 2.55 grey levels).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from degradations import downscale

CHANNELS = ('rgb', 'y')
_BT601 = (65.481, 128.553, 24.966)


def rgb_to_y(images: jax.Array) -> jax.Array:
    """BT.601 luma of RGB ``[..., 3]`` in [0, 1] -> ``[..., 1]`` in [16/255, 235/255]."""
    weights = jnp.asarray(_BT601, jnp.float32) / 255.0
    return 16.0 / 255.0 + jnp.sum(images * weights, axis=-1, keepdims=True)


def _prepare(a: jax.Array, b: jax.Array, channel: str) -> tuple[jax.Array, jax.Array]:
    if channel not in CHANNELS:
        raise ValueError(f'channel must be one of {CHANNELS}, got {channel!r}')
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise ValueError(f'expected two [B, H, W, 3 or 1] batches, got {a.shape} and {b.shape}')
    if channel == 'y' and a.shape[-1] != 3:
        raise ValueError(f"channel='y' needs RGB images, got {a.shape[-1]} channel(s)")
    if channel == 'y':
        a, b = rgb_to_y(a), rgb_to_y(b)
    return a, b


@functools.partial(jax.jit, static_argnames=('channel',))
def psnr(a: jax.Array, b: jax.Array, data_range: float = 1.0, channel: str = 'rgb') -> jax.Array:
    """Peak signal-to-noise ratio in dB per image, ``[B]``; ``inf`` where ``a == b``."""
    a, b = _prepare(a, b, channel)
    mse = jnp.mean(jnp.square(a - b), axis=(1, 2, 3))
    return 10.0 * jnp.log10(jnp.square(data_range) / mse)


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
    """The normalised 1-D Gaussian of ``scipy.ndimage.gaussian_filter`` (11 taps for 1.5)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _filter_valid(x: jax.Array, window: np.ndarray) -> jax.Array:
    """Separable 2-D filtering of ``[B, H, W, C]`` keeping only fully-covered pixels.

    scikit-image filters with reflection at the border and then discards a border of
    ``radius`` pixels before averaging, so the padding never matters: a 'VALID' convolution
    gives exactly the pixels it keeps.
    """
    b, h, w, c = x.shape
    k = len(window)
    planes = jnp.transpose(x, (0, 3, 1, 2)).reshape(b * c, 1, h, w)
    dn = ('NCHW', 'OIHW', 'NCHW')
    kh = jnp.asarray(window).reshape(1, 1, k, 1)
    kw = jnp.asarray(window).reshape(1, 1, 1, k)
    prec = jax.lax.Precision.HIGHEST
    out = jax.lax.conv_general_dilated(
        planes, kh, (1, 1), 'VALID', dimension_numbers=dn, precision=prec
    )
    out = jax.lax.conv_general_dilated(
        out, kw, (1, 1), 'VALID', dimension_numbers=dn, precision=prec
    )
    return out.reshape(b, c, h - k + 1, w - k + 1)


@functools.partial(jax.jit, static_argnames=('channel',))
def ssim(a: jax.Array, b: jax.Array, data_range: float = 1.0, channel: str = 'rgb') -> jax.Array:
    """Structural similarity per image, ``[B]`` (mean over channels for RGB); see module doc.

    Images must be at least 11x11. (Co)variances are computed on inputs shifted by
    ``data_range / 2``, which is exact and avoids float32 cancellation in ``E[x^2] - E[x]^2``.
    """
    a, b = _prepare(a, b, channel)
    window = gaussian_window()
    if min(a.shape[1:3]) < len(window):
        raise ValueError(f'SSIM needs images of at least {len(window)}x{len(window)}')
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, window), _filter_valid(b, window)
    sa, sb = a - data_range / 2, b - data_range / 2
    ma, mb = mu_a - data_range / 2, mu_b - data_range / 2
    var_a = _filter_valid(sa * sa, window) - ma * ma
    var_b = _filter_valid(sb * sb, window) - mb * mb
    cov = _filter_valid(sa * sb, window) - ma * mb
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return jnp.mean(num / den, axis=(1, 2, 3))


@functools.partial(jax.jit, static_argnames=('factor', 'method'))
def consistency(sr: jax.Array, lr: jax.Array, factor: int, method: str = 'bilinear') -> jax.Array:
    """LR-consistency per image, ``[B]``: ``mean((downscale(sr, factor, method) - lr)^2)``.

    ``sr`` ``[B, H, W, 3]`` and ``lr`` ``[B, H/factor, W/factor, 3]`` in [0, 1];
    :func:`degradations.downscale` (antialiased) is the kernel that made the LR, so an SR
    image that explains its input exactly scores 0. Units: [0, 1]^2 (an MSE on the [0, 1]
    scale; multiply by 255^2 for 8-bit units).
    """
    sr, lr = jnp.asarray(sr, jnp.float32), jnp.asarray(lr, jnp.float32)
    down = downscale(sr, factor, method)
    if down.shape != lr.shape:
        raise ValueError(f'downscaled SR {down.shape} does not match LR {lr.shape}')
    return jnp.mean(jnp.square(down - lr), axis=(1, 2, 3))


def summarize(values: Iterable[float] | Any) -> dict[str, float | int]:
    """``{'mean', 'std', 'n'}`` of per-image values (population std, ``ddof=0``).

    Non-finite values (e.g. PSNR ``inf`` of an exact reconstruction) are kept, so they show
    in the mean; an empty input gives ``nan`` mean/std and ``n = 0``.
    """
    arr = np.asarray(values, np.float64).reshape(-1)
    if arr.size == 0:
        return {'mean': math.nan, 'std': math.nan, 'n': 0}
    return {'mean': float(arr.mean()), 'std': float(arr.std()), 'n': int(arr.size)}
