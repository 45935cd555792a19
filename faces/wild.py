"""Finding faces in arbitrary photos: YuNet with filters, and faces given in a CSV.

The first step of restoring faces in the wild (detect, align, restore, paste back):
:func:`find_faces` returns :class:`~faces.detect.Detection` records (box, five landmarks,
score, source) whose landmarks :func:`faces.align.crop_matrix` turns into crops.

Smallest detectable face. YuNet (score >= 0.6) misses small faces. Measured with
``python bench/small_faces.py`` (``bench/results/small_faces.md``): 60 ``celeba_id128`` test
faces and the central faces of 60 LFW images, each downscaled (antialiased) and pasted into a
160x120 frame of smoothed noise; a face is found when a detection's landmarks lie within half
an eye distance of where they were placed. Size = the width of YuNet's own box (0.58 of the
side of a ``celeba_id128`` crop, eyes 0.45 of the box width apart):

* ``detect_scale=1``: half found at a 12 px box (LFW: 15 px), 90 % at 19 px (LFW: 21 px),
  none at 8 px (LFW: 9 px);
* ``detect_scale=2``: half at 7 px (LFW: 9 px), 90 % at 12 px (LFW: 13 px);
* ``detect_scale=4``: half at 6 px (LFW: 7 px), 90 % at 8 px (LFW: 9 px).

So YuNet alone needs a face box about 12-15 px wide (eyes 5-7 px apart, a ``celeba_id128``
crop of 20-26 px); on the photo upscaled by ``detect_scale`` (bicubic) it finds faces down to
6-9 px, at ``detect_scale**2`` times the detector's cost. Landmarks worsen as faces shrink:
the median over faces of the mean landmark error is 0.19 eye distance at a 19 px box without
upscaling, 0.10 with ``detect_scale=2`` and 0.08 with 4. Smaller faces still can be listed in
a CSV (:func:`read_face_csv`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faces import tiles
from faces.detect import SOURCE_GIVEN, Detection, Detector, box_iou, select_central
from utils import csvfile

#: Landmarks as fractions of YuNet's box, ``(landmark - (x, y)) / (w, h)``: the per-point
#: median over the ``celeba_id128`` test split (1,118 faces; median absolute deviation
#: 0.01-0.02 in y, 0.04-0.08 in x, most for the nose, which turns with the head). Gives faces
#: listed by their box their landmarks (:func:`landmarks_from_box`). Reproduce with
#: ``python -m faces.canonical --split test``.
BOX_LANDMARKS = np.array(
    [[0.243, 0.394], [0.713, 0.392], [0.463, 0.591], [0.290, 0.740], [0.690, 0.738]],
    dtype=np.float64,
)

BOX_COLUMNS = ('x', 'y', 'w', 'h')
LANDMARK_COLUMNS = tuple(f'{axis}{i}' for i in range(1, 6) for axis in 'xy')

#: Two faces whose boxes overlap by more than this IoU are one face (YuNet's NMS threshold).
SAME_FACE_IOU = 0.3


class FaceListError(ValueError):
    """A face list (CSV) that cannot be read; the message names the file and line."""


def landmarks_from_box(box: np.ndarray) -> np.ndarray:
    """Five landmarks ``[5, 2]`` for a face box ``(x, y, w, h)`` drawn as YuNet draws it.

    ``(x, y) + BOX_LANDMARKS * (w, h)``: where the landmarks of a median ``celeba_id128`` face
    sit in its YuNet box (upright and frontal; a turned head has its nose elsewhere).
    """
    box = np.asarray(box, np.float64)
    return box[:2] + BOX_LANDMARKS * box[2:]


def box_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The box ``(x, y, w, h)`` whose :func:`landmarks_from_box` fit ``landmarks`` best.

    Least squares per axis (``landmark = x + fraction * w``), the inverse of
    :func:`landmarks_from_box` for landmarks in the median geometry.
    """
    lm = np.asarray(landmarks, np.float64)
    box = np.zeros(4)
    for axis in range(2):
        slope, offset = np.polyfit(BOX_LANDMARKS[:, axis], lm[:, axis], 1)
        box[axis], box[axis + 2] = offset, slope
    return box


def find_faces(
    photo: Any,
    detector: Detector,
    only_center: bool = False,
    min_size: float = 0,
    given: Sequence[Detection] | None = None,
    detect_scale: int = 1,
) -> list[Detection]:
    """The faces of ``photo`` ``[H, W, 3]`` (uint8 or float [0, 1]): given ones, then detected.

    * ``detect_scale``: YuNet runs on the photo upscaled by this factor (bicubic), for faces
      too small for it at their size (module doc); coordinates are mapped back to the photo.
      A photo larger than a tile is detected in tiles plus an overview, so memory stays
      bounded (:func:`faces.tiles.detect`).
    * ``min_size``: detections whose box is narrower or shorter than this (pixels of the
      photo) are dropped: ``min(w, h) >= min_size`` is kept (YuNet's boxes are about 0.76 as
      wide as tall, so this is the box width).
    * ``given``: faces listed for this photo (:func:`read_face_csv`), kept whatever their
      size; a detection overlapping one (IoU > :data:`SAME_FACE_IOU`) is the same face and
      dropped, the list wins.
    * ``only_center``: of all these, only the face whose box centre is nearest the photo's
      centre (:func:`faces.detect.select_central`; none if there is no face).

    Returns the given faces in their order, then the detections best first.
    """
    found = tiles.detect(photo, detector, detect_scale)
    found = [d for d in found if min(d.box[2], d.box[3]) >= min_size]
    given = list(given or [])
    if given:
        given_boxes = np.stack([g.box for g in given])
        found = [d for d in found if box_iou(d.box, given_boxes).max() <= SAME_FACE_IOU]
    faces = given + found
    if only_center:
        central = select_central(faces, *np.shape(photo)[:2])
        return [] if central is None else [central]
    return faces


@dataclasses.dataclass(frozen=True)
class FaceList:
    """Faces listed per photo in a CSV (:func:`read_face_csv`), with the lines they came from.

    Reads as a mapping ``{file: [Detection, ...]}``; :meth:`where` names a face's line, so that
    a row found wrong later (a box outside its photo, a name matching no input) is refused by
    file and line too.
    """

    path: str
    faces: Mapping[str, list[Detection]]
    lines: Mapping[str, list[int]]

    def __getitem__(self, name: str) -> list[Detection]:
        return self.faces[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.faces)

    def __contains__(self, name: object) -> bool:
        return name in self.faces

    def __len__(self) -> int:
        return len(self.faces)

    def get(self, name: str) -> list[Detection] | None:
        return self.faces.get(name)

    def where(self, name: str, k: int = 0) -> str:
        """``<file>:<line>`` of face ``k`` listed for ``name``."""
        return f'{self.path}:{self.lines[name][k]}'

    def outside(self, name: str, height: int, width: int) -> None:
        """Refuses (:class:`FaceListError`) a box of ``name`` lying wholly outside its
        ``height`` x ``width`` photo: it would be super-resolved from black and counted."""
        for k, face in enumerate(self.faces.get(name) or []):
            x, y, w, h = face.box
            if x >= width or y >= height or x + w <= 0 or y + h <= 0:
                raise FaceListError(
                    f'{self.where(name, k)}: the box {np.round(face.box, 1).tolist()} of '
                    f'{name!r} lies outside the {width}x{height} photo'
                )


def read_face_csv(path: str | Path) -> FaceList:
    """Faces listed per photo in a CSV: ``{file: [Detection, ...]}`` in file order.

    Columns (a header line, names exact): ``file`` (the photo's name as the caller looks it
    up) and ``x,y,w,h`` (a face box as YuNet draws it, top-left corner and size in photo
    pixels; landmarks from :func:`landmarks_from_box`), ``x1,y1,...,x5,y5`` (five landmarks,
    image-left eye first as in :class:`~faces.detect.Detection`; the box from
    :func:`box_from_landmarks`), or both (each landmark must lie in its box). A photo has one
    row per face. Faces get ``source='given'`` and score 1. Read by
    :func:`utils.csvfile.read_csv` (UTF-8, an Excel BOM allowed). A file that is not UTF-8, a
    missing or unknown column, a short or long row, a missing or non-numeric value, a box
    without area, a landmark outside its box, or one face listed twice (two rows of a photo
    whose boxes overlap by more than :data:`SAME_FACE_IOU`, which would be restored and pasted
    twice) raises :class:`FaceListError` naming the file and line (both lines for a repeat).
    """
    table = csvfile.read_csv(path, error_type=FaceListError)
    columns = _check_header(table)
    faces: dict[str, list[Detection]] = {}
    lines: dict[str, list[int]] = {}
    for row in table.rows:
        name, face = _parse_row(row, columns)
        earlier = faces.setdefault(name, [])
        if earlier:
            overlap = box_iou(face.box, np.stack([f.box for f in earlier]))
            k = int(np.argmax(overlap))
            if overlap[k] > SAME_FACE_IOU:
                raise row.error(
                    f'the face of {name!r} is the one of line {lines[name][k]} (boxes overlap by '
                    f'IoU {overlap[k]:.2f} > {SAME_FACE_IOU}): list each face once'
                )
        earlier.append(face)
        lines.setdefault(name, []).append(row.line)
    return FaceList(str(path), faces, lines)


def _check_header(table: csvfile.Table) -> tuple[str, ...]:
    """The value columns of a face list (box, landmarks or both), or :class:`FaceListError`."""
    names, where = list(table.columns), f'{table.path}:{table.header_line}'
    columns = tuple(c for group in (BOX_COLUMNS, LANDMARK_COLUMNS) if set(group) & set(names)
                    for c in group)  # fmt: skip
    if not columns:
        raise FaceListError(
            f'{where}: columns {names}: expected file,x,y,w,h or file,x1,...,y5 (or both)'
        )
    expected = ('file', *columns)
    missing = [c for c in expected if c not in names]
    unknown = [c for c in names if c not in expected]
    if missing or unknown:
        raise FaceListError(
            f'{where}: columns {names}: missing {missing}, unknown or repeated '
            f'{unknown or "none"}; expected {",".join(expected)}'
        )
    return columns


def _parse_row(row: csvfile.Row, columns: tuple[str, ...]) -> tuple[str, Detection]:
    """One face of a face list: its photo's name and the face, or :class:`FaceListError`."""
    name = row.get('file')
    if not name:
        raise row.error('no file name')
    values = []
    for column in columns:
        text = row[column]
        try:
            values.append(float(text))
        except ValueError:
            raise row.error(f'column {column!r} is not a number: {text!r}') from None
        if not math.isfinite(values[-1]):
            raise row.error(f'column {column!r} is not finite: {text!r}')
    given = dict(zip(columns, values, strict=True))
    box = np.array([given[c] for c in BOX_COLUMNS]) if 'x' in given else None
    landmarks = np.array([given[c] for c in LANDMARK_COLUMNS]).reshape(5, 2) if (
        'x1' in given) else None  # fmt: skip
    box = box_from_landmarks(landmarks) if box is None else box
    landmarks = landmarks_from_box(box) if landmarks is None else landmarks
    if box[2] <= 0 or box[3] <= 0:
        raise row.error(
            f'the face has no area (box {np.round(box, 1).tolist()}; '
            'landmarks must be image-left eye first, eyes above the mouth)'
        )
    if len(columns) == len(BOX_COLUMNS) + len(LANDMARK_COLUMNS):
        _check_inside(row, box, landmarks)
    return name, Detection(box, landmarks, 1.0, SOURCE_GIVEN)


def _check_inside(row: csvfile.Row, box: np.ndarray, landmarks: np.ndarray) -> None:
    """Refuses a row whose landmarks do not all lie in its box (swapped or shifted columns)."""
    inside = (landmarks >= box[:2]) & (landmarks <= box[:2] + box[2:])
    outside = np.flatnonzero(~inside.all(axis=1))
    if outside.size:
        k = int(outside[0])
        raise row.error(
            f'landmark {k + 1} ({landmarks[k, 0]:g}, {landmarks[k, 1]:g}) lies outside the box '
            f'{np.round(box, 1).tolist()}'
        )
