"""``--mode sr``: super-resolves photos, LR face crops, or the eval split, with a trained model.

    python main.py --config C --workdir W --mode sr --sr.input=PATH --sr.output=DIR
    python main.py --mode sr --sr.input=PATH --sr.output=DIR     # a shipped model (pretrained.py)

(``--sr.X`` is ``--config.sr.X``; every field is in ``configs/default.py::sr_config``.)

Inputs: ``sr.input`` is an image file or a folder of them (recursive, as
``datasets.list_images``), or ``''`` for the eval split of ``config.data`` (LR made from HR by
``datasets.make_lr``, as in training). Input files are photos (``photos.py``: faces detected,
aligned into LR crops, super-resolved and pasted back) unless ``sr.aligned`` is true or the file
is exactly of the LR size; then it is treated as an LR crop: one of another size than
``image_size // downscale`` is resized to it with the data kernels
(``down_kernel`` when shrinking, ``up_kernel`` when enlarging), after a centre crop when
``data.resize_mode`` is ``'center_crop'`` (else squashed), and a warning names the file. An
input of the HR size is downscaled like any other (the warning says so): the output is then
a reconstruction from that LR, not an enlargement of the input. All input files are decoded
before anything is written, so an undecodable one stops the run early, named.

Outputs under ``sr.output`` (default ``W/sr``), each written atomically: ``<name>.png`` per
input (``<name>_s<k>.png`` for ``num_samples > 1``), where ``<name>`` is the file's path
relative to the input folder without its extension (dataset inputs: the index, ``000042``,
plus ``<name>_lr.png`` and ``<name>_hr.png``); ``grid_<batch>.png`` per batch (rows: LR |
samples | HR); ``manifest.json`` last. A folder is a complete result only when it holds the
manifest: a stale one is deleted before the first image is written, and a failed run writes
no manifest. Two inputs mapping to the same output name are refused before anything is written.

With ``sr.uncertainty`` (``num_samples >= 2``): per input its posterior mean, per-pixel std
(array and heat map), a sheet and identity-stability figures (``uncertainty.py``).

Videos and animated images are read frame by frame (``sr.frames``, ``frames.py``); every frame
is a photo, ``<name>/frame<NNNNNN>``.

Determinism: sample ``k`` of input ``i`` has sample id ``i * num_samples + k`` (a face of a
photo: :func:`keyed_id` of its stable key, ``photos.face_key``) and draws its noise from
``fold_in(PRNGKey(sr.seed), id)`` (see ``sampling``), so outputs depend neither on
``sr.batch_size`` nor on the device count, and a face's not on the other faces found.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

import datasets
import degradations
import experiment
import frames as frames_lib
import guidance as guidance_lib
import ladder as ladder_lib
import mean_model
import photos as photos_lib
import runs
import sampling
import uncertainty
from evaluation.report import face_key
from utils import parallel
from utils.images import make_grid, save_png
from utils.progress import Progress

MANIFEST = 'manifest.json'
Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What to super-resolve: a name and a source per input, and their batches in order."""

    names: list[str]  # Output name of each input (relative, no extension).
    sources: list[str]  # Where each input comes from (a file, or a dataset entry).
    # (inputs per batch, rung) -> batches 'lr', 'lr_up' (, 'hr') of the rung's inputs in order.
    batches: Callable[[int, int], Iterator[Batch]]
    with_hr: bool
    photos: tuple[photos_lib.Photo, ...] = ()  # Photos whose faces are among the inputs.
    # Per input, the stable key its noise comes from (photos' faces: photos.face_key), or
    # None: then its index in the inputs (see sample_ids). () = None for every input.
    keys: tuple[str | None, ...] = ()
    # Per input, the model of the size ladder that restores it (ladder.py); () = all rung 0.
    rungs: tuple[int, ...] = ()

    def of_rung(self, rung: int) -> list[int]:
        """The indices of the inputs of ``rung``, in order (its batches' order)."""
        rungs = self.rungs or (0,) * len(self.names)
        return [i for i, r in enumerate(rungs) if r == rung]

    def sample_ids(self, num_samples: int) -> np.ndarray:
        """``[inputs, num_samples]`` int32 sample ids: sample ``k`` of input ``i`` is
        ``i * num_samples + k``, or for an input with a key :func:`keyed_id` of
        ``(key, k)``: a face's SR then depends neither on which other faces were found nor
        on their order."""
        keys = self.keys or (None,) * len(self.names)
        ids = np.arange(len(keys) * num_samples, dtype=np.int64).reshape(len(keys), num_samples)
        for i, key in enumerate(keys):
            if key is not None:
                ids[i] = [keyed_id(key, k) for k in range(num_samples)]
        return ids.astype(np.int32)


def keyed_id(key: str, sample: int) -> int:
    """A sample id in [0, 2**31) from a stable key: CRC-32 of ``'<key>#<sample>'``.

    Unrelated keys collide with probability 2**-31 per pair, and an index id (< inputs x
    samples) is hit as rarely: either way only two samples would share their noise.
    """
    return zlib.crc32(f'{key}#{sample}'.encode()) & 0x7FFFFFFF


# ----------------------------------------------------------------------------- inputs


def lr_size(data_config: Any) -> int:
    """The model's LR side: ``image_size // downscale``."""
    return int(data_config.image_size) // int(data_config.downscale)


def _on_host(fn: Callable[..., Any], *args: Any) -> np.ndarray:
    """Runs a (small, eager) JAX image op on the host CPU and returns numpy."""
    with jax.default_device(jax.local_devices(backend='cpu')[0]):
        return np.asarray(fn(*args))


def fit_lr(image: np.ndarray, data_config: Any, name: str) -> np.ndarray:
    """uint8 ``[h, w, C]`` -> float32 ``[s, s, C]`` in [0, 1], ``s`` the LR size.

    Another size is resized with the data kernels (see the module docstring); a warning names
    the file and says what was done.
    """
    size, hr = lr_size(data_config), int(data_config.image_size)
    h, w = image.shape[:2]
    x = image.astype(np.float32) / 255.0
    if (h, w) == (size, size):
        return x
    notes = [f'{name}: {w}x{h} is not the model LR size {size}x{size}']
    if h != w and data_config.resize_mode == 'center_crop':
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[top : top + side, left : left + side]
        notes.append('not square: centre-cropped')
    elif h != w:
        notes.append('not square: squashed (aspect ratio not kept)')
    if (h, w) == (hr, hr):
        notes.append('it is the HR size, but inputs are LR images: downscaled first')
    kernel = data_config.down_kernel if max(x.shape[:2]) > size else data_config.up_kernel
    notes.append(f'resized with the {kernel} kernel')
    logging.warning('; '.join(notes))
    resized = _on_host(degradations.resize, x, (size, size), kernel, bool(data_config.antialias))
    return np.clip(resized, 0.0, 1.0)


def upsample_lr(lr: np.ndarray, data_config: Any) -> np.ndarray:
    """``lr_up`` as ``datasets.make_lr`` makes it: ``up_kernel`` upscaling, clipped to [0, 1]."""
    up = _on_host(
        degradations.upscale,
        np.asarray(lr, np.float32),
        int(data_config.downscale),
        data_config.up_kernel,
        bool(data_config.antialias),
    )
    return np.clip(up, 0.0, 1.0)


def file_inputs(
    path: str | os.PathLike,
    data_configs: Sequence[Any],
    max_images: int = 0,
    finder: photos_lib.FaceFinder | None = None,
    frame_range: frames_lib.FrameRange = frames_lib.ALL_FRAMES,
) -> Inputs:
    """An image or video file or a folder of them (decoded and fitted now; see the module
    docstring); ``data_configs``: per model of the run (its size ladder, ``ladder.py``; one
    for a single model).

    With a ``finder`` (``sr.aligned`` false), inputs that are not of a model's LR size are
    photos: their faces, aligned into LR crops of the model each goes to, are the inputs
    (``photos.py``); so is every frame of a video or animated image in ``frame_range``
    (``frames.py``). A crop of exactly a model's LR size goes to that model, any other to the
    first (resized to its LR size).
    """
    files, root = _input_files(Path(path))
    if finder is not None:
        finder.check_names(files, root)
    files = files[:max_images] if max_images else files
    channels, sizes = int(data_configs[0].num_channels), [lr_size(c) for c in data_configs]
    names, sources, crops, keys, rungs, photos = [], [], [], [], [], []
    for f in files:
        name = f.relative_to(root).with_suffix('').as_posix()
        if frames_lib.has_frames(f):
            if finder is None:
                raise datasets.DataError(
                    f'{f} is a video or an animated image: its frames are photos, not aligned '
                    'crops (sr.aligned=false)'
                )
            photos += _frame_photos(f, name, finder, frame_range)
            continue
        image = datasets.decode_image(f, channels)
        if finder is not None and photos_lib.is_photo(image, sizes):
            photo = finder(name, str(f), image)
            photos.append((photo, photos_lib.lr_crops(photo)))
        else:
            rung = photos_lib.crop_rung(image, sizes)
            names.append(name)
            sources.append(str(f))
            keys.append(None)
            rungs.append(rung)
            crops.append(fit_lr(image, data_configs[rung], str(f)))
    for photo, face_crops in photos:  # The faces restored by the models (Photo.restored).
        names += [photo.face_names[k] for k in photo.restored]
        sources += [f'{photo.source}#face{k:02d}' for k in photo.restored]
        keys += [photo.face_keys[k] for k in photo.restored]
        rungs += [photo.face_rungs[k] for k in photo.restored]
        crops += face_crops
    photos = [photo for photo, _ in photos]

    def batches(per_batch: int, rung: int) -> Iterator[Batch]:
        mine = [crops[i] for i, r in enumerate(rungs) if r == rung]
        lr = np.stack(mine).astype(np.float32) if mine else np.zeros((0,))
        for start in range(0, len(mine), per_batch):
            chunk = lr[start : start + per_batch]
            yield {'lr': chunk, 'lr_up': upsample_lr(chunk, data_configs[rung])}

    return Inputs(names, sources, batches, False, tuple(photos), tuple(keys), tuple(rungs))


def _input_files(path: Path) -> tuple[list[Path], Path]:
    """The input files of ``sr.input`` (images and videos, sorted) and their root folder."""
    if path.is_dir():
        files = sorted(datasets.list_images(path) + frames_lib.list_videos(path))
        if not files:
            raise datasets.DataError(f'no image or video files in {path}')
        return files, path
    if path.is_file():
        return [path], path.parent
    raise datasets.DataError(f'SR input {path} does not exist')


def _frame_photos(
    path: Path, name: str, finder: photos_lib.FaceFinder, frame_range: frames_lib.FrameRange
) -> list[tuple[photos_lib.Photo, list[np.ndarray]]]:
    """The frames of a video or animated image in ``frame_range`` as photos (``<name>/frame
    <NNNNNN>``) with their faces' LR crops; the pixels are dropped, read again to paste."""
    reader, found = frames_lib.FrameReader(path), []  # (photo, its faces' LR crops)
    for index, image in frames_lib.read_frames(path, frame_range):
        photo = finder(f'{name}/frame{index:06d}', str(path), image, index)
        reread = functools.partial(reader.frame, index)
        found.append((photo.without_pixels(reread), photos_lib.lr_crops(photo)))
    if not found:
        raise frames_lib.FrameError(f'{path}: no frame in sr.frames {frame_range}')
    return found


def dataset_inputs(config: Any, max_images: int = 0) -> Inputs:
    """The eval split of ``config.data`` in order (LR made as in training, ``config.seed``).

    Every input is decoded now, so that a bad file late in the split stops the run before any
    output is written (with a ``DataError`` naming it); decoded images stay in the source's
    cache when they fit ``data.cache_mb``, else they are decoded again per batch.
    """
    datasets.check_held_out(config.data, 'eval')
    source = datasets.open_source(config.data, 'eval')
    n = min(len(source), max_images) if max_images else len(source)
    for i in range(n):
        source.read(i)
    files = getattr(source.source, 'files', None)  # Folder sources know their files.
    where = f'{config.data.source}:{config.data.path}[eval]'
    sources = [str(files[i]) if files else f'{where}[{i}]' for i in range(n)]

    def batches(per_batch: int, rung: int = 0) -> Iterator[Batch]:
        del rung  # Every input of the eval split is the run's own model's.
        data = datasets.get_dataset(config.data, 'eval', per_batch, seed=config.seed, train=False)
        for batch in data:
            keep = batch['mask'] & (batch['index'] < n)
            if not keep.any():
                return
            yield {k: batch[k][keep] for k in ('lr', 'lr_up', 'hr')}

    return Inputs([f'{i:06d}' for i in range(n)], sources, batches, with_hr=True)


# ----------------------------------------------------------------------------- outputs


UNCERTAINTY_OUTPUTS = {'mean': '_mean.png', 'std': '_std.npy', 'std_map': '_std.png',
                       'sheet': '_sheet.png'}  # fmt: skip


def plan_outputs(
    inputs: Inputs,
    num_samples: int,
    num_grids: int,
    with_uncertainty: bool = False,
    pasted: bool = True,
) -> tuple[list[dict], list[str]]:
    """Output file names (relative to the output folder) per input, and the grid names.

    Raises :class:`datasets.DataError` naming both inputs when two outputs would share a name.
    """
    items = []
    keys = inputs.keys or (None,) * len(inputs.names)
    for name, source, key in zip(inputs.names, inputs.sources, keys, strict=True):
        srs = (
            [f'{name}.png']
            if num_samples == 1
            else [f'{name}_s{k}.png' for k in range(num_samples)]
        )
        item = {'input': source, 'sr': srs, **({'noise_key': key} if key else {})}
        if inputs.with_hr:
            item.update(lr=f'{name}_lr.png', hr=f'{name}_hr.png')
        if with_uncertainty:
            item.update({key: name + suffix for key, suffix in UNCERTAINTY_OUTPUTS.items()})
        items.append(item)
    grids = [f'grid_{b:04d}.png' for b in range(num_grids)]
    owners: dict[str, str] = {g: 'a grid' for g in grids}
    for photo in inputs.photos:  # The pasted photos (none with sr.crops_only).
        for out in photos_lib.pasted_outputs(photo, num_samples, with_uncertainty, pasted):
            owners[out] = photo.source
    for item in items:
        singles = ('lr', 'hr', *UNCERTAINTY_OUTPUTS)
        for out in item['sr'] + [item[k] for k in singles if k in item]:
            if out in owners:
                raise datasets.DataError(
                    f'{item["input"]} and {owners[out]} would both be written to {out}: '
                    'rename one of them'
                )
            owners[out] = item['input']
    return items, grids


def _save(image: np.ndarray, path: Path) -> None:
    save_png(image[..., 0] if image.shape[-1] == 1 else image, path)


def write_batch(
    out_dir: Path, items: list[dict], batch: Batch, sr: np.ndarray, grid: str | None
) -> None:
    """One batch's images: ``sr`` [inputs, num_samples, H, W, C] in [0, 1], and its grid."""
    for j, item in enumerate(items):
        for k, name in enumerate(item['sr']):
            _save(sr[j, k], out_dir / name)
        for key in ('lr', 'hr'):
            if key in item:
                _save(batch[key][j], out_dir / item[key])
    if grid is not None:
        factor = sr.shape[2] // batch['lr'].shape[1]
        lr_big = batch['lr'].repeat(factor, axis=1).repeat(factor, axis=2)
        columns = [lr_big] + [sr[:, k] for k in range(sr.shape[1])]
        _save(make_grid(columns + ([batch['hr']] if 'hr' in batch else [])), out_dir / grid)


def write_uncertainty(
    out_dir: Path,
    items: list[dict],
    batch: Batch,
    sr: np.ndarray,
    cfg: Any,
    embedders: dict[str, Any],
) -> None:
    """Per input of the batch: posterior mean, std (array and heat map), sheet, and the
    uncertainty figures (``uncertainty.py``) added to its manifest item: identity stability
    per recogniser of ``sr.face``, SFace's as ``pairwise_cos``, another's suffixed with its
    name (``pairwise_cos_dlib``; :func:`evaluation.report.face_key`)."""
    for j, item in enumerate(items):
        mean, std = uncertainty.mean_and_std(sr[j])
        std_rgb = uncertainty.heat_map(std, cfg.std_max)
        _save(mean.astype(np.float32), out_dir / item['mean'])
        _save_npy(std.astype(np.float32), out_dir / item['std'])
        _save(std_rgb, out_dir / item['std_map'])
        save_png(uncertainty.sheet(batch['lr'][j], sr[j], mean, std_rgb), out_dir / item['sheet'])
        figures = uncertainty.summarize(std)
        for name, embedder in embedders.items():
            stability = uncertainty.identity_stability(
                uncertainty.quantize(sr[j]), mean, embedder, name=f'{item["mean"]} (posterior mean)'
            )
            figures.update({face_key(k, name): v for k, v in stability.items()})
        item['uncertainty'] = figures


def _save_npy(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + '.tmp.npy')
    np.save(tmp, array)
    os.replace(tmp, path)


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """``manifest.json`` through a temporary file and a rename: it marks the run complete."""
    path = out_dir / MANIFEST
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- sampling


def _validate(cfg: Any, hr_size: int) -> None:
    """``sr.*`` values, checked before anything is read or loaded (a one-line error names the
    option: ``main.py``)."""
    for name, low in (('num_samples', 1), ('batch_size', 1), ('max_images', 0), ('checkpoint', 0),
                      ('upscale', 0), ('margin', 0), ('min_face', 0)):  # fmt: skip
        if cfg[name] < low:
            raise ValueError(f'sr.{name} must be >= {low}, got {cfg[name]}')
    for name in ('feather', 'noise_key_grid', 'detect_scale', 'upscale_max_side'):
        if cfg[name] <= 0:
            raise ValueError(f'sr.{name} must be > 0, got {cfg[name]}')
    if (cfg.feather + cfg.margin) * hr_size > (hr_size - 1) / 2:
        raise ValueError(
            f'sr.feather {cfg.feather} + sr.margin {cfg.margin} leave no opaque part of the '
            f'{hr_size} px SR crop: keep their sum under {(hr_size - 1) / (2 * hr_size):.3f}'
        )
    if cfg.video and cfg.crops_only:
        raise ValueError('sr.video encodes the pasted frames: sr.crops_only writes none')
    if cfg.max_shrink and cfg.max_shrink < 1:
        raise ValueError(f'sr.max_shrink must be 0 (off) or >= 1, got {cfg.max_shrink}')
    frames_lib.parse_frames(cfg.frames)
    if cfg.output and Path(cfg.output).exists() and not Path(cfg.output).is_dir():
        raise ValueError(f'sr.output {cfg.output} is an existing file: give a folder')
    if cfg.faces_csv and not Path(cfg.faces_csv).is_file():
        raise ValueError(f'sr.faces_csv {cfg.faces_csv}: no such file')
    if cfg.uncertainty:
        uncertainty.check_num_samples(cfg.num_samples)
        if cfg.std_max <= 0:
            raise ValueError(f'sr.std_max must be > 0, got {cfg.std_max}')


#: What identity stability says, written beside the figures in every manifest that has them.
STABILITY_MEANS = (
    'identity_stability: mean cosine of face embeddings between pairs of the K samples (and '
    'each sample and their mean). High means the model invents the same face every time, not '
    'that the face is the real person: from a tiny or unusual LR every sample can agree and all '
    'be wrong. Low means the identity is not determined by the LR.'
)


def for_uncertainty(config: Any) -> Any:
    """``config`` with the sampling temperature of uncertainty runs: ``sr.uncertainty_temperature``
    (default 1, the posterior itself) in place of ``sampling.temperature``; as it is without
    ``sr.uncertainty``."""
    if not config.sr.uncertainty:
        return config
    tempered = ml_collections.ConfigDict(config.to_dict())
    tempered.sampling.temperature = config.sr.uncertainty_temperature
    return tempered


def _make_sampler(exp: experiment.Experiment, guide: guidance_lib.Guidance | None) -> Callable:
    """``exp.make_sampler``, guided by ``guide`` (``config.guidance``) when there is one."""
    return exp.make_sampler(exp.config.sampling, guide)


def _compiled_sampler(
    exp: experiment.Experiment,
    params: Any,
    rows: int,
    guide: guidance_lib.Guidance | None,
    mean: mean_model.MeanModel,
) -> Callable:
    """The configured sampler, compiled ahead of time for ``rows`` samples over the mesh."""
    config = exp.config
    sample_fn = _make_sampler(exp, guide)
    split = parallel.batch_sharding(exp.mesh)
    lr_shape = (lr_size(config.data),) * 2 + (exp.hr_shape[-1],)

    def spec(shape, dtype=jnp.float32):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=split)

    cond = {'lr_up': spec((rows,) + exp.hr_shape), 'lr': spec((rows,) + lr_shape)}
    cond.update({k: spec((rows,) + exp.hr_shape) for k in mean.keys})
    if guide is not None:
        cond[guidance_lib.ATTRIBUTES] = spec((rows, len(guide.attributes)), jnp.int32)
    like = jax.random.PRNGKey(0)
    key = jax.ShapeDtypeStruct(
        like.shape, like.dtype, sharding=parallel.replicated_sharding(exp.mesh)
    )
    return sample_fn.lower(params, key, cond, spec((rows,), jnp.int32)).compile()


def _sampler_inputs(
    batch: Batch,
    first: int,
    ids: np.ndarray,
    rows: int,
    centered: bool,
    targets: np.ndarray | None = None,
) -> Batch:
    """Global sampler rows (input-major, zero-padded to ``rows``): scaled cond and sample ids
    (``ids`` [inputs, num_samples] of every input, :meth:`Inputs.sample_ids`), and the
    guidance targets of the batch's inputs (``targets`` of every input) if any."""
    scaler = datasets.get_data_scaler(centered)
    num_samples = ids.shape[1]
    count = len(batch['lr']) * num_samples

    def pad(x):
        return np.concatenate([x, np.zeros((rows - count,) + x.shape[1:], x.dtype)])

    ids = ids[first : first + len(batch['lr'])].reshape(-1)
    cond = datasets.model_cond(batch, scaler)
    rows_of = {k: pad(np.repeat(v, num_samples, axis=0)) for k, v in cond.items()}
    rows_of['ids'] = pad(ids)
    if targets is not None:
        mine = targets[first : first + len(batch['lr'])]
        rows_of[guidance_lib.ATTRIBUTES] = pad(np.repeat(mine, num_samples, axis=0))
    return rows_of


def _local_rows(global_rows: Batch) -> Batch:
    """This host's slice of the global rows (every host builds all of them)."""
    n, i = jax.process_count(), jax.process_index()
    return {k: np.split(v, n)[i] for k, v in global_rows.items()}


def _sample_batches(
    exp: experiment.Experiment,
    sampler: Callable,
    params: Any,
    inputs: Inputs,
    part: Part,
    mean: mean_model.MeanModel,
    targets: np.ndarray | None = None,
) -> Iterator:
    """Yields ``(batch, sr [inputs, num_samples, H, W, C] in [0, 1], nfe)`` per batch of the
    inputs of ``part`` (one model's)."""
    config, num_samples = exp.config, exp.config.sr.num_samples
    key = parallel.replicate(jax.random.PRNGKey(config.sr.seed), exp.mesh)
    inverse = datasets.get_data_inverse_scaler(config.data.centered)
    ids = inputs.sample_ids(num_samples)[part.indices]
    targets = targets[part.indices] if targets is not None else None
    for b, batch in enumerate(inputs.batches(part.per_batch, part.rung)):
        batch = {k: np.asarray(v) for k, v in mean(batch).items()}
        local = _local_rows(
            _sampler_inputs(
                batch, b * part.per_batch, ids, part.rows, config.data.centered, targets
            )  # fmt: skip
        )
        sharded = parallel.shard_batch(local, exp.mesh)
        cond = {k: v for k, v in sharded.items() if k != 'ids'}
        samples, info = sampler(params, key, cond, sharded['ids'])
        sampling.check_finished(jax.device_get(info), config.sampling)
        samples = np.asarray(multihost_utils.process_allgather(samples, tiled=True))
        count = len(batch['lr'])
        sr = inverse(samples[: count * num_samples]).reshape((count, num_samples) + exp.hr_shape)
        yield batch, sr, int(np.max(info['nfe'].addressable_data(0)))


# ----------------------------------------------------------------------------- driver


@dataclasses.dataclass(frozen=True)
class Part:
    """The inputs one model of the run restores (a rung of its size ladder) and their
    batching."""

    rung: int
    indices: list[int]  # Its inputs (into Inputs and Plan.items), in batch order.
    per_batch: int  # Inputs per batch.
    rows: int  # Samples per sampler call: per_batch * num_samples, padded to the devices.
    grids: list[str]  # Per batch (empty when sr.grid is off).


@dataclasses.dataclass(frozen=True)
class Plan:
    """The output names of every input and batch grid, and the inputs of each model."""

    items: list[dict[str, Any]]  # Per input: 'input' and its outputs ('sr', 'lr', 'hr').
    grids: list[str]  # Every part's grids, in order.
    parts: list[Part]  # Per model with inputs, in the run's model order.


def make_plan(inputs: Inputs, cfg: Any, num_devices: int, num_models: int = 1) -> Plan:
    """Batching of each model's inputs over ``num_devices`` and output names (see
    :func:`plan_outputs`); grids are numbered across the models."""
    batching = []
    for rung in range(num_models):
        indices = inputs.of_rung(rung)
        if indices:
            per_batch = max(1, min(len(indices), cfg.batch_size // cfg.num_samples))
            rows = -(-per_batch * cfg.num_samples // num_devices) * num_devices
            batching.append((rung, indices, per_batch, rows, -(-len(indices) // per_batch)))
    num_grids = sum(b[-1] for b in batching) if cfg.grid else 0
    items, grids = plan_outputs(
        inputs, cfg.num_samples, num_grids, cfg.uncertainty, not cfg.crops_only
    )
    parts, first = [], 0
    for rung, indices, per_batch, rows, count in batching:
        mine = grids[first : first + count] if cfg.grid else []
        parts.append(Part(rung, indices, per_batch, rows, mine))
        first += count
    return Plan(items, grids, parts)


def _sample_and_write(
    exp,
    sampler,
    params,
    inputs: Inputs,
    plan: Plan,
    part: Part,
    out_dir: Path,
    mean: mean_model.MeanModel,
    targets: np.ndarray | None = None,
) -> dict:
    """Samples every batch of ``part``, writes its images (process 0); images, NFE, seconds
    and rate."""
    num_batches = -(-len(part.indices) // part.per_batch)
    progress = Progress(len(part.indices) * exp.config.sr.num_samples, unit='images')
    nfe, start = 0, time.perf_counter()
    batches = _sample_batches(exp, sampler, params, inputs, part, mean, targets)
    cfg, is_chief = exp.config.sr, jax.process_index() == 0
    embedders = _embedders(cfg) if is_chief else {}
    for b, (batch, sr, batch_nfe) in enumerate(batches):
        if is_chief:
            mine = part.indices[b * part.per_batch : b * part.per_batch + len(sr)]
            items = [plan.items[i] for i in mine]
            write_batch(out_dir, items, batch, sr, part.grids[b] if part.grids else None)
            if cfg.uncertainty:
                write_uncertainty(out_dir, items, batch, sr, cfg, embedders)
        nfe = max(nfe, batch_nfe)
        progress.update(progress.done + sr.shape[0] * sr.shape[1])
        logging.info(progress.line(f'batch {b + 1}/{num_batches}, NFE {nfe}'))
    seconds = time.perf_counter() - start
    return {
        'images': progress.done,
        'nfe': nfe,
        'seconds': round(seconds, 3),
        'images_per_sec': round(progress.done / seconds, 3),
    }


def _embedders(cfg: Any) -> dict[str, Any]:
    """The recognisers of the identity-stability figures (``sr.face``; {} without them)."""
    if not cfg.uncertainty:
        return {}
    from evaluation.face import get_embedders  # onnxruntime, dlib: loaded only when used.

    return get_embedders(cfg.face, 'config.sr.face')


def _stability(cfg: Any) -> bool:
    """Whether this run writes identity-stability figures (uncertainty and a recogniser)."""
    from evaluation.face import parse_recognisers

    return bool(cfg.uncertainty and parse_recognisers(cfg.face, 'config.sr.face'))


def _guidance(exp: experiment.Experiment, params: Any, inputs: Inputs) -> tuple:
    """``(guide, sampler params, targets [inputs, attributes])`` of ``config.guidance``;
    ``(None, params, None)`` without guidance. Classifier weights and h are replicated data."""
    config = exp.config
    guide = guidance_lib.make_guidance(config.guidance, config.data.centered)
    if guide is None:
        return None, params, None
    targets = guidance_lib.input_targets(config.guidance, inputs.sources)
    variables = guidance_lib.load_variables(guide, config.guidance, exp.hr_shape)
    variables = parallel.replicate(variables, exp.mesh)
    logging.info('guidance: %s targets from %s, h = %s', guide.attributes,
                 config.guidance.attributes_csv or 'config.guidance.targets',
                 config.guidance.scale)  # fmt: skip
    return guide, guidance_lib.sampler_params(params, variables), targets


def _inputs(models: Sequence[ladder_lib.Model]) -> Inputs:
    """The inputs of ``config.sr`` (the first model's): files (photos or crops,
    ``sr.aligned``), each face to a model of the run's ``models``, or the eval split."""
    config = models[0].config
    cfg = config.sr
    if not cfg.input:
        return dataset_inputs(config, cfg.max_images)
    finder = None if cfg.aligned else photos_lib.FaceFinder(cfg, [m.rung for m in models])
    frame_range = frames_lib.parse_frames(cfg.frames)
    data = [m.config.data for m in models]
    return file_inputs(cfg.input, data, cfg.max_images, finder, frame_range)


def _write_photos(out_dir: Path, inputs: Inputs, plan: Plan, cfg: Any) -> dict:
    """Pastes SR faces into their photos (process 0); the manifest's ``photos`` and
    ``no_face`` entries (none without photo inputs)."""
    if not inputs.photos:
        return {}
    records, videos = [], []
    if jax.process_index() == 0:
        items = {name: item for name, item in zip(inputs.names, plan.items, strict=True)}
        records = [photos_lib.write_photo(out_dir, p, items, cfg) for p in inputs.photos]
        if cfg.video:
            videos = photos_lib.write_videos(out_dir, inputs.photos, records)
    no_face = [p.source for p in inputs.photos if not p.faces]
    return {'photos': records, 'no_face': no_face, **({'videos': videos} if cfg.video else {})}


def _load(
    model: ladder_lib.Model, exp: experiment.Experiment, inputs: Inputs, primary: bool
) -> tuple:
    """``(guide, sampler params, guidance targets, step)`` of ``model``: its EMA weights
    (``sr.checkpoint`` for the run's own model, the latest for a ladder's other ones) and
    guidance (:func:`_guidance`; ladders have none). Every model is loaded before anything is
    written."""
    checkpoint = (model.config.sr.checkpoint or None) if primary else None
    params, step = exp.load_ema_params(model.workdir, checkpoint)
    return (*_guidance(exp, params, inputs), step)


def _restore(
    model: ladder_lib.Model,
    exp: experiment.Experiment,
    loaded: tuple[Any, Any, Any, int],
    inputs: Inputs,
    plan: Plan,
    part: Part | None,
    out_dir: Path,
) -> dict[str, Any]:
    """Samples and writes the inputs of ``model``'s ``part`` (none: nothing to do); its
    manifest record."""
    cfg, (guide, params, targets, step) = model.config.sr, loaded
    record = {'name': model.name, 'workdir': str(model.workdir), 'checkpoint_step': step,
              'lr_size': lr_size(model.config.data), 'hr_size': exp.hr_shape[0],
              'inputs': len(part.indices) if part else 0}  # fmt: skip
    if part is None:  # (Photos without a face leave nothing to sample: no compilation.)
        return record
    logging.info(
        'super-resolving %d inputs x %d samples with checkpoint %d of %s into %s (%d samples '
        'per call on %d devices)', len(part.indices), cfg.num_samples, step, model.workdir,
        out_dir, part.rows, exp.mesh.devices.size)  # fmt: skip
    compile_start = time.perf_counter()
    mean = mean_model.load(model.config, exp.mesh.devices.flatten(), model.workdir)
    sampler = _compiled_sampler(exp, params, part.rows, guide, mean)
    record['compile_seconds'] = round(time.perf_counter() - compile_start, 3)
    stats = _sample_and_write(exp, sampler, params, inputs, plan, part, out_dir, mean, targets)
    return {**record, **stats}


def _totals(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's images, NFE (the most of any model), seconds and rate over its models."""
    images = sum(r.get('images', 0) for r in records)
    seconds = sum(r.get('seconds', 0.0) for r in records)
    return {
        'compile_seconds': round(sum(r.get('compile_seconds', 0.0) for r in records), 3),
        'images': images,
        'nfe': max((r.get('nfe', 0) for r in records), default=0),
        'seconds': round(seconds, 3),
        'images_per_sec': round(images / seconds, 3) if seconds else 0.0,
    }


def run(config: Any, workdir: str | Path, devices: Any = None) -> dict[str, Any]:
    """Super-resolves ``config.sr.input`` with the checkpoint in ``workdir`` (and the other
    models of ``sr.ladder``, ``ladder.py``); the manifest.

    ``devices`` (default: all devices of all hosts) is the data-parallel mesh.
    """
    # ----- Checks: inputs, checkpoints, output names (nothing is written before they pass) -----
    config = for_uncertainty(config)
    cfg = config.sr
    _validate(cfg, int(config.data.image_size))
    models = [dataclasses.replace(m, config=for_uncertainty(m.config))
              for m in ladder_lib.resolve(config, workdir)]  # fmt: skip
    out_dir = Path(cfg.output or runs.Run.open(workdir).output_dir('sr'))
    inputs = _inputs(models)
    exps = [experiment.build(m.config, devices, m.workdir) for m in models]
    loaded = [_load(m, e, inputs, r == 0)
              for r, (m, e) in enumerate(zip(models, exps, strict=True))]  # fmt: skip
    plan = make_plan(inputs, cfg, exps[0].mesh.devices.size, len(models))

    # ----- Sample and write, model by model; the manifest goes last -----
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MANIFEST).unlink(missing_ok=True)  # Stale: the outputs are about to change.
    parts = {part.rung: part for part in plan.parts}
    records = [_restore(m, e, w, inputs, plan, parts.get(r), out_dir)
               for r, (m, e, w) in enumerate(zip(models, exps, loaded, strict=True))]  # fmt: skip
    for part in plan.parts:
        for i in part.indices:
            plan.items[i]['model'] = models[part.rung].name
    pasted = _write_photos(out_dir, inputs, plan, cfg)
    stats = _totals(records)
    manifest = {
        'complete': True,
        'input': cfg.input or f'eval split of {config.data.path}',
        'output': str(out_dir),
        'workdir': str(workdir),
        'checkpoint_step': records[0]['checkpoint_step'],
        'num_inputs': len(plan.items),
        'sr': config.sr.to_dict(),
        'sampling': config.sampling.to_dict(),
        'temperature': config.sampling.temperature,
        **({'identity_stability_means': STABILITY_MEANS} if _stability(cfg) else {}),
        'guidance': config.guidance.to_dict(),
        'lr_size': lr_size(config.data),
        'hr_size': exps[0].hr_shape[0],
        'devices': exps[0].mesh.devices.size,
        **stats,
        'models': records,
        'items': plan.items,
        'grids': plan.grids,
        **pasted,
    }
    if jax.process_index() == 0:
        write_manifest(out_dir, manifest)
    logging.info('%d SR images at %.2f images/s; wrote %s', stats['images'],
                 stats['images_per_sec'], out_dir / MANIFEST)  # fmt: skip
    return manifest
