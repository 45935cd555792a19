"""Face detection in photos of any size, with bounded memory: tiles plus one overview.

YuNet's activations grow with the image: its first layers hold 16-32 channels at half and a
quarter of the input's resolution, so a 4000x3000 photo upscaled 2x for small faces
(``sr.detect_scale``) needs about 10 GB. :func:`detect` runs it instead

* on overlapping tiles of the upscaled photo, each upscaled on its own, at most
  :data:`TILE` pixels a side: every face of up to :data:`OVERLAP` upscaled pixels lies whole
  in some tile;
* and on the whole photo reduced to :data:`TILE` on its long side, for faces larger than
  the overlap (at that scale they are at least a few tens of pixels, which YuNet finds);

then merges all detections by non-maximum suppression (YuNet's own IoU threshold). An image
no larger than a tile is detected whole, as before (the same detections).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from faces.align import resize_image, resize_matrix
from faces.detect import Detection, Detector, nms, to_float255

#: Largest side (pixels, at detection scale) of an image given to YuNet at once: about
#: 0.4 GB of activations.
TILE = 1536
#: Overlap of neighbouring tiles (pixels at detection scale): a face box up to this wide is
#: whole in some tile. Larger faces are found in the overview.
OVERLAP = 256
#: YuNet's NMS threshold (faces.detect.YuNetDetector), across tiles.
MERGE_IOU = 0.3


def detect(
    photo: Any, detector: Detector, scale: int = 1, tile: int = TILE, overlap: int = OVERLAP
) -> list[Detection]:
    """The faces of ``photo`` ``[H, W, 3]`` (uint8 or float [0, 1]) found on it upscaled by
    ``scale`` (bicubic), in photo pixels, best first; in tiles of ``tile`` overlapping by
    ``overlap`` (pixels at that scale) when it is larger than one (module doc)."""
    if not 0 < 2 * overlap < tile:
        raise ValueError(f'tile {tile} must exceed twice the overlap {overlap} (> 0)')
    image = to_float255(photo) / 255.0
    h, w = image.shape[:2]
    if max(h, w) * scale <= tile:
        return _detect_part(image, detector, scale, (0, 0))
    found = []
    step, span = (tile - overlap) / scale, tile / scale  # In photo pixels.
    for top in _starts(h, span, step):
        for left in _starts(w, span, step):
            part = image[top : top + int(span), left : left + int(span)]
            found += _detect_part(part, detector, scale, (left, top))
    found += _overview(image, detector, tile)
    return _merge(found)


def _starts(size: int, span: float, step: float) -> list[int]:
    """Tile origins covering ``[0, size)`` with tiles of ``span``, ``step`` apart."""
    if size <= span:
        return [0]
    starts = list(np.arange(0, size - span, step).astype(int)) + [int(size - span)]
    return sorted(set(starts))


def _detect_part(part: np.ndarray, detector: Detector, scale: int, origin: tuple) -> list:
    """Detections on ``part`` (float [0, 1]) upscaled by ``scale``, in photo pixels (``part``
    starts at photo pixel ``origin``, x and y)."""
    if scale != 1:
        ph, pw = part.shape[:2]
        part = np.clip(resize_image(part, ph * scale, pw * scale, 'bicubic'), 0.0, 1.0)
    back = np.linalg.inv(resize_matrix(scale))[:2]
    offset = np.asarray(origin, np.float64)
    return [_mapped(d, back, offset, scale) for d in detector.detect(part)]


def _overview(image: np.ndarray, detector: Detector, tile: int) -> list[Detection]:
    """Detections on the whole photo reduced to ``tile`` on its long side, in photo pixels."""
    h, w = image.shape[:2]
    factor = tile / max(h, w)
    small = resize_image(image, round(h * factor), round(w * factor), 'bilinear')
    back = np.linalg.inv(resize_matrix(factor))[:2]
    return [_mapped(d, back, np.zeros(2), factor) for d in detector.detect(small)]


def _mapped(face: Detection, back: np.ndarray, offset: np.ndarray, scale: float) -> Detection:
    """A detection on a resized (``back``: its pixels -> the part's) part at ``offset``."""
    corner = back[:, :2] @ face.box[:2] + back[:, 2] + offset
    landmarks = face.landmarks @ back[:, :2].T + back[:, 2] + offset
    return Detection(np.r_[corner, face.box[2:] / scale], landmarks, face.score, face.source)


def _merge(found: list[Detection]) -> list[Detection]:
    """Non-maximum suppression over detections from several tiles, best first."""
    if not found:
        return []
    boxes = np.stack([d.box for d in found])
    scores = np.array([d.score for d in found])
    return [found[i] for i in nms(boxes, scores, MERGE_IOU)]
