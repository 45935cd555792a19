"""Low-resolution inputs made from high-resolution faces.

The default kernels match the SDE-SR code: antialiased *bilinear* downscaling, antialiased
*bicubic* upscaling back to HR size (its shipped LR images are reproduced that way within one
grey level). The same ``downscale`` is used to make training pairs, SR inputs and the
LR-consistency metric, so that the three can never disagree.

Optional surveillance degradations (host-side numpy, used by ``datasets.make_lr``; all are
no-ops at their "off" value): :func:`gaussian_blur` of the HR before downscaling,
:func:`add_gaussian_noise` and :func:`jpeg_compress` of the LR. Randomness only comes from the
generators passed in.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from scipy import ndimage

RESIZE_METHODS = ('nearest', 'bilinear', 'bicubic', 'lanczos3', 'lanczos5')


def _check_method(method: str) -> None:
    if method not in RESIZE_METHODS:
        raise ValueError(f'unknown resize kernel {method!r}; known: {RESIZE_METHODS}')


def resize(images: jax.Array, size: tuple[int, int], method: str, antialias: bool = True):
    """Resizes a batch ``[..., H, W, C]`` of float images to ``size`` = (h, w)."""
    _check_method(method)
    images = jnp.asarray(images, jnp.float32)
    shape = images.shape[:-3] + tuple(size) + images.shape[-1:]
    return jax.image.resize(images, shape, method=method, antialias=antialias)


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
