"""Low-resolution inputs made from high-resolution faces.

The default kernels match the SDE-SR code: antialiased *bilinear* downscaling, antialiased
*bicubic* upscaling back to HR size (its shipped LR images are reproduced that way within one
grey level). The same ``downscale`` is used to make training pairs, SR inputs and the
LR-consistency metric, so that the three can never disagree.

Downscaling kernels (:data:`DOWN_KERNELS`): jax.image.resize's, with or without antialiasing,
and ``'area'``: the mean over each output pixel's footprint (OpenCV ``INTER_AREA``, a camera
sensor's integration over its pixel), which needs no antialiasing flag. A *kernel spec* names a
kernel and that flag in one string, ``'bicubic'`` or ``'bicubic:noaa'`` (:func:`parse_kernel`).

Optional surveillance degradations (host-side numpy, used by ``datasets.make_lr``; all are
no-ops at their "off" value): :func:`gaussian_blur` of the HR before downscaling,
:func:`add_gaussian_noise` and :func:`jpeg_compress` of the LR. One image's settings are a
:class:`Degradation`; :func:`draw_degradation` draws them from ranges (GFPGAN, CodeFormer and
Real-ESRGAN train on such draws). Randomness only comes from the generators passed in.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from scipy import ndimage

RESIZE_METHODS = ('nearest', 'bilinear', 'bicubic', 'lanczos3', 'lanczos5')
AREA = 'area'  # Box averaging (OpenCV INTER_AREA): shrinking only.
DOWN_KERNELS = RESIZE_METHODS + (AREA,)
NO_ANTIALIAS = 'noaa'  # Kernel spec suffix: 'bicubic:noaa' is bicubic without antialiasing.


def _check_method(method: str) -> None:
    if method not in DOWN_KERNELS:
        raise ValueError(f'unknown resize kernel {method!r}; known: {DOWN_KERNELS}')


def resize(images: jax.Array, size: tuple[int, int], method: str, antialias: bool = True):
    """Resizes a batch ``[..., H, W, C]`` of float images to ``size`` = (h, w).

    ``'area'`` (:func:`area_resize`) ignores ``antialias``: an average is never aliased less.
    """
    _check_method(method)
    if method == AREA:
        return area_resize(images, size)
    images = jnp.asarray(images, jnp.float32)
    shape = images.shape[:-3] + tuple(size) + images.shape[-1:]
    return jax.image.resize(images, shape, method=method, antialias=antialias)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]``: the share of input pixel j in output pixel i's footprint
    ``[i s, (i + 1) s)``, ``s = n_in / n_out`` (rows sum to 1; OpenCV's area table)."""
    scale = n_in / n_out
    lo = np.arange(n_out)[:, None] * scale
    left = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(lo + scale, left + 1) - np.maximum(lo, left), 0.0, None)
    return (overlap / scale).astype(np.float32)


def area_resize(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Shrinks ``[..., H, W, C]`` to ``size`` by averaging each output pixel's footprint.

    What OpenCV's ``INTER_AREA`` computes when shrinking: for an integer factor the mean of
    each factor x factor block (taken exactly so, as a reshaped mean), otherwise the
    overlap-weighted mean. Enlarging is refused: OpenCV then falls back to another kernel.
    """
    images = jnp.asarray(images, jnp.float32)
    (h, w), (oh, ow) = images.shape[-3:-1], tuple(int(v) for v in size)
    if not (0 < oh <= h and 0 < ow <= w):
        raise ValueError(f"kernel 'area' only shrinks; {h}x{w} -> {oh}x{ow} asked")
    if h % oh == 0 and w % ow == 0:
        blocks = (oh, h // oh, ow, w // ow, images.shape[-1])
        return images.reshape(images.shape[:-3] + blocks).mean(axis=(-4, -2))
    rows, cols = _area_weights(h, oh), _area_weights(w, ow)
    return jnp.einsum('...hwc,Hh,Ww->...HWc', images, rows, cols)


def parse_kernel(spec: str) -> tuple[str, bool]:
    """A kernel spec as ``(kernel, antialias)``: ``'bicubic'`` -> ``('bicubic', True)``,
    ``'bicubic:noaa'`` -> ``('bicubic', False)``. ``'area:noaa'`` is refused: area averaging
    has no unantialiased form, and a second name for it would double its share of draws."""
    kernel, sep, flag = str(spec).strip().partition(':')
    if kernel not in DOWN_KERNELS or (sep and flag != NO_ANTIALIAS):
        raise ValueError(
            f'kernel {spec!r}: give one of {DOWN_KERNELS}, optionally with ":{NO_ANTIALIAS}"'
        )
    if kernel == AREA and sep:
        raise ValueError(f"kernel {spec!r}: 'area' averages, it has no unantialiased form")
    return kernel, not sep


def kernel_spec(kernel: str, antialias: bool) -> str:
    """The spec of ``(kernel, antialias)``, the inverse of :func:`parse_kernel`."""
    return kernel if antialias or kernel == AREA else f'{kernel}:{NO_ANTIALIAS}'


class Degradation(NamedTuple):
    """How one LR image is made from its HR image (see ``datasets.make_lr``)."""

    kernel: str  # Downscaling kernel, one of DOWN_KERNELS.
    antialias: bool
    blur_sigma: float  # Gaussian blur of the HR, HR pixels (0: off).
    noise_sigma: float  # Gaussian noise std of the LR, [0, 1] units (0: off).
    jpeg_quality: int  # JPEG quality of the LR, 1..100 (0: off).


def draw_degradation(
    rng: np.random.Generator,
    kernels: Sequence[tuple[str, bool]],
    blur_sigma: tuple[float, float],
    noise_sigma: tuple[float, float],
    jpeg_quality: tuple[int, int],
) -> Degradation:
    """One image's degradation: a kernel drawn uniformly from ``kernels`` (``(kernel,
    antialias)`` pairs), sigmas uniform in their ``(low, high)`` ranges, the JPEG quality a
    uniform integer in its range, inclusive. Always four draws in this order, so what ``rng``
    yields afterwards (the image's noise) does not depend on the ranges' values."""
    kernel, antialias = kernels[int(rng.integers(len(kernels)))]
    return Degradation(
        kernel,
        bool(antialias),
        float(rng.uniform(*blur_sigma)),
        float(rng.uniform(*noise_sigma)),
        int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1)),
    )


def downscale(
    images: jax.Array, factor: int, method: str = 'bilinear', antialias: bool = True
) -> jax.Array:
    """Downscales ``[..., H, W, C]`` by an integer ``factor`` that must divide H and W."""
    h, w = images.shape[-3:-1]
    if h % factor or w % factor:
        raise ValueError(f'downscale factor {factor} does not divide image size {h}x{w}')
    return resize(images, (h // factor, w // factor), method, antialias)


def upscale(
    images: jax.Array, factor: int, method: str = 'bicubic', antialias: bool = True
) -> jax.Array:
    """Upscales ``[..., h, w, C]`` by an integer ``factor``."""
    h, w = images.shape[-3:-1]
    return resize(images, (h * factor, w * factor), method, antialias)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Blurs ``[..., H, W, C]`` float images with a Gaussian of std ``sigma`` pixels.

    Separable, truncated at 4 sigma, borders reflected (``scipy.ndimage.gaussian_filter``).
    ``sigma <= 0`` returns the input unchanged.
    """
    images = np.asarray(images, np.float32)
    if sigma <= 0:
        return images
    sigmas = (0.0,) * (images.ndim - 3) + (float(sigma), float(sigma), 0.0)
    return ndimage.gaussian_filter(images, sigmas, mode='reflect', truncate=4.0)


def add_gaussian_noise(
    images: np.ndarray,
    sigma: float,
    rngs: np.random.Generator | Sequence[np.random.Generator],
) -> np.ndarray:
    """Adds N(0, sigma^2) noise (``sigma`` in [0, 1] image units); not clipped.

    ``rngs``: one generator for the whole array, or one per leading row (``[b, H, W, C]``),
    so that a row's noise does not depend on which batch or host it is in.
    """
    images = np.asarray(images, np.float32)
    if sigma <= 0:
        return images
    if isinstance(rngs, np.random.Generator):
        noise = rngs.standard_normal(images.shape, np.float32)
    else:
        if len(rngs) != len(images):
            raise ValueError(f'{len(rngs)} generators for {len(images)} images')
        noise = np.stack([rng.standard_normal(images.shape[1:], np.float32) for rng in rngs])
    return images + np.float32(sigma) * noise


def jpeg_compress(images: np.ndarray, quality: int) -> np.ndarray:
    """JPEG-encodes and decodes ``[..., H, W, C]`` images in [0, 1] (Pillow, 4:2:0 chroma).

    Values are clipped and rounded to 8 bits first. ``quality`` 1..100; 0 returns the input
    unchanged. C must be 1 or 3.
    """
    images = np.asarray(images, np.float32)
    if quality <= 0:
        return images
    if not 1 <= quality <= 100:
        raise ValueError(f'JPEG quality must be in 1..100 (0: off), got {quality}')
    flat = images.reshape((-1,) + images.shape[-3:])
    out = np.empty_like(flat)
    for i, image in enumerate(flat):
        pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        pil = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        buffer = io.BytesIO()
        pil.save(buffer, format='JPEG', quality=int(quality))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded, np.float32).reshape(image.shape) / 255.0
    return out.reshape(images.shape)
