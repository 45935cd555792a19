"""Smallest face YuNet finds, with and without upscaling the photo first (``detect_scale``)::

    python bench/small_faces.py [--faces 60]

Each of ``--faces`` ``celeba_id128`` test faces (every 18th) and central faces of LFW images
(every 120th by name) is downscaled (antialiased) to a range of sizes and pasted into a
160x120 frame of smoothed noise; it counts as found when a detection's landmarks lie within
half an eye distance (mean over the five) of where its 128/150 px landmarks land. Face size
is YuNet's box width on the full image scaled by the downscale. Writes
``bench/results/small_faces.{json,md}``; the numbers are quoted in :mod:`faces.wild`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from faces.align import resize_image, resize_matrix  # noqa: E402
from faces.detect import YuNetDetector, select_central  # noqa: E402
from faces.wild import find_faces  # noqa: E402
from utils.paths import shared_data_dir  # noqa: E402

SIZES = (8, 10, 12, 14, 16, 20, 24, 32, 40)  # side of the downscaled image, px
FRAME, OFFSET = (120, 160), (70, 50)  # frame height, width; where the face goes (x, y)
FOUND_WITHIN = 0.5  # eye distances


def _files(count: int) -> dict[str, list[Path]]:
    celeba = shared_data_dir() / 'celeba_id128'
    with open(celeba / 'faces.csv') as f:
        test = [celeba / r['file'] for r in csv.DictReader(f) if r['split'] == 'test']
    lfw = sorted((shared_data_dir() / 'lfw_pairs' / 'images').glob('*.jpg'))
    return {'celeba_id128': test[::18][:count], 'lfw': lfw[::120][:count]}


def _background() -> np.ndarray:
    noise = np.random.default_rng(0).uniform(0, 1, (*FRAME, 3))
    smooth = ndimage.gaussian_filter(noise, (6, 6, 0))
    return np.clip((smooth - smooth.mean()) * 4 + 0.5, 0, 1).astype(np.float32)


def measure(paths: list[Path], detect_scale: int, detector: YuNetDetector) -> list[dict]:
    """Per size: faces found, median landmark error (eye distances), median box width."""
    faces = []
    for path in paths:
        image = np.asarray(Image.open(path).convert('RGB'), np.float32) / 255
        face = select_central(detector.detect(image), *image.shape[:2])
        if face is not None:
            faces.append((image, face))
    rows = []
    for size in SIZES:
        found, errors, widths = 0, [], []
        for image, face in faces:
            frame = _background()
            x, y = OFFSET
            frame[y : y + size, x : x + size] = resize_image(image, size, size)
            placed = resize_matrix(size / image.shape[1])
            expected = face.landmarks @ placed[:2, :2].T + placed[:2, 2] + OFFSET
            eye = np.linalg.norm(expected[1] - expected[0])
            widths.append(face.box[2] * size / image.shape[1])
            dists = [
                np.linalg.norm(d.landmarks - expected, axis=1).mean() / eye
                for d in find_faces(frame, detector, detect_scale=detect_scale)
            ]
            hits = [d for d in dists if d < FOUND_WITHIN]
            found += bool(hits)
            errors += hits[:1]
        rows.append(
            {
                'size': size,
                'box_width': float(np.median(widths)),
                'found': found,
                'faces': len(faces),
                'landmark_error': float(np.median(errors)) if errors else None,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--faces', type=int, default=60)
    args = parser.parse_args()
    detector = YuNetDetector(num_threads=1)
    results, lines = {}, ['| data | detect_scale | box width px | found | landmark error |']
    lines.append('|---|---|---|---|---|')
    for name, paths in _files(args.faces).items():
        for scale in (1, 2, 4):
            rows = measure(paths, scale, detector)
            results[f'{name}/x{scale}'] = rows
            for r in rows:
                err = '-' if r['landmark_error'] is None else f'{r["landmark_error"]:.3f}'
                lines.append(
                    f'| {name} | {scale} | {r["box_width"]:.1f} | {r["found"]}/{r["faces"]} '
                    f'| {err} |'
                )
            print(f'{name} x{scale} done', flush=True)
    out = REPO / 'bench' / 'results' / 'small_faces'
    out.with_suffix('.json').write_text(json.dumps(results, indent=1) + '\n')
    method = __doc__.split('\n\n', 2)[2].strip()
    out.with_suffix('.md').write_text(
        f'# Small faces and YuNet\n\n{method}\n\n' + '\n'.join(lines) + '\n'
    )
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
