"""Photos in the wild for ``--mode sr``: faces found, aligned into LR crops, SR pasted back.

GFPGAN / CodeFormer style. Each input photo (any input that is not an aligned crop, see
:func:`is_photo`) goes through:

1. **Faces** (:func:`faces.wild.find_faces`): YuNet on the photo (upscaled by
   ``sr.detect_scale`` for faces too small for it: YuNet alone needs a face box of about
   12-15 px, ``faces/wild.py``), plus the faces listed for the photo in ``sr.faces_csv``
   (``file,x,y,w,h`` or ``file,x1,y1,...,x5,y5``; ``file`` is the photo's path relative to the
   input folder, or its file name); ``sr.min_face`` drops smaller detections,
   ``sr.only_center`` keeps the face nearest the centre. A photo without a face is reported
   (a warning and ``faces: []`` in the manifest), never skipped silently.
2. **Alignment**: the similarity that puts the five landmarks on the training crop geometry
   at HR size (``faces.align.crop_matrix``, as the LFW protocol), followed by the HR -> LR
   resize, cuts the LR crop the model expects (antialiased when it shrinks). Going through
   the HR geometry keeps the LR crop's pixel grid exactly that of training, whose LR images
   are resizes of HR crops.
3. **SR** of every face crop, batched with the other inputs (``sr.py``); the aligned SR crops
   are written as ``<photo>_face<kk>[_s<k>].png``.
4. **Paste-back** (``faces.paste``): the photo is upscaled by ``sr.upscale`` (bicubic; 0 = the
   model's factor) and each SR crop is warped back through the inverse transform with a
   feathered mask (``sr.feather`` and ``sr.margin``, fractions of the crop side): written as
   ``<photo>.png`` (``<photo>_s<k>.png`` per sample with ``sr.num_samples > 1``, and
   ``<photo>_mean.png``, the posterior means pasted, with ``sr.uncertainty``).

The manifest's ``photos`` lists every photo with its outputs and faces (box, landmarks,
detector score, source ``yunet`` or ``given``, and the face's SR item).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from faces.align import crop_matrix, resize_matrix, to_3x3, warp_face
from faces.detect import Detection, YuNetDetector
from faces.paste import paste_faces, upscale_photo
from faces.wild import find_faces, read_face_csv
from utils.images import save_png


@dataclasses.dataclass(frozen=True)
class Photo:
    """One input photo: its output name, where it came from, pixels and faces."""

    name: str  # Output name (relative to the output folder, no extension).
    source: str
    image: np.ndarray  # uint8 [H, W, C].
    faces: list[Detection]
    matrices: list[np.ndarray]  # Per face: photo pixels -> LR crop pixels, [2, 3].
    lr_size: int  # The LR crop side.

    @property
    def face_names(self) -> list[str]:
        """The SR items of its faces (``<name>_face<kk>``)."""
        return [f'{self.name}_face{k:02d}' for k in range(len(self.faces))]


def is_photo(image: np.ndarray, lr_size: int) -> bool:
    """Without ``sr.aligned`` inputs are photos, except those of exactly the LR size: aligned
    crops (nothing in them could be detected)."""
    return image.shape[:2] != (lr_size, lr_size)


def lr_scale(matrix: np.ndarray) -> float:
    """LR crop pixels per photo pixel of a photo -> LR crop matrix (< 1: the face shrinks)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(matrix)[:, :2]))))


def lr_matrix(landmarks: np.ndarray, hr_size: int, lr_size: int) -> np.ndarray:
    """Photo -> LR crop: the training geometry at HR size, then the HR -> LR resize."""
    return (resize_matrix(lr_size / hr_size) @ to_3x3(crop_matrix(landmarks, hr_size)))[:2]


#: Below this LR scale (a face more than twice the LR crop's size) a warning says that SR
#: discards more of the face than it restores.
MIN_LR_SCALE = 0.5


class FaceFinder:
    """``sr.*`` face options bound once: the detector and the CSV of given faces."""

    def __init__(self, cfg: Any, hr_size: int, lr_size: int):
        self.cfg, self.hr_size, self.lr_size = cfg, hr_size, lr_size
        self.detector = YuNetDetector()
        self.given = read_face_csv(cfg.faces_csv) if cfg.faces_csv else {}

    def __call__(self, name: str, source: str, image: np.ndarray) -> Photo:
        """The faces of one photo (``name``: its path relative to the input folder)."""
        cfg = self.cfg
        given = self.given.get(name + Path(source).suffix) or self.given.get(Path(source).name)
        found = find_faces(image, self.detector, cfg.only_center, cfg.min_face, given,
                           cfg.detect_scale)  # fmt: skip
        if not found:
            logging.warning(
                '%s: no face found (min_face %s, detect_scale %s); nothing to super-resolve',
                source, cfg.min_face, cfg.detect_scale)  # fmt: skip
        matrices = [lr_matrix(f.landmarks, self.hr_size, self.lr_size) for f in found]
        for k, matrix in enumerate(matrices):
            if lr_scale(matrix) < MIN_LR_SCALE:
                shrink = 1 / lr_scale(matrix)
                logging.warning(
                    '%s face %d is shrunk %.1fx into the %dx%d LR crop: SR restores less detail '
                    'than the photo already has (the models are for faces at most about the LR '
                    'size)', source, k, shrink, self.lr_size, self.lr_size)  # fmt: skip
        return Photo(name, source, image, found, matrices, self.lr_size)


def lr_crops(photo: Photo) -> np.ndarray:
    """The LR crops of a photo's faces, ``[F, lr, lr, C]`` float32 in [0, 1]."""
    image, size = photo.image.astype(np.float32) / 255.0, photo.lr_size
    crops = [np.clip(warp_face(image, m, size), 0.0, 1.0) for m in photo.matrices]
    return np.stack(crops) if crops else np.zeros((0, size, size, image.shape[-1]), np.float32)


def output_names(photo: Photo, num_samples: int, with_mean: bool) -> list[str]:
    """The pasted photos written for ``photo`` (see the module doc)."""
    names = [f'{photo.name}.png'] if num_samples == 1 else [
        f'{photo.name}_s{k}.png' for k in range(num_samples)
    ]  # fmt: skip
    return names + ([f'{photo.name}_mean.png'] if with_mean else [])


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image, np.float32) / 255.0


def write_photo(
    out_dir: Path, photo: Photo, items: dict[str, dict], cfg: Any, factor: int
) -> dict[str, Any]:
    """Pastes the photo's SR crops (read back from ``out_dir``) into its upscaled copies;
    its manifest record."""
    scale = cfg.upscale or factor
    outputs = output_names(photo, cfg.num_samples, cfg.uncertainty)
    if photo.faces:
        photo_up = upscale_photo(photo.image, scale)
        mine = [items[name] for name in photo.face_names]
        sources = [[item['sr'][k] for item in mine] for k in range(cfg.num_samples)]
        if cfg.uncertainty:
            sources.append([item['mean'] for item in mine])
        for output, crops in zip(outputs, sources, strict=True):
            images = [_read(out_dir / c) for c in crops]
            side = images[0].shape[0]
            pasted, _ = paste_faces(
                photo_up, images, photo.matrices, scale, cfg.feather * side, photo.lr_size,
                cfg.margin * side)  # fmt: skip
            save_png(pasted, out_dir / output)
    return {
        'input': photo.source,
        'outputs': outputs if photo.faces else [],
        'scale': scale,
        'faces': [
            _face_record(f, n, m)
            for f, n, m in zip(photo.faces, photo.face_names, photo.matrices, strict=True)
        ],
    }


def _face_record(face: Detection, item: str, matrix: np.ndarray) -> dict[str, Any]:
    return {
        'item': item,
        'lr_scale': round(lr_scale(matrix), 4),  # LR crop pixels per photo pixel.
        'box': [round(float(v), 2) for v in face.box],
        'landmarks': [[round(float(v), 2) for v in p] for p in face.landmarks],
        'score': round(float(face.score), 4),
        'source': face.source,
    }
