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
   are written as ``<photo>_face<kk>[_s<k>].png``. A face the model would shrink more than
   ``sr.max_shrink`` into its LR crop is not super-resolved (SR of it comes out softer than
   the photo): it stays the photo's bicubic enlargement (:meth:`FaceFinder.method`). With a
   size ladder (``sr.ladder``, ``--sr.model auto``: several models of different LR sizes,
   :class:`Rung`) each face goes to the model whose LR side is nearest its own size
   (:func:`choose_rung`); only a face too large for every model is resized.
4. **Paste-back** (``faces.paste``): the photo is upscaled by :func:`paste_scale` (bicubic)
   and each SR crop is warped back through the inverse transform with a feathered mask
   (``sr.feather`` and ``sr.margin``, fractions of the crop side), band by band (memory: the
   photo and one band, at any upscale): written as ``<photo>.png`` (``<photo>_s<k>.png`` per
   sample with ``sr.num_samples > 1``, and ``<photo>_mean.png``, the posterior means pasted,
   with ``sr.uncertainty``); nothing with ``sr.crops_only``.

A face's noise comes from :func:`face_key` (the photo's name and the face's rounded box), not
from its index among the faces. Frames of videos are photos too (``frames.py``, ``sr.py``).
The manifest's ``photos`` lists every photo with its outputs and faces (box, landmarks,
detector score, source ``yunet`` or ``given``, noise key, method ``sr`` or ``resize`` and why,
and the face's SR item).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import frames as frames_lib
from faces.align import crop_matrix, resize_matrix, to_3x3, warp_face
from faces.detect import Detection, YuNetDetector
from faces.paste import pasted_bands
from faces.roll import refine_faces
from faces.wild import FaceList, FaceListError, find_faces, read_face_csv
from utils.images import save_png_rows


@dataclasses.dataclass(frozen=True)
class Photo:
    """One input photo: its output name, where it came from, pixels and faces."""

    name: str  # Output name (relative to the output folder, no extension).
    source: str
    image: np.ndarray | None  # uint8 [H, W, C]; None for a video frame (read again: reread).
    faces: list[Detection]
    # Per face: photo pixels -> LR crop pixels of its rung ([2, 3]; a resized face: of the
    # rung with the largest LR).
    matrices: list[np.ndarray]
    rungs: tuple[Rung, ...]  # The size ladder (one rung: a single model).
    face_keys: list[str]  # Per face: the stable key of its noise (face_key).
    shape: tuple[int, ...]  # The image's shape (kept when the pixels are dropped).
    frame: int | None = None  # Its index in a video or animated image (frames.py).
    reread: Callable[[], np.ndarray] | None = None  # The pixels again, when image is None.
    methods: tuple[str, ...] = ()  # Per face: SR or RESIZE (FaceFinder.method).
    reasons: tuple[str, ...] = ()  # Per face: why that method.
    face_rungs: tuple[int, ...] = ()  # Per face: the index of its rung in ``rungs``.

    def __post_init__(self):
        per_face = (self.methods, self.reasons, self.face_rungs, self.matrices, self.face_keys)
        if any(len(field) != len(self.faces) for field in per_face):
            raise ValueError(
                f'{self.source}: a matrix, key, method, reason and rung per face are needed'
            )

    def lr_size(self, k: int) -> int:
        """The LR crop side of face ``k`` (its rung's)."""
        return self.rungs[self.face_rungs[k]].lr_size

    def pixels(self) -> np.ndarray:
        """The photo's uint8 pixels (a frame is decoded again)."""
        return self.image if self.image is not None else self.reread()

    def without_pixels(self, reread: Callable[[], np.ndarray]) -> Photo:
        """This photo holding no pixels: ``reread`` gives them again (frames of a video)."""
        return dataclasses.replace(self, image=None, reread=reread)

    @property
    def face_names(self) -> list[str]:
        """The SR items of its faces (``<name>_face<kk>``), numbered over all its faces."""
        return [f'{self.name}_face{k:02d}' for k in range(len(self.faces))]

    @property
    def restored(self) -> list[int]:
        """The indices of the faces the models super-resolve (method SR)."""
        return [k for k, method in enumerate(self.methods) if method == SR]

    def scale_factor(self) -> int:
        """The SR factor its pasted copy defaults to (:func:`paste_scale`): the largest of the
        rungs that restore its faces (the first rung's when none does)."""
        used = {self.face_rungs[k] for k in self.restored} or {0}
        return max(self.rungs[r].factor for r in used)


def face_key(name: str, box: np.ndarray, grid: float) -> str:
    """The stable key of a face's noise: the photo's name and its box rounded to ``grid``
    photo pixels (centre and size, ``sr.noise_key_grid``), e.g. ``'street/a@12,40,3'``.

    Not the face's index among the detections: the same face keeps its SR when another face
    is found or missed, listed or not, or found in another order. A face found again with a
    box moved by less than about ``grid / 2`` usually keeps its key (not when its centre sits
    on a cell boundary).
    """
    x, y, w, h = (float(v) for v in box)
    cells = np.round(np.array([x + w / 2, y + h / 2, max(w, h)]) / grid).astype(int)
    return f'{name}@' + ','.join(str(c) for c in cells)


def is_photo(image: np.ndarray, lr_sizes: Sequence[int]) -> bool:
    """Without ``sr.aligned`` inputs are photos, except those of exactly a model's LR size
    (``lr_sizes``: of each model of the run): aligned crops (nothing in them could be
    detected)."""
    return all(image.shape[:2] != (size, size) for size in lr_sizes)


def crop_rung(image: np.ndarray, lr_sizes: Sequence[int]) -> int:
    """The model an aligned crop goes to: the one of exactly its LR size, else the first
    (it is resized to that model's LR size)."""
    exact = [r for r, size in enumerate(lr_sizes) if image.shape[:2] == (size, size)]
    return exact[0] if exact else 0


def lr_scale(matrix: np.ndarray) -> float:
    """LR crop pixels per photo pixel of a photo -> LR crop matrix (< 1: the face shrinks)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(matrix)[:, :2]))))


def lr_matrix(landmarks: np.ndarray, hr_size: int, lr_size: int) -> np.ndarray:
    """Photo -> LR crop: the training geometry at HR size, then the HR -> LR resize."""
    return (resize_matrix(lr_size / hr_size) @ to_3x3(crop_matrix(landmarks, hr_size)))[:2]


#: Below this LR scale (a face more than twice the LR crop's size) a warning says that SR
#: discards more of the face than it restores (when ``sr.max_shrink`` lets such faces through).
MIN_LR_SCALE = 0.5


@dataclasses.dataclass(frozen=True)
class Rung:
    """One model of a size ladder, as faces are assigned to it: its name (a shipped model or
    a folder) and its LR and HR sides."""

    name: str
    lr_size: int
    hr_size: int

    @property
    def factor(self) -> int:
        return self.hr_size // self.lr_size


def native_size(matrix: np.ndarray, lr_size: int) -> float:
    """The face's own size: photo pixels across the LR crop of a photo -> LR ``matrix`` (the
    same for every rung: all share the training crop geometry)."""
    return lr_size / lr_scale(matrix)


TIE_DIGITS = 9  # Log-ratio distances equal to this many digits are a tie (choose_rung).


def choose_rung(native: float, lr_sizes: Sequence[int], max_shrink: float) -> int | None:
    """The rung for a face of ``native`` photo pixels: among the LR sides that shrink it at
    most ``max_shrink`` (0: no limit), the nearest to it in ratio (``|log(lr / native)|``;
    ties to the larger LR, which keeps more of the face); ``None`` when every model would
    shrink it more (it is then resized, :data:`RESIZE`).

    Nearest in ratio, not "largest that fits": a face of 10 px gains more from an 8 px LR
    model (shrunk 1.25x) than from being enlarged 1.6x, blurred, into a 16 px one.
    """
    fits = [r for r, size in enumerate(lr_sizes) if not max_shrink or native / size <= max_shrink]
    if not fits:
        return None
    # Distances rounded: a tie stays a tie whatever libm rounds log's last bit to.
    distance = {r: round(abs(float(np.log(lr_sizes[r] / native))), TIE_DIGITS) for r in fits}
    return min(fits, key=lambda r: (distance[r], -lr_sizes[r]))


#: How a photo's face is restored: by the model, or pasted back by plain resizing (the
#: photo's own bicubic enlargement) when the model would shrink it (``sr.max_shrink``).
SR, RESIZE = 'sr', 'resize'


class FaceFinder:
    """``sr.*`` face options bound once: the size ladder (``rungs``; one for a single model),
    the detector and the CSV of given faces."""

    def __init__(self, cfg: Any, rungs: Sequence[Rung]):
        if not rungs:
            raise ValueError('a face finder needs at least one model (rung)')
        self.cfg, self.rungs = cfg, tuple(rungs)
        self.detector = YuNetDetector()
        self.given = read_face_csv(cfg.faces_csv) if cfg.faces_csv else FaceList('', {}, {})

    def __call__(
        self, name: str, source: str, image: np.ndarray, frame: int | None = None
    ) -> Photo:
        """The faces of one photo (``name``: its path relative to the input folder, without
        extension; ``frame``: its index in a video, whose path is ``source``)."""
        cfg = self.cfg
        key, given = self.listed_key(name, source, frame), None
        if key is not None:
            self.given.outside(key, *image.shape[:2])
            given = self.given[key]
        source = source if frame is None else f'{source}#frame{frame}'
        found = find_faces(image, self.detector, cfg.only_center, cfg.min_face, given,
                           cfg.detect_scale)  # fmt: skip
        if cfg.roll_search:  # Landmarks that carry a small face's roll (faces/roll.py).
            found = refine_faces(image, self.detector, found)
        if not found:
            logging.warning(
                '%s: no face found (min_face %s, detect_scale %s); nothing to super-resolve',
                source, cfg.min_face, cfg.detect_scale)  # fmt: skip
        choices = [self.method(f.landmarks, source, k) for k, f in enumerate(found)]
        methods, reasons, face_rungs, matrices = (tuple(c) for c in zip(*choices, strict=True)) \
            if found else ((), (), (), ())  # fmt: skip
        keys = [face_key(name, f.box, cfg.noise_key_grid) for f in found]
        return Photo(name, source, image, found, list(matrices), self.rungs, keys, image.shape,
                     frame, methods=methods, reasons=reasons, face_rungs=face_rungs)  # fmt: skip

    def method(
        self, landmarks: np.ndarray, source: str, k: int
    ) -> tuple[str, str, int, np.ndarray]:
        """How face ``k`` is restored, and why, by which rung, and its photo -> LR matrix:
        by the model of :func:`choose_rung` unless every model would shrink the face more than
        ``sr.max_shrink`` into its LR crop, where SR comes out softer than the photo itself;
        such a face is pasted back by plain resizing (its matrix that of the largest LR)."""
        limit = float(self.cfg.max_shrink)
        largest = max(range(len(self.rungs)), key=lambda r: self.rungs[r].lr_size)
        native = native_size(self._matrix(landmarks, largest), self.rungs[largest].lr_size)
        chosen = choose_rung(native, [r.lr_size for r in self.rungs], limit)
        rung = self.rungs[largest if chosen is None else chosen]
        matrix = self._matrix(landmarks, largest if chosen is None else chosen)
        shrink, size = native / rung.lr_size, rung.lr_size
        why = f'the face is {shrink:.2f}x the {size}x{size} LR crop'
        if len(self.rungs) > 1:
            why += f' of {rung.name} (LR sides {sorted(r.lr_size for r in self.rungs)})'
        if chosen is None:
            logging.info('%s face %d: %s (> sr.max_shrink %g): pasted by plain resizing, '
                         'not super-resolved', source, k, why, limit)  # fmt: skip
            return RESIZE, f'{why}, more than sr.max_shrink {limit:g}', largest, matrix
        return SR, self._warn(why, shrink, size, limit, source, k), chosen, matrix

    def _matrix(self, landmarks: np.ndarray, rung: int) -> np.ndarray:
        return lr_matrix(landmarks, self.rungs[rung].hr_size, self.rungs[rung].lr_size)

    @staticmethod
    def _warn(why: str, shrink: float, size: int, limit: float, source: str, k: int) -> str:
        """The reason of an SR face; a warning when it is shrunk a lot (``max_shrink`` off)."""
        if shrink > 1 / MIN_LR_SCALE:
            logging.warning(
                '%s face %d is shrunk %.1fx into the %dx%d LR crop: SR restores less detail '
                'than the photo already has (the models are for faces at most about the LR '
                'size)', source, k, shrink, size, size)  # fmt: skip
        return f'{why}, at most sr.max_shrink {limit:g}' if limit else why

    def listed_key(self, name: str, source: str, frame: int | None) -> str | None:
        """The name under which the CSV lists a photo's faces (:func:`listed_names`), if any."""
        return next((k for k in listed_names(name, source, frame) if k in self.given), None)

    def check_names(self, files: Sequence[Path], root: Path) -> None:
        """Refuses (:class:`~faces.wild.FaceListError`, file and line) a CSV row whose name
        matches none of the input ``files`` (under ``root``): a typo, a path, no extension."""
        known, videos = set(), set()
        for path in files if self.given else ():
            name = path.relative_to(root).with_suffix('').as_posix()
            names = listed_names(name, str(path), None)
            (videos if frames_lib.has_frames(path) else known).update(names)
        for name in self.given:
            video, _, frame = name.rpartition('#')
            if name in known or (video in videos and frame.isdigit()):
                continue
            example = sorted(known)[:1] or [f'{sorted(videos)[0]}#0']
            raise FaceListError(
                f'{self.given.where(name)}: {name!r} names no input photo of sr.input (name a '
                f'photo by its path under sr.input with extension or its file name, e.g. '
                f'{example[0]!r}; a frame of a video or animated image as clip.mp4#12)'
            )


def listed_names(name: str, source: str, frame: int | None) -> tuple[str, str]:
    """The names a faces CSV may use for a photo: its path relative to the input folder with
    extension, and its file name (frames of a video: ``<video>#<frame>``, e.g. ``clip.mp4#12``;
    ``name`` is the photo's output name, ``source`` its file)."""
    relative, base = name + Path(source).suffix, Path(source).name
    if frame is not None:
        relative = f'{Path(name).parent.as_posix()}{Path(source).suffix}#{frame}'
        base = f'{base}#{frame}'
    return relative, base


def lr_crops(photo: Photo) -> list[np.ndarray]:
    """The LR crops of a photo's restored faces (:attr:`Photo.restored`), each
    ``[lr, lr, C]`` float32 in [0, 1] at its rung's LR side."""
    image = photo.pixels().astype(np.float32) / 255.0
    return [np.clip(warp_face(image, photo.matrices[k], photo.lr_size(k)), 0.0, 1.0)
            for k in photo.restored]  # fmt: skip


def pasted_outputs(photo: Photo, num_samples: int, with_mean: bool, pasted: bool) -> list[str]:
    """The pasted photos written for ``photo``: none with ``sr.crops_only`` (``pasted``
    false) or for a photo without a face; a video's frames all are (a video has every
    frame)."""
    if not pasted or not (photo.faces or photo.frame is not None):
        return []
    return output_names(photo, num_samples, with_mean)


def output_names(photo: Photo, num_samples: int, with_mean: bool) -> list[str]:
    """The pasted photos written for ``photo`` (see the module doc)."""
    names = [f'{photo.name}.png'] if num_samples == 1 else [
        f'{photo.name}_s{k}.png' for k in range(num_samples)
    ]  # fmt: skip
    return names + ([f'{photo.name}_mean.png'] if with_mean else [])


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image, np.float32) / 255.0


def paste_scale(shape: tuple[int, ...], factor: int, cfg: Any) -> int:
    """The scale of a photo's pasted output: ``sr.upscale``, or by default (0) the model's
    ``factor`` reduced until the long side is at most ``sr.upscale_max_side`` (at least 1).

    A person wants the face enlarged in a photo they can still open: a 320x240 frame becomes
    1280x960 at 4x, while a 4000x3000 photo stays 4000x3000 (the faces then come back at the
    photo's resolution in the paste, and at the model's in the SR crops).
    """
    if cfg.upscale:
        return int(cfg.upscale)
    fits = int(cfg.upscale_max_side) // max(shape[:2])
    return int(max(1, min(factor, fits)))


def write_photo(out_dir: Path, photo: Photo, items: dict[str, dict], cfg: Any) -> dict[str, Any]:
    """Pastes the photo's SR crops (read back from ``out_dir``) into its upscaled copies,
    band by band (``faces.paste.pasted_bands``: memory stays that of the photo at any
    upscale); its manifest record. With ``sr.crops_only`` nothing is pasted."""
    scale = paste_scale(photo.shape, photo.scale_factor(), cfg)
    outputs = pasted_outputs(photo, cfg.num_samples, cfg.uncertainty, not cfg.crops_only)
    if outputs:  # Faces pasted by plain resizing are the upscaled photo's.
        mine = [items[photo.face_names[k]] for k in photo.restored]
        matrices = [photo.matrices[k] for k in photo.restored]
        lr_sizes = [photo.lr_size(k) for k in photo.restored]
        sources = [[item['sr'][k] for item in mine] for k in range(cfg.num_samples)]
        if cfg.uncertainty:
            sources.append([item['mean'] for item in mine])
        h, w, c = photo.shape
        image = photo.pixels()
        for output, crops in zip(outputs, sources, strict=True):
            images = [_read(out_dir / c) for c in crops]
            side = images[0].shape[0] if images else 0
            bands = pasted_bands(
                image, images, matrices, scale, cfg.feather * side, lr_sizes,
                cfg.margin * side)  # fmt: skip
            save_png_rows(bands, (h * scale, w * scale, c), out_dir / output)
    return {
        'input': photo.source,
        **({'frame': photo.frame} if photo.frame is not None else {}),
        'outputs': outputs,
        'scale': scale,
        'faces': [_face_record(photo, k) for k in range(len(photo.faces))],
    }


def write_videos(out_dir: Path, photos: Sequence[Photo], records: Sequence[dict]) -> list[dict]:
    """Encodes the pasted frames of each video or animated image (``records``: the manifest
    records of ``photos``, :func:`write_photo`) into ``<name>.mp4`` (per sample
    ``<name>_s<k>.mp4``, and ``<name>_mean.mp4``) at the source's frame rate, reading the
    frames back one at a time (``frames.write_video``); the manifest's ``videos``."""
    groups: dict[str, list[tuple[Photo, dict]]] = {}
    for photo, record in zip(photos, records, strict=True):
        if photo.frame is not None and record['outputs']:
            groups.setdefault(photo.source.rsplit('#frame', 1)[0], []).append((photo, record))
    videos = []
    for source, frames in groups.items():
        rate, (first, first_record) = frames_lib.frame_rate(source), frames[0]
        for j, output in enumerate(first_record['outputs']):
            suffix = output[len(first.name) : -len(Path(output).suffix)]
            name = f'{Path(first.name).parent.as_posix()}{suffix}.mp4'
            images = (_read_uint8(out_dir / record['outputs'][j]) for _, record in frames)
            count = frames_lib.write_video(images, out_dir / name, rate)
            videos.append({'input': source, 'output': name, 'frames': count,
                           'fps': round(rate, 3)})  # fmt: skip
    return videos


def _read_uint8(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert('RGB'))


def _face_record(photo: Photo, k: int) -> dict[str, Any]:
    """The manifest record of face ``k``: how it was restored (its SR item, or none when it
    was pasted by plain resizing) and why, where it is, and its noise key."""
    face, matrix, method = photo.faces[k], photo.matrices[k], photo.methods[k]
    return {
        'item': photo.face_names[k] if method == SR else None,
        'method': method,
        'model': photo.rungs[photo.face_rungs[k]].name if method == SR else None,
        'why': photo.reasons[k],
        'noise_key': photo.face_keys[k],
        'lr_scale': round(lr_scale(matrix), 4),  # LR crop pixels per photo pixel.
        'box': [round(float(v), 2) for v in face.box],
        'landmarks': [[round(float(v), 2) for v in p] for p in face.landmarks],
        'score': round(float(face.score), 4),
        'source': face.source,
    }
