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

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from faces.align import resize_image, resize_matrix, to_3x3, warp_face
from faces.detect import to_float255
from utils.images import to_uint8

#: Output rows per band of :func:`pasted_bands`: a 16000 px wide RGB band is then about 50 MB
#: of float32.
BAND_ROWS = 256


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


def pasted_bands(
    photo: Any,
    crops: Sequence[Any],
    matrices: Sequence[np.ndarray],
    scale: int,
    feather: float,
    lr_sizes: Sequence[int | None] | None = None,
    margin: float = 0.0,
    band_rows: int = BAND_ROWS,
) -> Iterator[np.ndarray]:
    """:func:`paste_faces` into :func:`upscale_photo` of ``photo``, made and yielded in bands
    of ``band_rows`` output rows (uint8 ``[rows, W scale, C]``, top to bottom).

    For photos of any size and upscale: the enlarged photo never exists whole, so memory is
    the photo (as float) and one band (with :func:`utils.images.save_png_rows`, what is
    written too). Each band is Pillow's bicubic resize of its own source band (``box``),
    whose filter reads the rows around the band as the whole-photo resize does, and every face
    crossing the band is pasted into it (:func:`paste_back` with the band's origin): equal to
    the whole-photo :func:`paste_faces` up to float rounding (1 level of 8 bits).
    ``scale``: a whole number >= 1; ``lr_sizes``: per crop, the LR side its matrix maps to
    (faces of a size ladder differ; ``None``: the crop's own side, as :func:`paste_back`).
    """
    from PIL import Image

    if scale != int(scale) or scale < 1:
        raise ValueError(f'photo scale {scale} is not a whole number >= 1')
    scale = int(scale)
    image = _to_unit(photo)
    h, w, c = image.shape
    planes = [Image.fromarray(np.ascontiguousarray(image[..., k], np.float32)) for k in range(c)]
    step = max(1, band_rows // scale) * scale
    shape = (h * scale, w * scale)
    lr_sizes = list(lr_sizes) if lr_sizes is not None else [None] * len(crops)
    regions = [_crop_region(shape, _to_unit(f).shape[0], m, scale, lr)
               for f, m, lr in zip(crops, matrices, lr_sizes, strict=True)]  # fmt: skip
    for top in range(0, h * scale, step):
        rows = min(step, h * scale - top)
        if scale == 1:
            band = image[top : top + rows]
        else:
            box = (0.0, top / scale, float(w), (top + rows) / scale)
            band = np.stack([np.asarray(p.resize((w * scale, rows), Image.Resampling.BICUBIC,
                                                 box)) for p in planes], -1)  # fmt: skip
            band = np.clip(band, 0.0, 1.0)
        for crop, matrix, region, lr in zip(crops, matrices, regions, lr_sizes, strict=True):
            if region is None or region[1][1] <= top or region[0][1] >= top + rows:
                continue  # The face misses this band.
            band, _ = paste_back(
                band, crop, _shifted(matrix, (0, top), scale), scale, feather, lr, margin
            )
        yield to_uint8(band)


def _shifted(matrix: np.ndarray, origin: tuple[float, float], scale: float) -> np.ndarray:
    """The photo -> LR crop ``matrix`` seen from a part of the upscaled photo whose pixel 0
    is upscaled pixel ``origin`` (x, y): part pixel ``p`` is photo pixel
    ``(p + origin + 0.5) / scale - 0.5``, i.e. the part's "photo" is shifted by
    ``origin / scale``."""
    shift = np.eye(3)
    shift[:2, 2] = np.asarray(origin, np.float64) / scale
    return (to_3x3(matrix) @ shift)[:2]


def _crop_region(
    shape: tuple[int, ...], n: int, matrix: np.ndarray, scale: float, lr_size: int | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """The pixel box ``(lo, hi)`` (x, y) of the upscaled photo that an ``n`` px crop covers,
    clipped to the photo; None when it lies outside."""
    to_up = np.linalg.inv(to_3x3(upscaled_crop_matrix(matrix, scale, n, lr_size)))
    edge = n - 0.5  # The crop square's corners, outer edges of its corner pixels.
    corners = np.array([[-0.5, -0.5, 1], [edge, -0.5, 1], [-0.5, edge, 1], [edge, edge, 1]])
    xy = corners @ to_up[:2].T
    lo = np.maximum(np.floor(xy.min(0)).astype(int), 0)
    hi = np.minimum(np.ceil(xy.max(0)).astype(int) + 1, np.asarray(shape[1::-1]))
    return None if np.any(hi <= lo) else (lo, hi)


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
    mask = np.zeros(out.shape[:2], np.float32)
    region = _crop_region(out.shape, n, matrix, scale, lr_size)
    if region is None:
        return out, mask  # The crop lies outside the photo.
    lo, hi = region
    to_up = np.linalg.inv(to_3x3(upscaled_crop_matrix(matrix, scale, n, lr_size)))
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
