"""Image grids and PNG writing (atomic: a partial file is never left looking complete)."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats (clipped) to uint8."""
    return np.asarray(np.clip(np.asarray(images, np.float32) * 255.0 + 0.5, 0, 255), np.uint8)


def to_rgb(images: np.ndarray) -> np.ndarray:
    """``[..., H, W, C]`` with C = 1 replicated to 3 channels (RGB-only networks: LPIPS, face
    embedders); RGB is returned unchanged."""
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def make_grid(columns: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
    """Side-by-side columns (e.g. LR | SR | HR), each a batch [B, H, W, 3] of the same H, W.

    Row b shows example b of every column; returns one uint8 image.
    """
    columns = [to_uint8(c) for c in columns]
    batch, height, width, channels = columns[0].shape
    for c in columns:
        if c.shape != columns[0].shape:
            raise ValueError(f'grid columns differ in shape: {[x.shape for x in columns]}')
    grid = np.full(
        (batch * (height + pad) + pad, len(columns) * (width + pad) + pad, channels), 255, np.uint8
    )
    for j, col in enumerate(columns):
        for b in range(batch):
            y, x = pad + b * (height + pad), pad + j * (width + pad)
            grid[y : y + height, x : x + width] = col[b]
    return grid


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Writes a uint8 (or [0, 1] float) HWC image to ``path`` via a temporary file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = image if image.dtype == np.uint8 else to_uint8(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]  # Grayscale: an 'L' PNG.
    tmp = path.with_name(path.name + '.tmp')
    Image.fromarray(image).save(tmp, format='PNG')
    os.replace(tmp, path)


#: zlib level of :func:`save_png_rows`: 6 (zlib's and Pillow's default) compresses large photos
#: little better than 3 at about twice the time.
PNG_ROWS_LEVEL = 3
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # Channels -> PNG colour type (grey, RGB, RGBA).


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', crc)


def save_png_rows(
    bands: Iterable[np.ndarray], shape: tuple[int, int, int], path: str | Path,
    level: int = PNG_ROWS_LEVEL,
) -> None:  # fmt: skip
    """Writes an 8-bit PNG of ``shape`` (H, W, C) from uint8 row bands ``[rows, W, C]``, top
    to bottom, without holding the image: memory is one band and zlib's window.

    Pillow needs the whole image (and copies RGB to 4 bytes a pixel); this writes the PNG
    stream itself (one IDAT chunk per band), with the "Up" filter (each row minus the row
    above, a numpy difference over the band), which photos compress about as well with as
    with Pillow's adaptive filters. Atomic like :func:`save_png`; a band count that does not
    add up to ``H`` raises before the file is renamed into place.
    """
    height, width, channels = shape
    if channels not in _PNG_COLOR_TYPES:
        raise ValueError(f'save_png_rows: {channels} channels; PNG takes 1, 3 or 4')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    header = struct.pack('>IIBBBBB', width, height, 8, _PNG_COLOR_TYPES[channels], 0, 0, 0)
    compressor = zlib.compressobj(level)
    previous = np.zeros((1, width * channels), np.uint8)
    try:
        with open(tmp, 'wb') as f:
            f.write(_PNG_SIGNATURE + _png_chunk(b'IHDR', header))
            rows = 0
            for band in bands:
                if band.dtype != np.uint8 or band.shape[1:] != (width, channels):
                    raise ValueError(f'band {band.shape} {band.dtype} of a {shape} uint8 PNG')
                f.write(_png_chunk(b'IDAT', compressor.compress(filter_up(band, previous))))
                previous, rows = band[-1:].reshape(1, -1), rows + len(band)
            f.write(_png_chunk(b'IDAT', compressor.flush()) + _png_chunk(b'IEND', b''))
        if rows != height:
            raise ValueError(f'save_png_rows: {rows} rows for a PNG of height {height}')
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def filter_up(band: np.ndarray, previous: np.ndarray) -> bytes:
    """PNG scanlines of ``band`` [rows, W, C] with filter type 2 ("Up": each row minus the one
    above, modulo 256; ``previous`` is the row above the band, zeros at the top)."""
    flat = band.reshape(len(band), -1)
    up = flat - np.concatenate([previous, flat[:-1]])  # uint8 arithmetic: modulo 256.
    return np.concatenate([np.full((len(band), 1), 2, np.uint8), up], axis=1).tobytes()
