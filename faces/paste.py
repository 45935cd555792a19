"""Pasting restored face crops back into the photo, upscaled, with a feathered mask.

Restoring faces in the wild (GFPGAN / CodeFormer style): a face is cut from the photo into an
LR crop (``matrix`` = :func:`faces.align.crop_matrix` at ``lr_size``), super-resolved into a
crop of ``n`` pixels (``n / lr_size`` = the SR factor), and pasted into the photo upscaled by
``scale`` (:func:`upscale_photo`).

Pixel conventions (pixel centres at integers, :mod:`faces`), all of them resizes in the sense
of :func:`faces.align.resize_matrix`: photo pixel ``p`` is upscaled-photo pixel
``(p + 0.5) scale - 0.5``; LR crop pixel ``c`` is restored-crop pixel
``(c + 0.5) n / lr_size - 0.5`` (what the SR models learn: their LR is an antialiased resize
of the HR). So upscaled photo -> restored crop is
``resize(n / lr_size) @ matrix @ resize(1 / scale)`` (:func:`upscaled_crop_matrix`), and the
crop is warped back through its inverse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from faces.align import resize_image, resize_matrix, to_3x3, warp_face
from faces.detect import to_float255


def _to_unit(image: Any) -> np.ndarray:
    """A float32 copy of ``image`` on [0, 1] (uint8 divided by 255; floats kept bit for bit)."""
    arr = np.asarray(image)
    return (
        arr.astype(np.float32)
        if np.issubdtype(arr.dtype, np.floating)
        else to_float255(arr) / 255.0
    )


def upscale_photo(photo: Any, scale: float) -> np.ndarray:
    """``photo`` ``[H, W, C]`` (uint8 or float [0, 1]) upscaled by ``scale``: bicubic, [0, 1].

    ``H * scale`` and ``W * scale`` must be whole (the pixel grid then follows
    :func:`faces.align.resize_matrix` exactly). Float32, clipped to [0, 1] (bicubic
    overshoots at edges).
    """
    image = _to_unit(photo)
    h, w = image.shape[:2]
    height, width = round(h * scale), round(w * scale)
    if not np.isclose(height, h * scale) or not np.isclose(width, w * scale):
        raise ValueError(f'{h}x{w} photo times {scale} is not a whole number of pixels')
    if (height, width) == (h, w):
        return image
    return np.clip(resize_image(image, height, width, 'bicubic'), 0.0, 1.0)


def feather_mask(size: int, feather: float, margin: float = 0.0) -> np.ndarray:
    """Soft-edged ``[size, size]`` mask of a crop: its square eroded by ``margin``, feathered.

    Per axis, with ``d`` a pixel centre's distance (crop pixels) from the outermost pixel
    centres: 0 for ``d <= margin``, 1 for ``d >= margin + feather``, a smoothstep in between
    (like blurring the eroded square with a ``feather``-wide box filter, but with no kink and
    exact 0 and 1 zones); the mask is the product over the two axes. The border rows are 0,
    so the warp's zero border never shows; ``margin`` keeps further border pixels out (where
    an SR network's padding or the photo's edge spoil the crop).
    """
    if feather <= 0 or margin < 0:
        raise ValueError(f'feather must be > 0 and margin >= 0, got {feather}, {margin}')
    if margin + feather > (size - 1) / 2:
        raise ValueError(
            f'margin {margin} + feather {feather} leave no opaque part of a {size} px crop'
        )
    pos = np.arange(size, dtype=np.float64)
    ramp = np.clip((np.minimum(pos, size - 1 - pos) - margin) / feather, 0.0, 1.0)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)
    return np.outer(ramp, ramp).astype(np.float32)


def upscaled_crop_matrix(
    matrix: np.ndarray, scale: float, crop_size: int, lr_size: int | None = None
) -> np.ndarray:
    """``[2, 3]`` map from the photo upscaled by ``scale`` to a ``crop_size`` restored crop.

    ``matrix``: photo -> LR crop of ``lr_size`` pixels (default ``crop_size``: no SR). The
    conventions are in the module doc; a perfect SR output is
    ``warp_face(upscaled_photo, upscaled_crop_matrix(...), crop_size)``.
    """
    factor = crop_size / (lr_size or crop_size)
    up_to_photo = np.linalg.inv(resize_matrix(scale))
    return (resize_matrix(factor) @ to_3x3(matrix) @ up_to_photo)[:2]


def paste_back(
    photo_up: Any,
    crop: Any,
    matrix: np.ndarray,
    scale: float,
    feather: float,
    lr_size: int | None = None,
    margin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pastes one restored ``crop`` ``[n, n, C]`` into ``photo_up`` ``[H, W, C]``.

    ``photo_up`` is the photo upscaled by ``scale`` (:func:`upscale_photo`); ``matrix`` maps
    the (original) photo to the LR crop of ``lr_size`` pixels (default ``n``) that ``crop``
    restores. The crop and its :func:`feather_mask` (``feather``, ``margin`` in crop pixels)
    are warped back (bilinear, antialiased if shrinking) and blended:
    ``out = mask * crop + (1 - mask) * photo_up``. Images are uint8 or float [0, 1].
    Returns the composite (float32 [0, 1]) and the mask ``[H, W]`` (0 where the photo is
    unchanged, 1 where the crop replaced it).
    """
    out = _to_unit(photo_up)
    face = _to_unit(crop)
    n = face.shape[0]
    if face.shape[:2] != (n, n) or face.shape[2:] != out.shape[2:]:
        raise ValueError(f'crop {face.shape} is not a square crop of the photo {out.shape}')
    to_up = np.linalg.inv(to_3x3(upscaled_crop_matrix(matrix, scale, n, lr_size)))
    edge = n - 0.5  # The crop square's corners, outer edges of its corner pixels.
    corners = np.array([[-0.5, -0.5, 1], [edge, -0.5, 1], [-0.5, edge, 1], [edge, edge, 1]])
    xy = corners @ to_up[:2].T
    lo = np.maximum(np.floor(xy.min(0)).astype(int), 0)
    hi = np.minimum(np.ceil(xy.max(0)).astype(int) + 1, out.shape[1::-1])
    mask = np.zeros(out.shape[:2], np.float32)
    if np.any(hi <= lo):
        return out, mask  # The crop lies outside the photo.
    shift = np.array([[1.0, 0, -lo[0]], [0, 1.0, -lo[1]], [0, 0, 1]])
    rgba = np.concatenate([face, feather_mask(n, feather, margin)[..., None]], axis=-1)
    warped = warp_face(rgba, (shift @ to_up)[:2], (hi[1] - lo[1], hi[0] - lo[0]))
    alpha = np.clip(warped[..., -1:], 0.0, 1.0)
    region = (slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    out[region] = alpha * warped[..., :-1] + (1.0 - alpha) * out[region]
    mask[region] = alpha[..., 0]
    return out, mask


def paste_faces(
    photo_up: Any,
    crops: Sequence[Any],
    matrices: Sequence[np.ndarray],
    scale: float,
    feather: float,
    lr_size: int | None = None,
    margin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`paste_back` of each crop in turn (later faces over earlier ones).

    Returns the composite and the combined mask ``1 - prod(1 - mask_i)``.
    """
    out = _to_unit(photo_up)
    keep = np.ones(out.shape[:2], np.float32)
    for crop, matrix in zip(crops, matrices, strict=True):
        out, mask = paste_back(out, crop, matrix, scale, feather, lr_size, margin)
        keep *= 1.0 - mask
    return out, 1.0 - keep
