"""Image grids and PNG writing (atomic: a partial file is never left looking complete)."""

from __future__ import annotations

import os
from collections.abc import Sequence
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
