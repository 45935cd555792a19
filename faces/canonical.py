"""How the canonical geometry constants were derived (median YuNet measurements).

``python -m faces.canonical --split test`` detects the central face of every ``celeba_id128``
image of the split and prints the per-point median and median absolute deviation (MAD) of

* the landmarks (:data:`faces.align.CELEBA_ID128_LANDMARKS`), and
* the landmarks as fractions of YuNet's box (:data:`faces.wild.BOX_LANDMARKS`: how a face
  given only by its box gets landmarks).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from faces.detect import Detection, YuNetDetector, select_central


def central_faces(images: Iterable[Any], detector: YuNetDetector | None = None) -> list[Detection]:
    """The central YuNet face of each image where one is found (images without are skipped)."""
    detector = detector or YuNetDetector()
    found = []
    for img in images:
        arr = np.asarray(img)
        face = select_central(detector.detect(arr), *arr.shape[:2])
        if face is not None:
            found.append(face)
    return found


def median_and_mad(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-entry median over the first axis and the median absolute deviation from it."""
    points = np.asarray(points, np.float64)
    median = np.median(points, axis=0)
    return median, np.median(np.abs(points - median), axis=0)


def derive_canonical_landmarks(
    images: Iterable[Any], detector: YuNetDetector | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-point median and MAD of central-face landmarks over aligned ``images``.

    Returns ``(median [5, 2], mad [5, 2], n_detected)``; how
    :data:`faces.align.CELEBA_ID128_LANDMARKS` was obtained.
    """
    faces = central_faces(images, detector)
    if not faces:
        raise ValueError('no face detected in any image')
    median, mad = median_and_mad(np.stack([f.landmarks for f in faces]))
    return median, mad, len(faces)


def derive_box_landmarks(faces: list[Detection]) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD ``[5, 2]`` of landmarks relative to the box: ``(landmark - xy) / wh``."""
    if not faces:
        raise ValueError('no faces to measure')
    rel = np.stack([(f.landmarks - f.box[:2]) / f.box[2:] for f in faces])
    return median_and_mad(rel)


def _main() -> None:
    """Derives the canonical celeba_id128 geometry: ``python -m faces.canonical [--split]``."""
    import argparse

    from PIL import Image

    from utils import csvfile
    from utils.paths import shared_data_dir

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument('--split', default='test')
    args = parser.parse_args()
    root = shared_data_dir() / 'celeba_id128'
    table = csvfile.read_csv(root / 'faces.csv', ('file', 'split'))
    files = [r['file'] for r in table.rows if r['split'] == args.split]
    images = (np.array(Image.open(root / name).convert('RGB')) for name in files)
    faces = central_faces(images)
    median, mad = median_and_mad(np.stack([f.landmarks for f in faces]))
    rel_median, rel_mad = derive_box_landmarks(faces)
    boxes, box_mad = median_and_mad(np.stack([f.box for f in faces]))
    print(f'{len(faces)}/{len(files)} detected')
    print(f'landmarks median:\n{np.round(median, 1)}\nMAD:\n{np.round(mad, 2)}')
    print(f'landmarks / box median:\n{np.round(rel_median, 3)}\nMAD:\n{np.round(rel_mad, 3)}')
    print(f'box (x, y, w, h) median: {np.round(boxes, 1)}, MAD: {np.round(box_mad, 1)}')


if __name__ == '__main__':
    _main()
