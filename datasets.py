"""HR/LR face pairs for training and evaluation, without TensorFlow.

Sources (``data.source``, chosen through the ``SOURCES`` registry):

* ``'folder'``: PNG/JPEG/... files under ``data.path``. If ``faces.csv`` (columns ``file``,
  ``split``, optional ``identity``; ``file`` relative to the CSV) lies in the folder or in its
  parent, its rows select the split (``'eval'`` means ``'test'``) and give identities;
  otherwise every image file (recursively, sorted by relative path; hidden files skipped) is
  used for every split: there is no held-out split, and ``sr``/``eval`` refuse to measure it
  unless ``data.allow_split_overlap`` (see :func:`check_held_out`). Files whose extension is
  not an image extension are ignored.
* ``'tfrecord'``: score_sde/ProGAN TFRecords (``shape`` int64 [C, H, W] + raw uint8 ``data``);
  ``data.path`` is a file or glob (``{split}`` in it is replaced by the split name; without
  it every split is the same records, refused for ``sr``/``eval`` as for folders).
* ``'tfds'``: a prepared tensorflow-datasets dataset read through ``tfds.data_source`` (the
  TF-free ``array_record`` reader; ``data.path`` is the ``data_dir``).
* ``'lfw_pairs'``: the images of LFW View-2 pairs (``data.path`` holds ``pairs.csv``; split
  ``test`` only): the sorted unique images of the kept pairs (``data.pairs_per_fold``), each
  aligned into celeba_id128's crop geometry (:class:`faces.lfw.LFWAligner`: YuNet, one
  detector call per image, then a similarity warp) instead of being resized; identity = the
  person's index (see :func:`faces.lfw.lfw_pair_set`).

Decoding (Pillow, ``LOAD_TRUNCATED_IMAGES`` left False, images fully loaded so truncation is
found): EXIF orientation applied; grayscale -> RGB by replicating the channel; RGBA/LA ->
alpha dropped (not composited); palette -> RGB; 16-bit grayscale -> top 8 bits. A file that
cannot be decoded raises :class:`DataError` naming it, when it is read. Images are brought to
``image_size`` squared by ``resize_mode``: ``'resize'`` squashes the whole image,
``'center_crop'`` takes the centred square first; resizing is antialiased bicubic on float
data (Pillow mode ``F`` per channel), rounded back to uint8. Decoded HR images are cached in
memory as uint8 when the dataset fits in ``data.cache_mb``.

Batches (:func:`get_dataset`) are dicts of numpy arrays, host-local rows of the global batch:
``hr`` [b, H, W, C] float32 in [0, 1], ``lr`` [b, H/f, W/f, C], ``lr_up`` [b, H, W, C],
``id`` int32 (identity, -1 if unknown), ``mask`` bool (real rows), ``index`` int32 (dataset
index, -1 for padding). Data are in [0, 1]; training code applies :func:`get_data_scaler`.

LR (:func:`make_lr`): fixed degradations by default (``data.blur_sigma``, ``down_kernel``,
``noise_sigma``, ``jpeg_quality``: the same for every image). With
``data.random_degradation`` each image draws its own instead (:func:`draw_degradation`):
blur, noise and JPEG quality uniform in ``data.*_range``, the kernel from ``data.down_kernels``
(kernel specs such as ``'bicubic:noaa'``, see :mod:`degradations`), as GFPGAN, CodeFormer and
Real-ESRGAN train; ``configs/degradation_presets.py`` holds the ranges used here and why.

Determinism: the training stream is the concatenation of per-epoch permutations drawn from
``(seed, epoch)``; the global batch at step ``s`` is positions ``[s*B, (s+1)*B)`` of that
stream, so it is a pure function of ``(seed, s)`` and ``start_step`` resumes exactly. Flips,
degradation noise and randomly drawn degradations of a row depend only on ``(seed, stream
position)``, hence neither on the host count nor on where the iterator started (randomly
degraded rows are even made one image at a time, so their LR is the same bits in any batch).
Evaluation reads the dataset in order, every image once, the last global batch padded
(``mask`` False). ``seed`` must be >= 0.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from PIL import Image, ImageOps

import degradations
import tfrecord_io
from utils import csvfile
from utils.registry import Registry

IMAGE_EXTENSIONS = frozenset(
    {'.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm'}
)
RESIZE_MODES = ('resize', 'center_crop')
SOURCES = Registry('data source')
CSV_NAME = 'faces.csv'

# Independent random streams derived from the seed.
_SHUFFLE, _FLIP, _DEGRADE = 0, 1, 2
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)


class DataError(ValueError):
    """Missing, empty, undecodable or inconsistent data; the message names the file."""


def validate_data_config(data_config: Any) -> None:
    """Raises ``ValueError`` naming the first inconsistent ``config.data`` field."""
    c = data_config
    if c.source not in SOURCES:
        raise ValueError(f'data.source {c.source!r} unknown; known: {SOURCES.names()}')
    if c.image_size <= 0 or c.downscale <= 0 or c.image_size % c.downscale:
        raise ValueError(
            f'data.image_size {c.image_size} must be a positive multiple of data.downscale '
            f'{c.downscale}'
        )
    if c.resize_mode not in RESIZE_MODES:
        raise ValueError(f'data.resize_mode {c.resize_mode!r} not in {RESIZE_MODES}')
    if c.down_kernel not in degradations.DOWN_KERNELS:
        raise ValueError(f'data.down_kernel {c.down_kernel!r} not in {degradations.DOWN_KERNELS}')
    if c.up_kernel not in degradations.RESIZE_METHODS:
        raise ValueError(f'data.up_kernel {c.up_kernel!r} not in {degradations.RESIZE_METHODS}')
    if c.num_channels not in (1, 3):
        raise ValueError(f'data.num_channels must be 1 or 3, got {c.num_channels}')
    if c.noise_sigma < 0 or c.blur_sigma < 0 or not 0 <= c.jpeg_quality <= 100:
        raise ValueError('data.noise_sigma/blur_sigma must be >= 0, jpeg_quality in 0..100')
    _validate_random_degradation(c)
    if not isinstance(c.pairs_per_fold, int) or c.pairs_per_fold < 0:
        raise ValueError(f'data.pairs_per_fold must be an integer >= 0, got {c.pairs_per_fold!r}')


#: The ``config.data`` fields of random degradation (:func:`draw_degradation`).
RANDOM_DEGRADATION_FIELDS = (
    'random_degradation',
    'blur_sigma_range',
    'noise_sigma_range',
    'jpeg_quality_range',
    'down_kernels',
)
# Each drawn setting's fixed field, the range it is drawn from, and the bounds of that range.
_RANGES = (
    ('blur_sigma', 'blur_sigma_range', 0.0, float('inf')),
    ('noise_sigma', 'noise_sigma_range', 0.0, float('inf')),
    ('jpeg_quality', 'jpeg_quality_range', 1, 100),
)


def _check_range(c: Any, name: str, low: float, high: float) -> None:
    """``data.<name>`` must be ``(lo, hi)``, ``low <= lo <= hi <= high`` (integers if
    ``low`` is one); a JPEG range may also be ``(0, 0)`` (off)."""
    value = c[name]
    integer = isinstance(low, int)
    kinds = (int,) if integer else (int, float)
    pair = isinstance(value, tuple | list) and len(value) == 2
    pair = pair and all(isinstance(v, kinds) and not isinstance(v, bool) for v in value)
    off = pair and integer and tuple(value) == (0, 0)
    if not off and not (pair and low <= value[0] <= value[1] <= high):
        bounds = f'{low} <= low <= high' + (f' <= {high}' if high < float('inf') else '')
        what = 'integers ' if integer else ''
        extra = ', or (0, 0): off' if integer else ''
        raise ValueError(f'data.{name} must be {what}(low, high), {bounds}{extra}; got {value!r}')


def _validate_random_degradation(c: Any) -> None:
    """The ranges and kernel specs must be valid (checked even while random degradation is
    off, so that a bad value never waits to be switched on); while it is on, the fixed
    blur/noise/JPEG fields must be off: a config must not give two values for one thing."""
    if not isinstance(c.random_degradation, bool):
        raise ValueError(
            f'data.random_degradation must be True or False, got {c.random_degradation!r}'
        )
    for fixed, name, low, high in _RANGES:
        _check_range(c, name, low, high)
        if c.random_degradation and c[fixed]:
            raise ValueError(
                f'data.{fixed}={c[fixed]!r} is fixed while data.random_degradation draws it from '
                f'data.{name}: set {fixed} to 0 or random_degradation to False'
            )
    try:
        lr_kernels(c)
    except ValueError as err:
        raise ValueError(f'data.down_kernels={tuple(c.down_kernels)!r}: {err}') from None


def check_held_out(data_config: Any, split: str) -> None:
    """Raises :class:`DataError` when ``split`` of ``config.data`` holds the training images
    (the source has no split) and ``data.allow_split_overlap`` is False: SR of it, and its
    metrics, would silently measure faces the model was trained on."""
    split = split_name(split)
    overlaps = getattr(SOURCES.get(data_config.source), 'splits_overlap', None)
    if split == 'train' or data_config.allow_split_overlap or not overlaps:
        return
    reason = overlaps(data_config)
    if reason:
        raise DataError(
            f'data.path={data_config.path}: split {split!r} is the training images ({reason}). '
            'Add a faces.csv with columns file,split to hold faces out, or set '
            '--config.data.allow_split_overlap=true to use training images knowingly'
        )


def split_name(split: str) -> str:
    """Canonical split name: ``'eval'`` -> ``'test'``, others unchanged."""
    return 'test' if split == 'eval' else split


# ----------------------------------------------------------------------------- images


def _pil_to_array(img: Image.Image, num_channels: int) -> np.ndarray:
    if img.mode == 'I' or img.mode.startswith('I;16'):
        img = Image.fromarray(np.clip(np.asarray(img, np.int64) >> 8, 0, 255).astype(np.uint8))
    elif img.mode == 'F':
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8))
    if img.mode in ('P', 'PA'):
        img = img.convert('RGBA')  # Palette transparency -> alpha, dropped below.
    array = np.asarray(img.convert('RGB' if num_channels == 3 else 'L'))
    return array.reshape(img.height, img.width, num_channels)


def decode_image(
    file: str | os.PathLike | Any, num_channels: int = 3, name: str = ''
) -> np.ndarray:
    """Decodes a path or file object to uint8 ``[H, W, C]`` (see module doc for modes).

    Raises :class:`DataError` naming ``name`` (default: the path) if it cannot be decoded.
    """
    name = name or os.fspath(file)
    try:
        with Image.open(file) as img:
            img.load()
            return _pil_to_array(ImageOps.exif_transpose(img), num_channels)
    except _DECODE_ERRORS as e:
        raise DataError(f'cannot decode image {name}: {type(e).__name__}: {e}') from e


def fit_image(image: np.ndarray, size: int, resize_mode: str = 'resize') -> np.ndarray:
    """uint8 ``[H, W, C]`` -> uint8 ``[size, size, C]`` (centre crop if asked, then resize).

    Resizing is antialiased bicubic on float data (Pillow mode ``F``, per channel), rounded;
    an image already of the target size is returned unchanged.
    """
    h, w = image.shape[:2]
    if resize_mode == 'center_crop' and h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top : top + side, left : left + side]
    if image.shape[:2] == (size, size):
        return image
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
                (size, size), Image.Resampling.BICUBIC
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.clip(np.round(np.stack(planes, -1)), 0, 255).astype(np.uint8)


def load_image(
    path: str | os.PathLike,
    image_size: int | None = None,
    resize_mode: str = 'resize',
    num_channels: int = 3,
) -> np.ndarray:
    """One image file as uint8 ``[H, W, C]``, fitted to ``image_size`` if given."""
    image = decode_image(path, num_channels)
    return image if image_size is None else fit_image(image, image_size, resize_mode)


def _to_channels(image: np.ndarray, num_channels: int) -> np.ndarray:
    if image.shape[-1] == num_channels:
        return image
    if image.shape[-1] == 1:
        return np.repeat(image, num_channels, axis=-1)
    if image.shape[-1] == 4 and num_channels == 3:
        return image[..., :3]
    pil = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    return _pil_to_array(pil, num_channels)


# ----------------------------------------------------------------------------- sources


class Source(Protocol):
    """What a registered source provides: ``SOURCES.get(name)(data_config, split)``."""

    def __len__(self) -> int: ...

    def read(self, index: int) -> tuple[np.ndarray, int]:
        """uint8 ``[image_size, image_size, C]`` image and identity (-1 if unknown)."""
        ...


def _find_csv(root: Path) -> Path | None:
    for candidate in (root / CSV_NAME, root.parent / CSV_NAME):
        if candidate.is_file():
            return candidate
    return None


def _read_csv(csv_path: Path, split: str) -> tuple[list[Path], list[int]]:
    """Files and identities (-1 where empty) of ``split`` in ``faces.csv``.

    Read by :func:`utils.csvfile.read_csv` (UTF-8, an Excel BOM allowed): a file that is not
    UTF-8, a short or long row, an empty ``file`` or ``split``, a non-integer identity or a
    ``file`` listed twice (an image twice in a split, or in both) is a :class:`DataError`
    naming the file and line(s).
    """
    table = csvfile.read_csv(csv_path, ('file',), error_type=DataError)
    table.unique('file')
    wanted = split_name(split)
    rows = [r for r in table.rows if 'split' not in table.columns or r['split'] == wanted]
    if not rows:
        raise DataError(f'{csv_path}: no rows for split {split!r}')
    files = [csv_path.parent / r['file'] for r in rows]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f'{csv_path} lists {len(missing)} missing files, e.g. {missing[0]}')
    return files, [_identity(r) for r in rows]


def _identity(row: csvfile.Row) -> int:
    """The ``identity`` of a ``faces.csv`` row: an integer, -1 where absent or empty."""
    text = row.get('identity')
    try:
        return int(text) if text else -1
    except ValueError:
        raise row.error(f'identity {text!r} is not an integer') from None


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursive, sorted by relative path, hidden ones skipped).

    A folder that cannot be listed (no permission) raises :class:`DataError` naming it: a
    silently skipped folder would train or super-resolve a subset without saying so.
    """
    root = Path(root)
    found = []

    def unreadable(err: OSError) -> None:
        raise DataError(f'cannot list folder {err.filename}: {err.strerror}') from err

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = [d for d in dirnames if not d.startswith('.')]
        for name in filenames:
            if not name.startswith('.') and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


@SOURCES.register('folder')
class FolderSource:
    """Image files of a folder, split and identities from ``faces.csv`` when present."""

    @staticmethod
    def splits_overlap(data_config: Any) -> str:
        """Why every split is the same images ('' when the folder has a split)."""
        root = Path(data_config.path)
        return '' if _find_csv(root) else f'no {CSV_NAME} in {root} or its parent'

    def __init__(self, data_config: Any, split: str):
        root = Path(data_config.path)
        if not root.is_dir():
            raise DataError(f'image folder {root} does not exist or is not a folder')
        csv_path = _find_csv(root)
        if csv_path is not None:
            self.files, ids = _read_csv(csv_path, split)
        else:
            self.files = list_images(root)
            ids = [-1] * len(self.files)
        if not self.files:
            raise DataError(f'no image files ({", ".join(sorted(IMAGE_EXTENSIONS))}) in {root}')
        self.ids = np.asarray(ids, np.int32)
        self.size, self.mode = int(data_config.image_size), data_config.resize_mode
        self.channels = int(data_config.num_channels)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        image = decode_image(self.files[index], self.channels)
        return fit_image(image, self.size, self.mode), int(self.ids[index])


def example_image(example: dict[str, Any], num_channels: int) -> np.ndarray:
    """uint8 HWC image of a score_sde Example (``shape`` [C, H, W] + raw CHW ``data``)."""
    if 'shape' not in example or 'data' not in example:
        raise ValueError(f'expected features shape and data, found {sorted(example)}')
    shape = tuple(int(v) for v in example['shape'])
    data = example['data'][0] if example['data'] else b''
    if len(shape) != 3 or len(data) != int(np.prod(shape)):
        raise ValueError(f'shape {shape} does not match {len(data)} data bytes')
    image = np.frombuffer(data, np.uint8).reshape(shape).transpose(1, 2, 0)
    return _to_channels(image, num_channels)


@SOURCES.register('tfrecord')
class TFRecordSource:
    """Records of score_sde TFRecord files (``data.path``: file or glob), in file order."""

    @staticmethod
    def splits_overlap(data_config: Any) -> str:
        """Why every split is the same records ('' when the path names the split)."""
        return '' if '{split}' in str(data_config.path) else "no '{split}' in the path"

    def __init__(self, data_config: Any, split: str):
        pattern = str(data_config.path).replace('{split}', split_name(split))
        try:
            self.files = [tfrecord_io.TFRecordFile(p) for p in tfrecord_io.expand_paths(pattern)]
        except (tfrecord_io.TFRecordError, OSError) as e:
            raise DataError(str(e)) from e
        self.starts = np.cumsum([0] + [len(f) for f in self.files])
        if self.starts[-1] == 0:
            raise DataError(f'no records in {pattern}')
        self.size, self.mode = int(data_config.image_size), data_config.resize_mode
        self.channels = int(data_config.num_channels)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, index: int) -> tuple[np.ndarray, int]:
        f = int(np.searchsorted(self.starts, index, side='right')) - 1
        record, records = index - int(self.starts[f]), self.files[f]
        try:
            data = records[record]
        except tfrecord_io.TFRecordError as e:
            raise DataError(str(e)) from e
        try:
            image = example_image(tfrecord_io.parse_example(data), self.channels)
        except ValueError as e:
            raise DataError(f'{records.path}: record {record}: {e}') from e
        return fit_image(image, self.size, self.mode), -1


def _open_tfds(name: str, split: str, data_dir: str | None) -> Any:
    import tensorflow_datasets as tfds  # Heavy import, only for this source.

    return tfds.data_source(name, split=split, data_dir=data_dir)


@SOURCES.register('tfds')
class TFDSSource:
    """A prepared tfds dataset through ``tfds.data_source`` (array_record, no TensorFlow).

    ``open_fn(name, split, data_dir)`` is a seam for tests; it defaults to tfds.
    """

    def __init__(self, data_config: Any, split: str, open_fn: Callable[..., Any] = _open_tfds):
        self.name, self.split = data_config.tfds_name, split_name(split)
        if not self.name:
            raise ValueError('data.tfds_name must be set for data.source="tfds"')
        data_dir = str(data_config.path) or None
        try:
            self.source = open_fn(self.name, self.split, data_dir)
        except Exception as e:  # tfds raises many kinds; all mean "cannot open".
            raise DataError(f'cannot open tfds {self.name}[{self.split}] in {data_dir}: {e}') from e
        if len(self.source) == 0:
            raise DataError(f'tfds {self.name}[{self.split}] in {data_dir} is empty')
        self.image_key, self.id_key = data_config.tfds_image_key, data_config.tfds_id_key
        self.size, self.mode = int(data_config.image_size), data_config.resize_mode
        self.channels = int(data_config.num_channels)

    def __len__(self) -> int:
        return len(self.source)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        where = f'tfds {self.name}[{self.split}] example {index}'
        try:
            example = self.source[index]
        except Exception as e:
            raise DataError(f'cannot read {where}: {e}') from e
        if self.image_key not in example:
            raise DataError(f'{where} has no feature {self.image_key!r}: {sorted(example)}')
        image = np.asarray(example[self.image_key])
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise DataError(f'{where}: {self.image_key!r} is not a uint8 image: {image.shape}')
        image = _to_channels(image.reshape(image.shape[:2] + (-1,)), self.channels)
        if self.id_key and self.id_key not in example:
            raise DataError(f'{where} has no id feature {self.id_key!r}: {sorted(example)}')
        identity = int(example[self.id_key]) if self.id_key else -1
        return fit_image(image, self.size, self.mode), identity


@SOURCES.register('lfw_pairs')
class LFWPairsSource:
    """LFW View-2 pair images aligned like celeba_id128 (module doc); split ``test`` only.

    The face code is imported here, not at module import, so ``datasets`` needs no
    onnxruntime unless this source is used; YuNet runs once per :meth:`read`.
    """

    def __init__(self, data_config: Any, split: str):
        from faces import lfw  # Face code (YuNet, onnxruntime on use): only for LFW.

        if split_name(split) != 'test':
            raise DataError(f'lfw_pairs has only the split "test", not {split!r}')
        self.root = Path(data_config.path)
        try:
            self.files, self.ids, _ = lfw.lfw_pair_set(self.root, int(data_config.pairs_per_fold))
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f'cannot read LFW pairs {self.root / "pairs.csv"}: {e!r}') from e
        missing = [f for f in self.files if not (self.root / f).is_file()]
        if missing:
            raise DataError(f'{self.root} lacks {len(missing)} pair images, e.g. {missing[0]}')
        if not self.files:
            raise DataError(f'no pairs in {self.root / "pairs.csv"}')
        self.aligner = lfw.LFWAligner(int(data_config.image_size))
        self.channels = int(data_config.num_channels)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        aligned, found = self.aligner(decode_image(self.root / self.files[index], 3))
        if not found:
            logging.warning(
                'lfw_pairs: no face found in %s, fixed LFW alignment used', self.files[index]
            )
        return _to_channels(aligned, self.channels), int(self.ids[index])


class CachedSource:
    """Wraps a source; keeps decoded uint8 images in memory when they fit ``cache_mb``."""

    def __init__(self, source: Source, image_size: int, num_channels: int, cache_mb: float):
        self.source = source
        n = len(source)
        nbytes = n * image_size * image_size * num_channels
        self.cached = cache_mb > 0 and nbytes <= cache_mb * 2**20
        shape = (n, image_size, image_size, num_channels) if self.cached else (0, 1, 1, 1)
        self._images = np.zeros(shape, np.uint8)  # calloc: pages are touched when filled.
        self._ids = np.full(n if self.cached else 0, -1, np.int32)
        self._loaded = np.zeros(n if self.cached else 0, bool)

    def __len__(self) -> int:
        return len(self.source)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        if not self.cached:
            return self.source.read(index)
        if not self._loaded[index]:
            self._images[index], self._ids[index] = self.source.read(index)
            self._loaded[index] = True
        return self._images[index], int(self._ids[index])


def open_source(data_config: Any, split: str) -> CachedSource:
    """The configured source for ``split`` (files listed and checked now, decoded lazily)."""
    validate_data_config(data_config)
    source = SOURCES.get(data_config.source)(data_config, split)
    return CachedSource(
        source,
        int(data_config.image_size),
        int(data_config.num_channels),
        float(data_config.cache_mb),
    )


def dataset_size(data_config: Any, split: str) -> int:
    """Number of images in ``split`` (an eval pass yields each exactly once)."""
    return len(open_source(data_config, split))


# ----------------------------------------------------------------------------- LR


def _cpu_device() -> jax.Device:
    return jax.local_devices(backend='cpu')[0]


_downscale = jax.jit(degradations.downscale, static_argnames=('factor', 'method', 'antialias'))
_upscale = jax.jit(degradations.upscale, static_argnames=('factor', 'method', 'antialias'))


def _row_generators(key_or_seed: Any, rows: int) -> list[np.random.Generator]:
    """One numpy generator per row from an int, a Generator, a jax key or per-row entropy."""
    if isinstance(key_or_seed, np.ndarray) and np.issubdtype(key_or_seed.dtype, np.integer):
        if len(key_or_seed) != rows:
            raise ValueError(f'per-row seeds have {len(key_or_seed)} rows, images {rows}')
        entropy = key_or_seed.reshape(rows, -1)
        return [np.random.default_rng([int(v) for v in row]) for row in entropy]
    if isinstance(key_or_seed, np.random.Generator):
        return key_or_seed.spawn(rows)
    if isinstance(key_or_seed, jax.Array):
        if jax.dtypes.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key):
            key_or_seed = jax.random.key_data(key_or_seed)
        words = [int(v) for v in np.asarray(key_or_seed, np.uint32).ravel()]
        return [np.random.default_rng(s) for s in np.random.SeedSequence(words).spawn(rows)]
    if isinstance(key_or_seed, int | np.integer):
        seeds = np.random.SeedSequence(int(key_or_seed)).spawn(rows)
        return [np.random.default_rng(s) for s in seeds]
    raise TypeError(f'expected an int, Generator, jax key or int array, got {type(key_or_seed)}')


def lr_kernels(data_config: Any) -> list[tuple[str, bool]]:
    """The ``(kernel, antialias)`` choices of random degradation: ``data.down_kernels`` (kernel
    specs; items may hold commas, as ``--config.data.down_kernels=area,bicubic`` gives them),
    or ``data.down_kernel`` with ``data.antialias`` when it is empty."""
    specs = [s.strip() for item in data_config.down_kernels for s in str(item).split(',')]
    specs = [s for s in specs if s]
    if not specs:
        return [(data_config.down_kernel, bool(data_config.antialias))]
    return [degradations.parse_kernel(spec) for spec in specs]


def fixed_degradation(data_config: Any) -> degradations.Degradation:
    """Every image's degradation without ``data.random_degradation``: the fixed fields."""
    c = data_config
    return degradations.Degradation(
        c.down_kernel, bool(c.antialias), float(c.blur_sigma), float(c.noise_sigma),
        int(c.jpeg_quality))  # fmt: skip


def draw_degradation(
    data_config: Any, rng: np.random.Generator, kernels: list[tuple[str, bool]] | None = None
) -> degradations.Degradation:
    """One image's random degradation from its own generator (``kernels``:
    :func:`lr_kernels`, computed once per batch by the caller)."""
    c = data_config
    return degradations.draw_degradation(
        rng,
        lr_kernels(c) if kernels is None else kernels,
        tuple(c.blur_sigma_range),
        tuple(c.noise_sigma_range),
        tuple(c.jpeg_quality_range),
    )


def _degrade(
    batch: np.ndarray,
    factor: int,
    setting: degradations.Degradation,
    rngs: list[np.random.Generator] | None,
) -> np.ndarray:
    """Blur -> downscale -> noise (``rngs``: one per row) -> clip -> JPEG, one setting for
    every row of ``batch``."""
    blurred = degradations.gaussian_blur(batch, setting.blur_sigma)
    blurred = jax.device_put(blurred, _cpu_device())
    lr = np.asarray(_downscale(blurred, factor, setting.kernel, setting.antialias))
    if setting.noise_sigma > 0:
        lr = degradations.add_gaussian_noise(lr, setting.noise_sigma, rngs)
    return degradations.jpeg_compress(np.clip(lr, 0.0, 1.0), setting.jpeg_quality)


def make_lr(hr: np.ndarray, data_config: Any, key_or_seed: Any) -> tuple[np.ndarray, np.ndarray]:
    """LR and upsampled LR from HR in [0, 1]: the one place LR images are made.

    ``hr``: ``[b, H, W, C]`` or ``[H, W, C]``. Steps: Gaussian blur of HR (``blur_sigma``) ->
    ``down_kernel`` downscale by ``downscale`` -> Gaussian noise (``noise_sigma``) -> clip to
    [0, 1] -> JPEG (``jpeg_quality``) = ``lr``; ``lr_up`` = ``up_kernel`` upscale of ``lr``,
    clipped to [0, 1]. With ``random_degradation`` each row draws its blur, kernel, noise and
    JPEG quality (:func:`draw_degradation`) from its own generator, then its noise from the
    same generator, and is made alone. ``key_or_seed`` (noise and draws): an int, a numpy
    Generator, a jax PRNG key, or an integer numpy array with one row of entropy per image (row
    i's LR then depends only on row i's entropy). Resizing runs jitted on the host CPU.
    """
    hr = np.asarray(hr, np.float32)
    single = hr.ndim == 3
    batch = hr[None] if single else hr
    factor, antialias = int(data_config.downscale), bool(data_config.antialias)
    if data_config.random_degradation:
        kernels = lr_kernels(data_config)
        rows = zip(batch, _row_generators(key_or_seed, len(batch)), strict=True)
        lr = np.concatenate(
            [
                _degrade(image[None], factor, draw_degradation(data_config, rng, kernels), [rng])
                for image, rng in rows
            ]
        )
    else:
        setting = fixed_degradation(data_config)
        rngs = _row_generators(key_or_seed, len(batch)) if setting.noise_sigma > 0 else None
        lr = _degrade(batch, factor, setting, rngs)
    lr_dev = jax.device_put(lr, _cpu_device())
    lr_up = np.clip(np.asarray(_upscale(lr_dev, factor, data_config.up_kernel, antialias)), 0, 1)
    return (lr[0], lr_up[0]) if single else (lr, lr_up)


# The conditioning images of a batch, in the data range: the LR image, its upsampling to HR size
# and, with a learned mean (``mean_model.py``), that mean.
COND_KEYS = ('lr', 'lr_up', 'lr_mu')


def model_cond(batch: dict[str, Any], scaler: Callable[[Any], Any]) -> dict[str, np.ndarray]:
    """The conditioning images of ``batch`` in the model's range, as float32 host arrays."""
    return {
        k: np.asarray(scaler(np.asarray(batch[k])), np.float32) for k in COND_KEYS if k in batch
    }


def get_data_scaler(centered: bool) -> Callable[[Any], Any]:
    """Data in [0, 1] -> model input: [-1, 1] if ``centered`` else unchanged (score_sde)."""
    return (lambda x: x * 2.0 - 1.0) if centered else (lambda x: x)


def get_data_inverse_scaler(centered: bool) -> Callable[[Any], Any]:
    """Inverse of :func:`get_data_scaler`."""
    return (lambda x: (x + 1.0) / 2.0) if centered else (lambda x: x)


# ----------------------------------------------------------------------------- batches


class _Batcher:
    """Builds the rows of one batch given dataset indices and stream positions."""

    def __init__(self, source: CachedSource, data_config: Any, seed: int, train: bool):
        self.source, self.config, self.seed = source, data_config, int(seed)
        self.flip = train and bool(data_config.random_flip)
        size, channels = int(data_config.image_size), int(data_config.num_channels)
        self.shape = (size, size, channels)

    def __call__(self, indices: np.ndarray, positions: np.ndarray, mask: np.ndarray) -> dict:
        rows = len(indices)
        hr = np.zeros((rows,) + self.shape, np.float32)
        ids = np.full(rows, -1, np.int32)
        for row in np.flatnonzero(mask):
            image, ids[row] = self.source.read(int(indices[row]))
            hr[row] = image.astype(np.float32) / 255.0
        if self.flip:
            for row, position in enumerate(positions):
                if np.random.default_rng([self.seed, _FLIP, int(position)]).random() < 0.5:
                    hr[row] = hr[row, :, ::-1]
        entropy = np.stack(
            [np.full(rows, self.seed), np.full(rows, _DEGRADE), positions], axis=1
        ).astype(np.int64)
        lr, lr_up = make_lr(hr, self.config, entropy)
        return {
            'hr': hr,
            'lr': lr.astype(np.float32),
            'lr_up': lr_up.astype(np.float32),
            'id': ids,
            'mask': np.asarray(mask, bool),
            'index': np.where(mask, indices, -1).astype(np.int32),
        }


def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, _SHUFFLE, epoch]).permutation(n)


def _train_batches(batcher: _Batcher, batch_size: int, rows: np.ndarray, start_step: int):
    n = len(batcher.source)
    perms: dict[int, np.ndarray] = {}
    for step in itertools.count(start_step):
        positions = step * batch_size + rows
        epochs, offsets = np.divmod(positions, n)
        for epoch in np.unique(epochs):
            if int(epoch) not in perms:
                perms[int(epoch)] = _epoch_permutation(n, batcher.seed, int(epoch))
        indices = np.asarray([perms[int(e)][o] for e, o in zip(epochs, offsets, strict=True)])
        for old in [e for e in perms if e < epochs.min()]:
            del perms[old]
        yield batcher(indices, positions, np.ones(len(rows), bool))


def _eval_batches(batcher: _Batcher, batch_size: int, rows: np.ndarray, start_step: int):
    n = len(batcher.source)
    for step in range(start_step, -(-n // batch_size)):
        positions = step * batch_size + rows
        mask = positions < n
        yield batcher(np.where(mask, positions, 0), positions, mask)


def get_dataset(
    data_config: Any,
    split: str,
    batch_size: int,
    *,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
    train: bool | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of HR/LR pairs; see the module docstring for keys, order and determinism.

    ``batch_size`` is the global batch; this host gets rows
    ``[process_index * b, (process_index + 1) * b)`` with ``b = batch_size // process_count``.
    ``train`` (default: ``split == 'train'``) selects the infinite shuffled, flipped stream;
    otherwise one ordered pass with the last batch padded. ``start_step`` skips that many
    batches without reading them. Files are listed and checked now; images decoded lazily.
    """
    if batch_size <= 0 or process_count <= 0 or batch_size % process_count:
        raise ValueError(f'batch_size {batch_size} must be a positive multiple of {process_count}')
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} not in [0, {process_count})')
    if seed < 0 or start_step < 0:
        raise ValueError(f'seed ({seed}) and start_step ({start_step}) must be >= 0')
    train = split == 'train' if train is None else train
    source = open_source(data_config, split)
    local = batch_size // process_count
    rows = np.arange(process_index * local, (process_index + 1) * local, dtype=np.int64)
    batcher = _Batcher(source, data_config, seed, train)
    make = _train_batches if train else _eval_batches
    return make(batcher, batch_size, rows, start_step)


def load_lr_images(
    path: str | os.PathLike, lr_size: int, num_channels: int = 3
) -> tuple[np.ndarray, list[str]]:
    """LR inputs for SR mode: one image file or every image of a folder (sorted, recursive).

    Images of another size are resized (squashed, antialiased bicubic) to ``lr_size``.
    Returns float32 ``[n, lr_size, lr_size, C]`` in [0, 1] and the file paths.
    """
    path = Path(path)
    if path.is_dir():
        files = list_images(path)
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f'LR image path {path} does not exist')
    if not files:
        raise DataError(f'no image files in {path}')
    images = [fit_image(decode_image(f, num_channels), lr_size) for f in files]
    return np.stack(images).astype(np.float32) / 255.0, [str(f) for f in files]
