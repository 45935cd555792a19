"""Alignment: landmark templates, similarity transforms, warps into and out of face crops.

Conventions (those of :mod:`faces`): coordinates ``(x, y)`` with pixel centres at integers; a
``[2, 3]`` matrix maps source pixels to destination pixels. Resizing an image by a factor
``f`` (Pillow's and ``jax.image.resize``'s convention) maps source pixel ``p`` to
``(p + 0.5) f - 0.5``: :func:`resize_matrix`.

The *crop geometry* is that of ``celeba_id128`` (FFHQ-style), in which the SR models are
trained: :data:`CELEBA_ID128_LANDMARKS` scaled by ``size / 128``
(:func:`canonical_landmarks`; the convention :class:`faces.lfw.LFWAligner` uses too).
:func:`crop_matrix` maps a photo onto such a crop, :func:`warp_face` cuts it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from faces.detect import Detection

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
#: (64.2, 94.9). Reproduce with ``python -m faces.canonical --split test``. Scaled by
#: ``size / 128`` for other image sizes of the same alignment.
CELEBA_ID128_LANDMARKS = np.array(
    [[46.7, 61.0], [80.1, 60.9], [62.3, 80.3], [49.7, 95.1], [78.7, 94.7]], dtype=np.float64
)
CELEBA_ID128_SIZE = 128

#: Largest source-to-output shrink that bilinear sampling alone handles without visible
#: aliasing; beyond it :func:`warp_face` first resizes the source with a low-pass filter.
MAX_BILINEAR_SHRINK = 1.5


def canonical_landmarks(
    height: int,
    width: int,
    reference: np.ndarray = CELEBA_ID128_LANDMARKS,
    reference_size: int = CELEBA_ID128_SIZE,
) -> np.ndarray:
    """``reference`` landmarks (of ``reference_size``-square crops) scaled to ``height x width``.

    The crop geometry at another size, and the fixed fallback alignment of images with the
    reference's geometry. Coordinates are multiplied by ``size / reference_size`` (not the
    pixel-centre map of a resize, :func:`resize_matrix`, which would add
    ``(size / reference_size - 1) / 2`` px: -0.25 px at 64, -0.44 px at 16); kept so that every
    user of the crop geometry (LFW eval, in-the-wild SR) agrees. YuNet's own landmarks are not
    that exact across scales: on 120 ``celeba_id128`` test faces resized by 0.5, 2 and 4, their
    mean moved by 1.1, 1.0 and 2.5 px (largest axis, resized pixels) beyond the resize itself.
    """
    scale = np.array([width, height], np.float64) / reference_size
    return np.asarray(reference, np.float64) * scale


def resize_matrix(fx: float, fy: float | None = None) -> np.ndarray:
    """``[3, 3]`` map from an image's pixels to those of its resize by ``fx`` (x), ``fy`` (y).

    Pixel centres: resized pixel ``u`` shows source ``(u + 0.5) / f - 0.5``, so source ``p``
    lands on ``(p + 0.5) f - 0.5`` (``fy`` defaults to ``fx``).
    """
    fy = fx if fy is None else fy
    return np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0.0, 0.0, 1.0]])


def to_3x3(matrix: np.ndarray) -> np.ndarray:
    """A ``[2, 3]`` affine matrix with the row ``[0, 0, 1]`` appended (for composing)."""
    return np.concatenate([np.asarray(matrix, np.float64), [[0.0, 0.0, 1.0]]])


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


def warp_affine(
    images: Any, matrices: np.ndarray, size: int | tuple[int, int] = ALIGNED_SIZE
) -> np.ndarray:
    """Bilinear ``cv2.warpAffine`` equivalent (constant-zero border) for a batch.

    ``images`` ``[B, H, W, C]`` (any numeric dtype, values kept as they are, float32 out);
    ``matrices`` ``[B, 2, 3]`` map source to destination pixel coordinates; output
    ``[B, size, size, C]`` (``size`` an int) or ``[B, height, width, C]`` (``size`` =
    ``(height, width)``). Destination pixel ``(x, y)`` samples the source at
    ``M^-1 (x, y)``; neighbours outside the image count as 0, as in OpenCV.
    """
    img = np.asarray(images, np.float32)
    b, h, w, _ = img.shape
    mats = np.asarray(matrices, np.float64).reshape(b, 2, 3)
    lin = np.linalg.inv(mats[:, :, :2])
    off = -np.einsum('bij,bj->bi', lin, mats[:, :, 2])
    height, width = (size, size) if np.isscalar(size) else size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
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


def resize_image(
    image: np.ndarray, height: int, width: int, resample: str = 'bilinear'
) -> np.ndarray:
    """One float image ``[H, W, C]`` resized to ``height x width`` (Pillow, per channel), float32.

    ``resample`` ``'bilinear'`` or ``'bicubic'``; antialiased when shrinking (Pillow widens the
    kernel by the factor). Pixel centres follow :func:`resize_matrix`.
    """
    from PIL import Image  # Only warps that shrink a lot, and upscaled photos, need it.

    filters = {'bilinear': Image.Resampling.BILINEAR, 'bicubic': Image.Resampling.BICUBIC}
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
                (width, height), filters[resample]
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(planes, -1)


def warp_face(image: Any, matrix: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """One image ``[H, W, C]`` warped by ``matrix`` (``[2, 3]``, its pixels -> output pixels).

    Output ``[size, size, C]`` (or ``(height, width)``) float32 on the input's scale; zero
    outside the image. Cuts a face crop (``matrix`` from :func:`crop_matrix`) and pastes one
    back (:mod:`faces.paste`). Bilinear like :func:`warp_affine`; when the warp shrinks by more
    than :data:`MAX_BILINEAR_SHRINK`, the source is first resized by the transform's scale
    with an antialiased filter (pixel centres kept aligned), so that the warp samples an
    image of about the output's resolution rather than aliasing.
    """
    img = np.asarray(image, np.float32)
    matrix = np.asarray(matrix, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale * MAX_BILINEAR_SHRINK < 1.0:
        h, w = img.shape[:2]
        height, width = max(1, round(h * scale)), max(1, round(w * scale))
        img = resize_image(img, height, width)
        # Resized pixel u shows source (u + 0.5) w / width - 0.5: the resize by w / width.
        matrix = matrix @ resize_matrix(w / width, h / height)
    return warp_affine(img[None], matrix[None], size)[0]


def crop_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """``[2, 3]`` similarity from photo pixels to a ``size`` x ``size`` face crop.

    The crop geometry of training (:func:`canonical_landmarks` at ``size``, module doc): the
    five ``landmarks`` ``[5, 2]`` (photo pixels, e.g. :attr:`Detection.landmarks`) are mapped
    onto it in the least-squares sense. Cut the crop with :func:`warp_face`.
    """
    return similarity_transform(landmarks, canonical_landmarks(size, size))


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

    def take(self, index: Any) -> Alignment:
        """The transforms of images ``index`` (a slice, or indices that may repeat: one face's
        transform for each of its K samples), so that a subset is cut exactly as the whole."""
        fields = dataclasses.fields(self)
        return Alignment(**{f.name: np.asarray(getattr(self, f.name))[index] for f in fields})


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
