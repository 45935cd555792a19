"""Roll (in-plane rotation) of small faces undone by :mod:`faces.roll` (issue 22)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from faces.align import crop_matrix, to_3x3, warp_face
from faces.detect import SOURCE_GIVEN, Detection, select_central
from faces.roll import landmark_roll, listed_by_box, refine_faces, refine_roll, view_matrix
from faces.wild import find_faces, landmarks_from_box
from tests.conftest import require_face_model

ANGLES = (-30, -20, -10, 0, 10, 20, 30)  # Roll put on each face, degrees.
WIDTHS = (12, 20, 28, 40)  # YuNet box width of the placed face, photo pixels.
BOX_FRACTION = 0.58  # YuNet's box width over the side of a celeba_id128 crop (faces/wild.py).
FRAME = (120, 160)  # Photo height, width.
N_FACES = 6


@pytest.fixture(scope='module')
def detector():
    require_face_model('yunet')
    from faces.detect import YuNetDetector

    return YuNetDetector(num_threads=1)


@pytest.fixture(scope='module')
def upright_faces(celeba_id128: Path) -> list[np.ndarray]:
    """Every 7th of the first test faces of celeba_id128 (aligned upright), float32 [0, 1]."""
    with open(celeba_id128 / 'faces.csv') as f:
        files = [r['file'] for r in csv.DictReader(f) if r['split'] == 'test'][::7][:N_FACES]
    return [
        np.asarray(Image.open(celeba_id128 / n).convert('RGB'), np.float32) / 255 for n in files
    ]


def _background(seed: int = 0) -> np.ndarray:
    """Smooth coloured noise (a blurred scene without faces), float32 [0, 1]."""
    noise = np.random.default_rng(seed).uniform(0, 1, (*FRAME, 3))
    smooth = ndimage.gaussian_filter(noise, (6, 6, 0))
    return np.clip((smooth - smooth.mean()) * 4 + 0.5, 0, 1).astype(np.float32)


def _placed(face: np.ndarray, width: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """``face`` (a 128 px crop) shrunk to a ``width`` px box, rolled by ``angle`` about its
    centre and pasted at the centre of the frame; the photo and the crop -> photo matrix."""
    scale, centre = width / (BOX_FRACTION * face.shape[0]), (face.shape[0] - 1) / 2
    to_photo = view_matrix(np.full(2, centre), 1.0, 0.0, 1)  # The crop's centre to 0.
    to_photo = view_matrix(np.zeros(2), scale, angle, 1) @ to_photo
    to_photo[:2, 2] += (np.array(FRAME[::-1]) - 1) / 2
    warped = warp_face(face, to_photo[:2], FRAME)
    mask = warp_face(np.ones_like(face[..., :1]), to_photo[:2], FRAME)
    return np.clip(mask * warped + (1 - mask) * _background(), 0, 1), to_photo


def _residual(landmarks: np.ndarray, reference: np.ndarray, to_photo: np.ndarray) -> float:
    """Roll (degrees) left in the crop cut with ``landmarks``: its map from the 128 px face,
    ``crop_matrix(landmarks) @ to_photo``, against the reference face's own crop matrix."""
    left = to_3x3(crop_matrix(landmarks, 128)) @ to_photo
    left = left @ np.linalg.inv(to_3x3(crop_matrix(reference, 128)))
    return float(np.degrees(np.arctan2(left[1, 0], left[0, 0])))


@pytest.fixture(scope='module')
def sweep(detector, upright_faces) -> dict[tuple[int, int], np.ndarray]:
    """Per (width, angle): ``[faces, 2]`` residual roll without and with the refinement
    (NaN where the photo's detection missed the face)."""
    out = {}
    for face in upright_faces:
        (reference,) = find_faces(face, detector, only_center=True)
        for width in WIDTHS:
            for angle in ANGLES:
                photo, to_photo = _placed(face, width, angle)
                found = find_faces(photo, detector, only_center=True, detect_scale=2)
                rows = out.setdefault((width, angle), [])
                if not found:
                    rows.append([np.nan, np.nan])
                    continue
                refined = refine_roll(photo, detector, found[0])
                rows.append([_residual(f.landmarks, reference.landmarks, to_photo)
                             for f in (found[0], refined)])  # fmt: skip
    return {k: np.array(v) for k, v in out.items()}


def _table(sweep: dict, column: int) -> str:
    lines = []
    for width in WIDTHS:
        cells = [sweep[width, a][:, column] for a in ANGLES]
        lines.append(f'{width:3d} px: ' + ' '.join(
            f'{np.nanmedian(c):+5.1f}|{np.nanmax(np.abs(c)):4.1f}' for c in cells))  # fmt: skip
    return '\n'.join(lines)


def test_refined_roll_is_undone(sweep):
    """Faces rolled by 0, +-10, +-20, +-30 degrees at 12-40 px boxes: after the refinement the
    crop's residual roll (estimated minus true) is within 5 degrees in median over all the
    faces found, and it no longer grows with the roll.

    Measured (6 faces x 7 angles x 4 sizes, 2 CPU cores): median |residual| 2.5 degrees,
    90th percentile 6.1, max 12.6 (unrefined: 12-13 median, up to 34.8); the median per size
    and angle at most 3.9 degrees off (40 px at -20 and +20), where unrefined it is 17-29 at
    +-30. The detector misses 8 of the 42 faces at 12 px (none larger). Bounds: per size and
    angle the issue's 5 degrees; overall median 4, 90th percentile 9, max 16; at most 10
    misses, at 12 px only. Not every face is within 5 degrees: at these sizes an eye is 1-3
    px, and YuNet's landmarks on the upscaled views scatter by several degrees.
    """
    print('\nrefined (median|max abs) per angle', ANGLES, '\n' + _table(sweep, 1))
    print('unrefined\n' + _table(sweep, 0))
    refined = np.abs(np.concatenate([v[:, 1] for v in sweep.values()]))
    missed = {w: int(sum(np.isnan(sweep[w, a][:, 1]).sum() for a in ANGLES)) for w in WIDTHS}
    stats = np.nanmedian(refined), np.nanpercentile(refined, 90), np.nanmax(refined)
    print('missed', missed, 'median {:.1f} p90 {:.1f} max {:.1f}'.format(*stats))
    assert stats[0] <= 4 and stats[1] <= 9 and stats[2] <= 16, stats
    assert missed[WIDTHS[0]] <= 10 and sum(missed.values()) == missed[WIDTHS[0]], missed
    for key, values in sweep.items():
        assert abs(np.nanmedian(values[:, 1])) <= 5, (key, values[:, 1])


def test_without_refinement_roll_stays(sweep):
    """The check can fail: YuNet's own landmarks (``detect_scale=2``) leave most of a 20-30
    degree roll in the crop: median residual 10.7-29.4 degrees per size and angle (measured),
    bound 8."""
    for (width, angle), values in sweep.items():
        if abs(angle) >= 20:
            assert abs(np.nanmedian(values[:, 0])) > 8, ((width, angle), values[:, 0])


def test_upright_large_face_unchanged(detector, upright_faces):
    """A 74 px box (the 128 px crop itself, edge-padded), upright: landmarks and roll kept
    within the refinement's own scatter.

    Measured on the 6 faces: the roll moved by -4.0 to +4.8 degrees (YuNet's scatter on the
    rotated views; the search does not know the face was upright; picking the best-scoring
    view instead of the zero crossing moved it by up to 9.4). Bounds: 0.2 eye distances,
    8 degrees.
    """
    for face in upright_faces:
        photo = np.pad(face, ((40, 40), (40, 40), (0, 0)), mode='edge')
        (found,) = find_faces(photo, detector, only_center=True)
        refined = refine_roll(photo, detector, found)
        eyes = np.linalg.norm(found.landmarks[1] - found.landmarks[0])
        shift = np.abs(refined.landmarks - found.landmarks).max() / eyes
        turn = landmark_roll(refined.landmarks) - landmark_roll(found.landmarks)
        assert shift <= 0.2 and abs(turn) <= 8, (shift, turn)


class _DotDetector:
    """Finds the brightest pixel's subpixel centre (a Gaussian dot) as all five landmarks."""

    def __init__(self, found: bool = True):
        self.found, self.images = found, []

    def detect(self, image: np.ndarray) -> list[Detection]:
        self.images.append(image)
        if not self.found:
            return []
        weight = np.clip(image[..., 0] - 0.5, 0, None)
        ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
        dot = np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
        box = np.r_[dot - 20, 40, 40]
        return [Detection(box, np.tile(dot, (5, 1)), 0.9)]


def test_views_map_back_exactly():
    """A dot's position found in the upscaled, rotated views maps back to where it is in the
    photo (pixel centres kept through every warp): within 0.05 px."""
    dot = np.array([33.3, 21.7])
    ys, xs = np.mgrid[0:60, 0:80]
    blob = np.exp(-((xs - dot[0]) ** 2 + (ys - dot[1]) ** 2) / (2 * 1.5**2))
    photo = np.repeat((0.5 + 0.5 * blob)[..., None], 3, -1).astype(np.float32)
    face = Detection(np.r_[dot - 6, 12, 12], np.tile(dot, (5, 1)), 0.8)
    detector = _DotDetector()
    refined = refine_roll(photo, detector, face)
    assert len(detector.images) > 1
    np.testing.assert_allclose(refined.landmarks, np.tile(dot, (5, 1)), atol=0.05)
    assert refined.score == face.score and np.array_equal(refined.box, face.box)


def test_no_detection_no_change_and_given_faces():
    """No face in any view: the face comes back as it was. Given faces with their own
    landmarks are kept; faces listed by their box only are refined."""
    photo = np.full((60, 80, 3), 0.5, np.float32)
    face = Detection(np.array([30.0, 20, 12, 14]), landmarks_from_box([30, 20, 12, 14]), 0.7)
    assert refine_roll(photo, _DotDetector(found=False), face) is face
    by_box = Detection(face.box, face.landmarks, 1.0, SOURCE_GIVEN)
    listed = Detection(face.box, face.landmarks + 0.5, 1.0, SOURCE_GIVEN)
    assert listed_by_box(by_box) and not listed_by_box(listed) and not listed_by_box(face)
    detector = _DotDetector(found=False)
    out = refine_faces(photo, detector, [listed, by_box])
    assert out[0] is listed and len(detector.images) == 7  # only by_box was searched
    assert select_central(out, 60, 80) is not None
