"""Detection in tiles plus an overview (``faces/tiles.py``, issue 22): the same faces as on
the whole image, small ones from the tiles and a large one from the overview."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from faces import tiles
from tests.conftest import require_face_model


@pytest.fixture(scope='module')
def detector():
    require_face_model('yunet')
    from faces.detect import YuNetDetector

    return YuNetDetector(num_threads=1)


def _scene(celeba_id128) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """A 600x800 photo of smooth noise with faces (x, y, side): small ones on tile seams and
    a large one wider than the tiles' overlap."""
    rng = np.random.default_rng(0)
    photo = ndimage.gaussian_filter(rng.uniform(0, 255, (600, 800, 3)), (4, 4, 0))
    photo = np.clip((photo - 127) * 3 + 127, 0, 255).astype(np.uint8)
    files = sorted((celeba_id128 / 'images').glob('*.png'))[:4]
    placed = [(180, 150, 40), (380, 300, 36), (600, 80, 44), (500, 300, 280)]
    for f, (x, y, side) in zip(files, placed, strict=True):
        with Image.open(f) as face:
            photo[y : y + side, x : x + side] = np.asarray(
                face.convert('RGB').resize((side, side), Image.LANCZOS)
            )
    return photo, placed


def test_tiles_find_the_faces_of_the_whole_image(detector, celeba_id128):
    photo, placed = _scene(celeba_id128)
    whole = tiles.detect(photo, detector, scale=1, tile=10**6)
    tiled = tiles.detect(photo, detector, 1, tile=256, overlap=96)  # Faces on the seams.
    assert len(whole) == len(placed)

    def centres(found):
        return sorted((d.box[:2] + d.box[2:] / 2).round(0).tolist() for d in found)

    assert len(tiled) == len(whole)  # Merged across tiles: each face once.
    np.testing.assert_allclose(centres(tiled), centres(whole), atol=6)
    large = max(tiled, key=lambda d: d.box[2])
    assert large.box[2] > 96  # Found (by the overview): wider than the overlap.


def test_upscaled_tiles_map_back_to_photo_pixels(detector, celeba_id128):
    photo, _ = _scene(celeba_id128)
    photo = photo[:350, :450]  # The two small faces only.
    whole = tiles.detect(photo, detector, scale=2, tile=10**6)
    tiled = tiles.detect(photo, detector, scale=2, tile=384, overlap=128)
    assert len(whole) >= 2 and len(tiled) == len(whole)
    for a, b in zip(sorted(whole, key=lambda d: d.box[0]), sorted(tiled, key=lambda d: d.box[0]),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1.5)
