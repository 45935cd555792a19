"""In-plane rotation (roll) of small faces: landmarks found again on upscaled, rotated views.

YuNet's five landmarks hold little of a small face's roll: they stay near an upright face's
layout in the box. On ``celeba_id128`` faces rolled by 30 degrees and detected with
``detect_scale=2``, the crop cut with them is left rolled by a median 20-29 degrees at 12-40 px
boxes (``tests/test_roll.py``), so :func:`faces.align.crop_matrix` cuts a tilted crop. Even
on the face upscaled to a 112 px box YuNet reports only part of a large roll, but it reports
a nearly upright face well, and scores a face best when it is about upright. Hence
:func:`refine_roll`:

1. cut a window around the face (the photo's border repeated beyond its edge, no black
   frame for YuNet to see) and render views of it: the face upscaled to a
   :data:`VIEW_BOX` px box, rotated by the roll its landmarks imply plus each of
   :data:`SEARCH_OFFSETS`;
2. detect on each view and read the roll YuNet sees there; the rotation at which that roll
   crosses zero makes the face upright (:func:`upright_roll`: YuNet's shrinkage toward
   upright does not bias that point);
3. de-rotate by that roll with each of :data:`REFINE_JITTER` added, detect again, and average
   the landmarks of these views (mapped back, weighted by score): each view's YuNet error is
   partly its own, so the average is steadier.

Every view is a similarity of the photo (:func:`view_matrix`), so landmarks go back through
its exact inverse; coordinates follow the package's pixel-centre convention (:mod:`faces`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from faces.align import (
    CELEBA_ID128_LANDMARKS,
    resize_image,
    resize_matrix,
    similarity_transform,
    to_3x3,
)
from faces.detect import SOURCE_GIVEN, Detection, Detector, to_float255
from faces.wild import landmarks_from_box

#: Width (px) of the face box in a view: large enough that YuNet's landmarks follow a nearly
#: upright face closely (measured on 8 faces: 80 px gave a median residual of 3.1 degrees,
#: 112 px 2.6).
VIEW_BOX = 112
#: A view's side over its face box: room for the face rotated and for YuNet's context.
VIEW_CONTEXT = 2.0
#: YuNet pads its input to a multiple of this (its largest stride); views are cut to fit.
YUNET_STRIDE = 32
#: Rotations (degrees) tried around the roll the landmarks already imply: a face rolled by
#: up to about 30 degrees more than its landmarks say is brought upright by one of them.
SEARCH_OFFSETS = (-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0)
#: Rotations (degrees) about the estimate whose landmarks are averaged in the last step.
REFINE_JITTER = (-6.0, 0.0, 6.0)
#: A view's detection is this face when its box centre lies within this fraction of the
#: view's side of the view's centre (where the face was put); another face is ignored.
CENTRE_TOLERANCE = 0.25
#: Spline order of the view's interpolation: cubic, so a face upscaled 5-10x is smooth
#: rather than bilinear's facets, which YuNet scores and places worse.
SPLINE_ORDER = 3
#: Extra window pixels beyond the view's footprint, for the spline's support.
WINDOW_MARGIN = 2

#: (x, y) <-> (row, column): scipy.ndimage indexes arrays by row first.
_SWAP_XY = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def landmark_roll(landmarks: np.ndarray) -> float:
    """The roll (degrees) the five ``landmarks`` imply: the rotation of the least-squares
    similarity from the canonical crop landmarks onto them (image axes, y down: positive is
    clockwise on screen). :func:`faces.align.crop_matrix` undoes exactly this rotation."""
    matrix = similarity_transform(CELEBA_ID128_LANDMARKS, landmarks)
    return float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))


def view_matrix(centre: np.ndarray, scale: float, angle: float, side: int) -> np.ndarray:
    """``[3, 3]`` similarity from photo pixels to a ``side``-square view: ``centre`` goes to
    the view's centre, scaled by ``scale`` and rotated by ``angle`` degrees (as
    :func:`landmark_roll` measures it, so a face of roll ``-angle`` comes out upright)."""
    a = np.radians(angle)
    rotation = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    offset = np.full(2, (side - 1) / 2) - rotation @ np.asarray(centre, np.float64)
    return to_3x3(np.c_[rotation, offset])


class _Window:
    """The photo around one face, prefiltered once for the spline warps of all its views.

    Photo pixels outside the photo repeat its edge (index clipping). A face shrunk into the
    view (box wider than :data:`VIEW_BOX`) is first resized with an antialiased filter, so
    that the spline samples an image of about the view's resolution.
    """

    def __init__(self, photo: Any, centre: np.ndarray, radius: float, scale: float):
        h, w = np.shape(photo)[:2]
        x0, y0 = (int(np.floor(c - radius)) - WINDOW_MARGIN for c in centre)
        n = int(np.ceil(2 * radius)) + 2 * WINDOW_MARGIN + 1
        rows, cols = (
            np.clip(np.arange(y0, y0 + n), 0, h - 1),
            np.clip(np.arange(x0, x0 + n), 0, w - 1),
        )
        window = to_float255(np.asarray(photo)[rows][:, cols]) / 255.0
        # Photo pixels -> window pixels: the shift to (x0, y0), then the resize (if any).
        self.from_photo = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
        if scale < 1:
            side = max(1, round(n * scale))
            window = resize_image(window, side, side)
            self.from_photo = resize_matrix(side / n) @ self.from_photo
        self.coefficients = [
            ndimage.spline_filter(window[..., c].astype(np.float64), order=SPLINE_ORDER)
            for c in range(window.shape[-1])
        ]

    def render(self, matrix: np.ndarray, side: int) -> np.ndarray:
        """The view of photo -> view ``matrix`` ``[3, 3]``, ``side``-square float32 in [0, 1]."""
        view_to_window = self.from_photo @ np.linalg.inv(matrix)
        rc = _SWAP_XY @ view_to_window @ _SWAP_XY  # The same map on (row, column) indices.
        planes = [
            ndimage.affine_transform(c, rc[:2, :2], rc[:2, 2], output_shape=(side, side),
                                     order=SPLINE_ORDER, mode='nearest', prefilter=False)
            for c in self.coefficients
        ]  # fmt: skip
        return np.clip(np.stack(planes, -1), 0.0, 1.0).astype(np.float32)


def _detect_in_view(
    detector: Detector, window: _Window, matrix: np.ndarray, side: int
) -> tuple[np.ndarray, float] | None:
    """The face at the centre of the view ``matrix``: its landmarks in photo pixels and its
    score, or ``None`` when YuNet finds none there."""
    centre = (side - 1) / 2
    near = [
        d for d in detector.detect(window.render(matrix, side))
        if np.linalg.norm(d.box[:2] + d.box[2:] / 2 - centre) <= CENTRE_TOLERANCE * side
    ]  # fmt: skip
    if not near:
        return None
    best = max(near, key=lambda d: d.score)
    back = np.linalg.inv(matrix)
    return best.landmarks @ back[:2, :2].T + back[:2, 2], best.score


def refine_roll(photo: Any, detector: Detector, face: Detection) -> Detection:
    """``face`` with landmarks that carry its roll (module doc), in ``photo`` pixels.

    ``photo`` ``[H, W, 3]`` uint8 or float [0, 1]; ``face`` a detection (or a given face) of
    it. The box, score and source are kept (the box stays the photo's detection, which names
    the face's noise, :func:`photos.face_key`). When YuNet finds the face in none of the
    search views, or in none of the last step's views, the face is returned as it came: no
    detection means no refinement.
    """
    scale = VIEW_BOX / float(max(face.box[2], face.box[3]))
    side = int(np.ceil(VIEW_CONTEXT * VIEW_BOX / YUNET_STRIDE) * YUNET_STRIDE)
    centre = face.box[:2] + face.box[2:] / 2
    # A view's corners reach sqrt(2) * side / 2 view pixels from its centre, at any rotation.
    window = _Window(photo, centre, np.sqrt(2) * side / 2 / scale, scale)
    start = landmark_roll(face.landmarks)
    views = []  # (view rotation, roll YuNet sees in the view, score)
    for offset in SEARCH_OFFSETS:
        angle = -(start + offset)
        seen = _detect_in_view(detector, window, view_matrix(centre, scale, angle, side), side)
        if seen is not None:
            views.append((angle, landmark_roll(seen[0]) + angle, seen[1]))
    if not views:
        return face
    roll = upright_roll(views)
    jittered = [view_matrix(centre, scale, -(roll + j), side) for j in REFINE_JITTER]
    final = [f for f in (_detect_in_view(detector, window, v, side) for v in jittered) if f]
    if not final:
        return face
    weights = np.array([score for _, score in final])
    landmarks = np.tensordot(weights / weights.sum(), np.stack([lm for lm, _ in final]), 1)
    return Detection(face.box, landmarks, face.score, face.source)


def upright_roll(views: Sequence[tuple[float, float, float]]) -> float:
    """The face's roll from the views it was found in, ``(view rotation, roll seen in the
    view, score)``: minus the rotation at which the seen roll crosses zero.

    YuNet reports a shrunken roll, ``g(roll + rotation)`` with ``g`` increasing, ``g(0) = 0``
    and ``|g(r)| < |r|``: the shrinkage biases any one view's estimate toward that view's
    upright, but not where the seen roll is zero, which is where the view makes the face
    upright. Linear interpolation between the two neighbouring rotations whose seen rolls
    change sign (the best-scoring pair if several do); without a sign change, the roll seen by
    the best-scoring view. Measured against the best-scoring view's roll alone
    (``tests/test_roll.py`` sweep, 8 faces): median residual 2.8 against 3.5 degrees, 90th
    percentile 6.8 against 8.7, and an upright 74 px face turned by at most 4.8 against 9.4.
    """
    ordered = sorted(views)
    crossings = [
        (s0 + s1, a0 - r0 * (a1 - a0) / (r1 - r0))
        for (a0, r0, s0), (a1, r1, s1) in zip(ordered, ordered[1:], strict=False)
        if r0 <= 0 <= r1 and r1 > r0
    ]
    if crossings:
        return -max(crossings)[1]
    angle, seen, _ = max(views, key=lambda v: v[2])
    return seen - angle


def listed_by_box(face: Detection) -> bool:
    """Whether a given face was listed by its box only: its landmarks are those
    :func:`faces.wild.landmarks_from_box` drew in it (an upright face's, whatever its roll)."""
    return face.source == SOURCE_GIVEN and np.allclose(face.landmarks, landmarks_from_box(face.box))


def refine_faces(photo: Any, detector: Detector, faces: Sequence[Detection]) -> list[Detection]:
    """:func:`refine_roll` for each face of ``photo`` except given faces with their own
    landmarks: those are the list's word and kept as listed. Faces listed by their box only
    (:func:`listed_by_box`) are refined: their landmarks were drawn upright, and a face too
    small for YuNet in the photo is often found in the upscaled views."""
    return [
        f if f.source == SOURCE_GIVEN and not listed_by_box(f) else refine_roll(photo, detector, f)
        for f in faces
    ]
