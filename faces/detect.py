"""YuNet face detection (onnxruntime) and the choice of the central face.

YuNet's post-processing (anchor-free decoding and NMS) is re-implemented here after OpenCV's
``FaceDetectorYN`` (``face_detect.cpp``), so OpenCV is not needed (:mod:`faces.onnx_models`).
Images are RGB ``[H, W, 3]``, ``uint8`` (0..255) or float ([0, 1]); coordinates follow the
package's pixel-centre convention (:mod:`faces`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

from faces.onnx_models import MODEL_FILES, load_onnx_session, model_path

#: ``Detection.source`` of a face found by YuNet, and of one read from a face list.
SOURCE_YUNET = 'yunet'
SOURCE_GIVEN = 'given'


def to_float255(images: Any) -> np.ndarray:
    """``uint8`` (0..255) or float ([0, 1]) images -> float32 on the 0..255 scale."""
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f'images must be uint8 or float in [0, 1], got {arr.dtype}')
    return arr.astype(np.float32) * 255.0


@dataclasses.dataclass(frozen=True)
class Detection:
    """One face: box ``(x, y, w, h)``, landmarks ``[5, 2]`` (x, y), score and its source.

    Landmarks are image-left eye first (the subject's right eye), then the other eye, nose
    tip, image-left and image-right mouth corner. ``source`` is :data:`SOURCE_YUNET` for a
    detection, :data:`SOURCE_GIVEN` for a face read from a list (:mod:`faces.wild`), whose
    score is 1.
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float
    source: str = SOURCE_YUNET


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one ``(x, y, w, h)`` box with each of ``boxes`` ``[N, 4]``."""
    box, boxes = np.asarray(box), np.asarray(boxes).reshape(-1, 4)  # Dtype kept (float32 NMS).
    w = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    h = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter + 1e-12)


class Detector(Protocol):
    """What face finding needs of a detector (:class:`YuNetDetector`, or a test's stand-in):
    detections of an image in its pixels, best first."""

    def detect(self, image: Any) -> list[Detection]: ...


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression on ``(x, y, w, h)`` boxes; indices by falling score."""
    order = list(np.argsort(-scores, kind='stable'))
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        rest = np.array(order, dtype=np.int64)
        if rest.size == 0:
            break
        iou = box_iou(boxes[i], boxes[rest])
        order = [int(j) for j, o in zip(rest, iou, strict=True) if o <= iou_threshold]
    return keep


class YuNetDetector:
    """YuNet (2023mar, int8) face detector in onnxruntime, post-processed like OpenCV's.

    Input: one RGB image (``uint8`` or float [0, 1]), any size; it is zero-padded at the
    bottom/right to a multiple of 32 and fed as BGR 0..255 (what ``cv2.FaceDetectorYN`` does).
    """

    STRIDES = (8, 16, 32)

    def __init__(
        self,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        num_threads: int = 0,
    ):
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        self.num_threads = num_threads
        self._session = None

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = load_onnx_session(
                model_path('yunet'), MODEL_FILES['yunet'][1], self.num_threads, dynamic_dims=(2, 3)
            )
        return self._session

    def detect(self, image: Any) -> list[Detection]:
        """All faces in ``image`` ``[H, W, 3]`` scoring >= the threshold, best first."""
        img = to_float255(image)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f'expected one [H, W, 3] image, got shape {img.shape}')
        h, w = img.shape[:2]
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :h, :w] = img[..., ::-1].transpose(2, 0, 1)
        outs = dict(
            zip(
                [o.name for o in self.session.get_outputs()],
                self.session.run(None, {'input': blob}),
                strict=True,
            )
        )
        return self._decode(outs, ph, pw)

    def _decode(self, outs: dict[str, np.ndarray], ph: int, pw: int) -> list[Detection]:
        """Anchor-free decoding (one prior per cell and stride) + NMS, as in OpenCV."""
        boxes, lms, scores = [], [], []
        for s in self.STRIDES:
            rows, cols = ph // s, pw // s
            cls = np.clip(outs[f'cls_{s}'].reshape(-1), 0, 1)
            obj = np.clip(outs[f'obj_{s}'].reshape(-1), 0, 1)
            score = np.sqrt(cls * obj)
            keep = score >= self.score_threshold
            if not keep.any():
                continue
            r, c = np.divmod(np.arange(rows * cols)[keep], cols)
            bbox = outs[f'bbox_{s}'].reshape(-1, 4)[keep]
            kps = outs[f'kps_{s}'].reshape(-1, 5, 2)[keep]
            cx, cy = (c + bbox[:, 0]) * s, (r + bbox[:, 1]) * s
            bw, bh = np.exp(bbox[:, 2]) * s, np.exp(bbox[:, 3]) * s
            boxes.append(np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1))
            lms.append((kps + np.stack([c, r], axis=1)[:, None, :]) * s)
            scores.append(score[keep])
        if not scores:
            return []
        box, lm, sc = np.concatenate(boxes), np.concatenate(lms), np.concatenate(scores)
        keep_idx = nms(box, sc, self.nms_threshold)[: self.top_k]
        return [Detection(box[i], lm[i], float(sc[i])) for i in keep_idx]


def select_central(faces: list[Detection], height: int, width: int) -> Detection | None:
    """The detection whose box centre is nearest the image centre (``None`` if no face).

    Aligned datasets (CelebA crops, LFW deep-funneled) centre the subject; other faces in the
    frame are bystanders.
    """
    if not faces:
        return None
    centre = np.array([width - 1, height - 1], np.float64) / 2

    def distance(face: Detection) -> float:
        return float(np.sum((face.box[:2] + face.box[2:] / 2 - centre) ** 2))

    return min(faces, key=distance)
