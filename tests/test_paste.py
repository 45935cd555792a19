"""Paste-back for photos of any size (issue 22): the photo enlarged and pasted band by band
equals the whole-photo paste, and the streaming PNG writer is lossless."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from faces.align import crop_matrix
from faces.paste import paste_faces, pasted_bands, upscale_photo
from faces.wild import landmarks_from_box
from utils.images import save_png_rows, to_uint8

LR, CROP = 8, 32  # A 4x SR crop, as the smoke model's.


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    from scipy import ndimage

    noise = np.random.default_rng(seed).uniform(0, 1, (height, width, 3))
    return np.clip(ndimage.gaussian_filter(noise, (2, 2, 0)) * 3 - 1, 0, 1).astype(np.float32)


def _faces(boxes: list[tuple[float, ...]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Random restored crops and their photo -> LR crop matrices, for face boxes (x, y, w, h)."""
    rng = np.random.default_rng(1)
    crops = [rng.uniform(0, 1, (CROP, CROP, 3)).astype(np.float32) for _ in boxes]
    matrices = [crop_matrix(landmarks_from_box(np.array(b)), LR) for b in boxes]
    return crops, matrices


@pytest.mark.parametrize('scale, band_rows', [(1, 7), (2, 16), (3, 10), (4, 1)])
def test_bands_equal_the_whole_photo_paste(scale, band_rows):
    """Faces crossing band edges, overlapping each other and the photo's border: every band
    of the streamed paste equals the whole-photo paste to 1 level of 8 bits."""
    photo = _photo(45, 61)
    boxes = [(10.3, 4.2, 14.0, 17.0), (18.0, 12.5, 16.0, 19.0), (50.0, 30.0, 15.0, 18.0)]
    crops, matrices = _faces(boxes)
    whole, mask = paste_faces(upscale_photo(photo, scale), crops, matrices, scale, 3.0, LR, 0.5)
    bands = list(pasted_bands(photo, crops, matrices, scale, 3.0, [LR] * 3, 0.5, band_rows))
    assert all(b.dtype == np.uint8 for b in bands) and len(bands) > 1
    streamed = np.concatenate(bands)
    assert streamed.shape == whole.shape
    diff = np.abs(streamed.astype(int) - to_uint8(whole).astype(int))
    assert diff.max() <= 1, diff.max()
    assert (mask > 0.5).sum() > 100  # The faces were pasted (the comparison is not vacuous).


def test_bands_refuse_a_fractional_scale():
    with pytest.raises(ValueError, match='whole number'):
        next(pasted_bands(_photo(8, 8), [], [], 1.5, 3.0))


@pytest.mark.parametrize('channels', [1, 3, 4])
def test_png_rows_are_lossless(tmp_path, channels):
    image = np.random.default_rng(channels).integers(0, 256, (37, 23, channels), np.uint8)
    path = tmp_path / 'x.png'
    save_png_rows(np.array_split(image, 5), image.shape, path)
    with Image.open(path) as read:
        back = np.asarray(read)
    np.testing.assert_array_equal(back.reshape(image.shape), image)
    assert not (tmp_path / 'x.png.tmp').exists()


def test_png_rows_refuse_missing_rows_and_keep_no_file(tmp_path):
    image = np.zeros((10, 4, 3), np.uint8)
    with pytest.raises(ValueError, match='9 rows for a PNG of height 10'):
        save_png_rows([image[:9]], image.shape, tmp_path / 'x.png')
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match='band'):
        save_png_rows([image.astype(np.float32)], image.shape, tmp_path / 'x.png')
    assert list(tmp_path.iterdir()) == []
