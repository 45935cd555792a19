"""``--mode sr`` end to end with a tiny model trained once on real faces.

Runs call ``sr.run`` in-process on two devices (one per core; the compile cache is shared);
one test goes through ``main.py`` for the ``--sr.*`` spelling of the command line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import flax.serialization
import jax
import numpy as np
import pytest
from PIL import Image

import datasets
import main
import sr
import train
from configs import demo
from faces.wild import FaceListError
from models import classifiers
from tests.test_classifiers import random_variables
from utils.checkpoint import CheckpointError
from utils.images import to_uint8
from utils.paths import REPO_ROOT

DEVICES = 2  # One per core.
HR, LR = 32, 8  # The smoke model: 32x32 from 4x downscaled 8x8.


def _config(data_dir: Path, **sr_fields):
    config = demo.get_config('smoke')
    config.data.path = str(data_dir)
    config.sr.update({'aligned': True, **sr_fields})  # Crops; photos: test_photos.py.
    return config


def _run(config, workdir: Path) -> dict:
    return sr.run(config, workdir, devices=jax.devices()[:DEVICES])


def _env(devices: int) -> dict[str, str]:
    """A subprocess environment with ``devices`` CPU devices and the tests' compile cache."""
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO_ROOT))
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    env['FACESR_JAX_CACHE'] = os.environ['FACESR_TEST_JAX_CACHE']
    return env


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert('RGB'))


# Across batch shapes and device counts the SR agrees to float rounding, not bit for bit (XLA
# CPU may round another batch shape differently on another processor): as 8-bit PNGs, at most
# one level apart, where a value sits on a rounding boundary.
PNG_LEVELS = 1


def _assert_png_close(a: np.ndarray, b: np.ndarray, name: str) -> None:
    assert a.shape == b.shape, name
    assert np.abs(a.astype(int) - b.astype(int)).max() <= PNG_LEVELS, name


@pytest.fixture(scope='module')
def workdir(celeba_id128, tmp_path_factory) -> Path:
    """A smoke model trained for 20 steps: checkpoints 10 and 20."""
    path = tmp_path_factory.mktemp('sr_workdir')
    config = _config(celeba_id128)
    config.training.update(n_iters=20, checkpoint_freq=10)
    train.train(config, path, devices=jax.devices()[:DEVICES])
    return path


@pytest.fixture(scope='module')
def lr_dir(celebahq32, tmp_path_factory) -> Path:
    """Four 8x8 LR faces, one 12x9 (not square) and one 32x32 (the HR size)."""
    path = tmp_path_factory.mktemp('lr')
    for i in range(4):
        with Image.open(celebahq32 / f'{i:03d}.png') as face:
            face.convert('RGB').resize((LR, LR), Image.Resampling.BILINEAR).save(
                path / f'face{i}.png'
            )
    with Image.open(celebahq32 / '004.png') as face:
        face.convert('RGB').resize((12, 9)).save(path / 'odd.png')
        face.convert('RGB').resize((HR, HR)).save(path / 'zz_hr_size.png')
    return path


def test_folder_of_lr_faces(workdir, lr_dir, tmp_path, caplog):
    out = tmp_path / 'out'
    manifest = _run(_config(lr_dir, input=str(lr_dir), output=str(out), batch_size=4), workdir)
    names = ['face0', 'face1', 'face2', 'face3', 'odd', 'zz_hr_size']
    for name in names:
        assert _read(out / f'{name}.png').shape == (HR, HR, 3), name
    assert _read(out / 'grid_0000.png').shape == (4 * 34 + 2, 2 * 34 + 2, 3)  # LR | SR rows.
    assert _read(out / 'grid_0001.png').shape == (2 * 34 + 2, 2 * 34 + 2, 3)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f'{n}.png' for n in names] + ['grid_0000.png', 'grid_0001.png', 'manifest.json']
    )
    on_disk = json.loads((out / 'manifest.json').read_text())
    assert on_disk == json.loads(json.dumps(manifest, default=str))
    assert on_disk['checkpoint_step'] == 20 and on_disk['num_inputs'] == 6
    assert [i['input'] for i in on_disk['items']] == [str(lr_dir / f'{n}.png') for n in names]
    assert on_disk['nfe'] == 11 and on_disk['images_per_sec'] > 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert any('odd.png: 12x9' in w and 'not square' in w for w in warnings), warnings
    assert any('zz_hr_size.png: 32x32' in w and 'HR size' in w for w in warnings), warnings
    assert not any('face0.png' in w for w in warnings)


def test_eval_split_writes_sr_lr_and_hr(workdir, celeba_id128):
    config = _config(celeba_id128, max_images=3, batch_size=2, checkpoint=10)
    manifest = _run(config, workdir)
    out = workdir / 'sr'  # The default output folder.
    assert manifest['checkpoint_step'] == 10 and manifest['num_inputs'] == 3
    reference = next(datasets.get_dataset(config.data, 'eval', 3, seed=config.seed))
    for i in range(3):
        assert _read(out / f'{i:06d}.png').shape == (HR, HR, 3)
        np.testing.assert_array_equal(_read(out / f'{i:06d}_hr.png'), to_uint8(reference['hr'][i]))
        # (LR is resized per batch, and sr's batch shape differs: to rounding.)
        _assert_png_close(_read(out / f'{i:06d}_lr.png'), to_uint8(reference['lr'][i]), 'lr')
    assert Path(manifest['items'][0]['input']).parent == celeba_id128 / 'images'
    assert _read(out / 'grid_0000.png').shape == (2 * 34 + 2, 3 * 34 + 2, 3)  # LR | SR | HR.
    assert (out / 'manifest.json').is_file()


def test_samples_differ_but_do_not_depend_on_batch_size(workdir, lr_dir, tmp_path):
    def run(batch_size: int, seed: int = 0, max_images: int = 3) -> dict[str, np.ndarray]:
        out = tmp_path / f'b{batch_size}_seed{seed}'
        config = _config(
            lr_dir,
            input=str(lr_dir),
            output=str(out),
            num_samples=2,
            max_images=max_images,
            batch_size=batch_size,
            seed=seed,
            grid=False,
        )
        _run(config, workdir)
        return {p.name: _read(p) for p in sorted(out.glob('*.png'))}

    two, four = run(2), run(4)
    assert sorted(two) == [f'face{i}_s{k}.png' for i in range(3) for k in range(2)]
    for name in two:
        _assert_png_close(two[name], four[name], name)
    for i in range(3):
        assert np.abs(two[f'face{i}_s0.png'].astype(int) - two[f'face{i}_s1.png']).mean() > 5
    other_seed = run(2, seed=1, max_images=1)
    assert not np.array_equal(other_seed['face0_s0.png'], four['face0_s0.png'])


def _bad_folder(tmp_path: Path, lr_dir: Path, kind: str) -> tuple[Path, Path]:
    folder = tmp_path / 'inputs'
    folder.mkdir()
    (folder / 'face0.png').write_bytes((lr_dir / 'face0.png').read_bytes())
    bad = folder / 'bad.png'
    if kind == 'not_an_image':
        bad.write_text('this is not a PNG')
    else:
        data = (lr_dir / 'zz_hr_size.png').read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    return folder, bad


@pytest.mark.parametrize('kind', ['not_an_image', 'truncated'])
def test_bad_input_file_is_named_and_nothing_is_written(workdir, lr_dir, tmp_path, kind):
    folder, bad = _bad_folder(tmp_path, lr_dir, kind)
    out = tmp_path / 'out'
    with pytest.raises(datasets.DataError, match=re.escape(str(bad))):
        _run(_config(lr_dir, input=str(folder), output=str(out)), workdir)
    assert not out.exists()


def test_bad_file_late_in_the_eval_split_stops_before_any_output(workdir, lr_dir, tmp_path):
    """Issue 12 #7: a truncated face in the second batch of a dataset is found before the
    first batch is written; an earlier run's complete result is left as it was."""
    data = tmp_path / 'faces'
    data.mkdir()
    for i in range(3):
        (data / f'{i}.png').write_bytes((lr_dir / 'zz_hr_size.png').read_bytes())
    _, bad = _bad_folder(tmp_path, lr_dir, 'truncated')
    bad.rename(data / 'truncated.png')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'manifest.json').write_text('{"complete": true}')  # From an earlier run.
    config = _config(data, output=str(out), batch_size=2)
    with pytest.raises(datasets.DataError, match=re.escape(f"{data}: split 'test' is the tra")):
        _run(config, workdir)  # Issue 12 #5: a folder without faces.csv has no held-out split.
    config.data.allow_split_overlap = True
    with pytest.raises(datasets.DataError, match=re.escape(str(data / 'truncated.png'))):
        _run(config, workdir)
    assert sorted(p.name for p in out.iterdir()) == ['manifest.json']


def test_missing_or_mismatched_checkpoint(workdir, lr_dir, tmp_path):
    out = tmp_path / 'out'
    config = _config(lr_dir, input=str(lr_dir), output=str(out))
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / 'empty' / 'checkpoints'))):
        _run(config, tmp_path / 'empty')
    config.sr.checkpoint = 15
    with pytest.raises(CheckpointError, match=r'no checkpoint 15 .* available: \[10, 20\]'):
        _run(config, workdir)
    config.sr.checkpoint = 0
    config.model.nf = 32  # The checkpoint has nf=16; training recorded its config.
    with pytest.raises(ValueError, match=r'config\.model\.nf: trained 16, now 32'):
        _run(config, workdir)
    assert not out.exists()


def test_a_damaged_newest_checkpoint_stops_sr_instead_of_an_older_step(workdir, lr_dir, tmp_path):
    """Issue 19 #10: sr never falls back silently to an older step; it names the damaged one
    and how to ask for another, and moves nothing (readers leave files alone)."""
    damaged = tmp_path / 'run'
    shutil.copytree(workdir, damaged)
    for path in (damaged / 'checkpoints' / '20').rglob('*'):
        if path.is_file() and path.stat().st_size > 1000:
            path.write_bytes(path.read_bytes()[:100])  # Truncated array data.
    config = _config(lr_dir, input=str(lr_dir), output=str(tmp_path / 'out'))
    with pytest.raises(CheckpointError, match=r'checkpoints/20(.|\n)*sr\.checkpoint=STEP'):
        _run(config, damaged)
    assert (damaged / 'checkpoints' / '20').is_dir() and not (tmp_path / 'out').exists()
    config.sr.checkpoint = 10  # Asked for explicitly: an older step is fine.
    assert _run(config, damaged)['checkpoint_step'] == 10


def test_two_inputs_with_one_output_name_are_refused():
    inputs = sr.Inputs(['a/x', 'a/x'], ['a/x.png', 'a/x.jpg'], lambda n: iter(()), False)
    with pytest.raises(datasets.DataError, match='a/x.jpg and a/x.png .* a/x.png'):
        sr.plan_outputs(inputs, 1, 0)
    inputs = sr.Inputs(['grid_0000'], ['grid_0000.png'], lambda n: iter(()), False)
    with pytest.raises(datasets.DataError, match='grid_0000.png and a grid'):
        sr.plan_outputs(inputs, 1, 1)
    items, grids = sr.plan_outputs(sr.Inputs(['x'], ['x.png'], lambda n: iter(()), True), 2, 1)
    assert items == [
        {'input': 'x.png', 'sr': ['x_s0.png', 'x_s1.png'], 'lr': 'x_lr.png', 'hr': 'x_hr.png'}
    ] and grids == ['grid_0000.png']


def test_sr_flags_are_config_overrides():
    argv = ['main.py', '--mode', 'sr', '--sr.input=a.png', '--sr.num_samples', '2', '--', '--sr.x']
    assert main.expand_sr_flags(argv) == [
        'main.py',
        '--mode',
        'sr',
        '--config.sr.input=a.png',
        '--config.sr.num_samples',
        '2',
        '--',
        '--sr.x',
    ]


def test_command_line(workdir, lr_dir, tmp_path):
    out = tmp_path / 'cli'
    command = [
        sys.executable,
        str(REPO_ROOT / 'main.py'),
        '--config',
        str(REPO_ROOT / 'configs/demo.py') + ':smoke',
        '--workdir',
        str(workdir),
        '--mode',
        'sr',
        f'--sr.input={lr_dir / "face1.png"}',
        '--sr.output',
        str(out),
        '--sr.grid=false',
    ]
    result = subprocess.run(command, env=_env(DEVICES), capture_output=True, timeout=300)
    log = result.stderr.decode()
    assert result.returncode == 0, log[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ['face1.png', 'manifest.json']
    assert 'images/s' in log and 'face1' in (out / 'manifest.json').read_text()


SLOW = pytest.mark.slow


@pytest.mark.parametrize('counts', [(1, 3), pytest.param((5, 6, 8), marks=SLOW)], ids=str)
def test_outputs_do_not_depend_on_the_device_count(counts, workdir, lr_dir, tmp_path):
    """Issue 12 #1: 3 inputs on any device count (padded to it) give the 2-device images."""

    def images(count: int) -> dict[str, np.ndarray]:
        out = tmp_path / str(count)
        config = _config(lr_dir, input=str(lr_dir), output=str(out), max_images=3, grid=False)
        manifest = sr.run(config, workdir, devices=jax.devices()[:count])
        assert manifest['devices'] == count
        return {n: _read(out / n) for item in manifest['items'] for n in item['sr']}

    reference = images(DEVICES)
    for count in counts:
        other = images(count)
        assert other.keys() == reference.keys()
        for name, image in reference.items():
            _assert_png_close(other[name], image, f'{count} devices: {name}')


def test_killed_run_leaves_no_manifest_and_a_rerun_completes(workdir, celeba_id128, tmp_path):
    """SIGKILL after the first image: the folder has images but no manifest (so it never reads
    as complete, although an earlier run's manifest was there); a rerun completes it with the
    images of an uninterrupted run."""
    out = tmp_path / 'killed'
    out.mkdir()
    (out / 'manifest.json').write_text('{"complete": true}')  # From an earlier run.
    fields = dict(output=str(out), max_images=12, batch_size=1, grid=False)
    command = [
        sys.executable, str(REPO_ROOT / 'main.py'), '--mode', 'sr', '--workdir', str(workdir),
        '--config', str(REPO_ROOT / 'configs/demo.py') + ':smoke',
        f'--config.data.path={celeba_id128}', *[f'--sr.{k}={v}' for k, v in fields.items()],
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=_env(DEVICES), stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (out / '000000.png').exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-3000:]
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    written = {p.name for p in out.iterdir()}
    assert 'manifest.json' not in written and '000011.png' not in written, sorted(written)
    manifest = _run(_config(celeba_id128, **fields), workdir)
    reference = _run(_config(celeba_id128, **dict(fields, output=str(tmp_path / 'ref'))), workdir)
    assert manifest['num_inputs'] == reference['num_inputs'] == 12
    for item in reference['items']:
        for name in item['sr'] + [item['lr'], item['hr']]:
            np.testing.assert_array_equal(_read(out / name), _read(tmp_path / 'ref' / name))
    assert (out / 'manifest.json').is_file()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack('>I', len(data)) + body + struct.pack('>I', zlib.crc32(body))

    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IEND', b'')


def _write_bad(kind: str, folder: Path, face: Path) -> Path:
    """A bad input file of ``kind`` in ``folder`` (``face``: a good LR PNG to spoil)."""
    data = face.read_bytes()
    path = folder / {'jpeg': 'bad.jpg'}.get(kind, 'bad.png')
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'jpeg':
        with Image.open(face) as image:
            image.save(path, quality=95)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == 'png':
        path.write_bytes(data[: len(data) // 2])
    elif kind == 'bomb':
        path.write_bytes(_png_header_only(40_000, 40_000))
    return path


@pytest.mark.parametrize('kind', ['empty', 'jpeg', 'png', 'bomb'])
def test_bad_input_files_are_named_before_anything_is_written(kind, lr_dir, tmp_path):
    """0-byte file, truncated JPEG and PNG, a 1.6-gigapixel header: DataError naming the file
    from the input step, which runs before the checkpoint is read or an output written."""
    folder = tmp_path / 'inputs'
    folder.mkdir()
    (folder / 'face0.png').write_bytes((lr_dir / 'face0.png').read_bytes())
    bad = _write_bad(kind, folder, lr_dir / 'face1.png')
    with pytest.raises(datasets.DataError, match=re.escape(f'cannot decode image {bad}')):
        sr.file_inputs(folder, [_config(lr_dir).data])


def test_odd_image_modes_are_converted_as_documented(lr_dir, tmp_path):
    """Grayscale -> channel replicated, RGBA -> alpha dropped, 16-bit -> top 8 bits."""
    with Image.open(lr_dir / 'face0.png') as face:
        rgb = np.asarray(face.convert('RGB'))
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / 'gray.png')
    Image.fromarray(np.dstack([rgb, np.full_like(gray, 7)])).save(tmp_path / 'rgba.png')
    Image.fromarray(gray.astype(np.uint16) * 256 + 255).save(tmp_path / 'sixteen.png')
    inputs = sr.file_inputs(tmp_path, [_config(lr_dir).data])
    (batch,) = inputs.batches(8, 0)
    as_uint8 = np.round(batch['lr'] * 255).astype(np.uint8)
    assert inputs.names == ['gray', 'rgba', 'sixteen']
    np.testing.assert_array_equal(as_uint8[0], np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(as_uint8[1], rgb)
    np.testing.assert_array_equal(as_uint8[2], as_uint8[0])


def test_unlistable_input_folder_is_named(lr_dir, tmp_path, monkeypatch):
    """A folder os.walk cannot list (no permission; simulated: tests may run as root)."""
    locked = tmp_path / 'inputs' / 'locked'
    locked.mkdir(parents=True)
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == locked:
            raise PermissionError(13, 'Permission denied', str(locked))
        return real_scandir(path)

    monkeypatch.setattr(os, 'scandir', scandir)
    with pytest.raises(datasets.DataError, match=re.escape(f'cannot list folder {locked}')):
        sr.file_inputs(tmp_path / 'inputs', [_config(lr_dir).data])


def test_guided_sr_at_h_0_is_unguided(workdir, lr_dir, tmp_path):
    """Per-input targets from a CSV, a random tiny classifier: h = 0 writes the unguided images
    exactly (that guidance moves samples is tested in test_guidance and test_eval_mode)."""
    classifier = classifiers.build_classifier('tiny_densenet')
    variables = jax.tree.map(np.asarray, random_variables(classifier, (HR, HR, 3)))
    ckpt = tmp_path / 'classifier'
    ckpt.write_bytes(flax.serialization.msgpack_serialize(variables))
    table = tmp_path / 'attributes.csv'
    table.write_text('file,male\nface0.png,1\nface1.png,0\nface2.png,1\nface3.png,0\n')
    images, manifests = {}, {}
    for name, guided in (('plain', False), ('h0', True)):
        config = _config(lr_dir, input=str(lr_dir), output=str(tmp_path / name), max_images=4)
        if guided:
            config.guidance.update(
                attributes=('male',),
                checkpoints=(str(ckpt),),
                classifier='tiny_densenet',
                scale=0.0,
                attributes_csv=str(table),
            )
        manifests[name] = _run(config, workdir)
        images[name] = np.stack([_read(tmp_path / name / f'face{i}.png') for i in range(4)])
    np.testing.assert_array_equal(images['h0'], images['plain'])
    assert tuple(manifests['h0']['guidance']['attributes']) == ('male',)
    assert tuple(manifests['plain']['guidance']['attributes']) == ()
    # A target missing from the CSV stops the run before anything is written.
    table.write_text('file,male\nface0.png,1\n')
    with pytest.raises(ValueError, match='no row for 3 input'):
        _run(config, workdir)


def test_uncertainty_outputs_equal_numpy_over_the_written_samples(workdir, lr_dir, tmp_path):
    out = tmp_path / 'unc'
    config = _config(lr_dir, input=str(lr_dir), output=str(out), num_samples=3, max_images=2,
                     uncertainty=True, face=())  # fmt: skip
    manifest = _run(config, workdir)
    for item in manifest['items']:
        samples = np.stack([_read(out / name) for name in item['sr']]).astype(np.float64) / 255
        mean = _read(out / item['mean']).astype(np.float64) / 255
        np.testing.assert_allclose(mean, samples.mean(0), atol=0.5 / 255 + 1e-9)
        std = np.load(out / item['std'])
        np.testing.assert_allclose(std, samples.std(0).mean(-1), atol=1e-6)
        assert item['uncertainty']['std_mean'] == pytest.approx(float(std.mean()), abs=1e-6)
        assert _read(out / item['sheet']).shape[1] > 5 * HR  # LR | 3 samples | mean | std
        assert _read(out / item['std_map']).shape[:2] == (HR, HR)


def test_uncertainty_samples_the_posterior_at_temperature_1(workdir, lr_dir, tmp_path):
    """Issue 19 #6: a model configured at temperature 0.5 still draws its uncertainty samples
    at sr.uncertainty_temperature (1): the samples equal an untempered run's, and the manifest
    records the temperature used and what identity stability means, per recogniser."""
    config = _config(lr_dir, input=str(lr_dir), output=str(tmp_path / 'unc'), num_samples=2,
                     max_images=1, uncertainty=True, grid=False)  # fmt: skip
    config.sr.face = ('sface', 'dlib')
    config.sampling.temperature = 0.5
    manifest = _run(config, workdir)
    assert manifest['temperature'] == 1.0 and manifest['sampling']['temperature'] == 1.0
    assert 'not that the face is the real person' in manifest['identity_stability_means']
    figures = manifest['items'][0]['uncertainty']  # Identity stability per recogniser.
    for key in ('pairwise_cos', 'to_mean_cos', 'pairwise_cos_dlib', 'to_mean_cos_dlib'):
        assert -1 <= figures[key] <= 1, key
    plain = _config(lr_dir, input=str(lr_dir), output=str(tmp_path / 'plain'), num_samples=2,
                    max_images=1, grid=False)  # fmt: skip
    reference = _run(plain, workdir)
    assert reference['temperature'] == 1.0 and 'identity_stability_means' not in reference
    for ours, theirs in zip(manifest['items'][0]['sr'], reference['items'][0]['sr'], strict=True):
        # The same program on the same inputs; PNG quantisation may still differ by one level.
        diff = _read(tmp_path / 'unc' / ours).astype(int) - _read(tmp_path / 'plain' / theirs)
        assert np.abs(diff).max() <= 1


def test_uncertainty_needs_two_samples(workdir, lr_dir, tmp_path):
    config = _config(lr_dir, input=str(lr_dir), output=str(tmp_path), uncertainty=True)
    with pytest.raises(ValueError, match=r'sr.uncertainty needs sr.num_samples >= 2 \(got 1\)'):
        _run(config, workdir)
    assert not any(tmp_path.iterdir())


def test_identity_stability_of_equal_and_of_different_faces(celeba_id128):
    """K copies of one face are perfectly stable; a different person among them is not."""
    import uncertainty
    from evaluation.face import get_embedder

    files = sorted((celeba_id128 / 'images').glob('*.png'))[:2]
    faces = np.stack([_read(f) for f in files]).astype(np.float64) / 255
    embedder = get_embedder('sface')
    same = uncertainty.identity_stability(np.stack([faces[0]] * 3), faces[0], embedder)
    assert same['pairwise_cos'] == pytest.approx(1.0, abs=1e-5)
    assert same['to_mean_cos'] == pytest.approx(1.0, abs=1e-5)
    mixed = uncertainty.identity_stability(np.stack([faces[0], faces[0], faces[1]]), faces[0],
                                           embedder)  # fmt: skip
    assert mixed['pairwise_cos'] < 0.9 and mixed['to_mean_cos'] < same['to_mean_cos']


# ----------------------------------------------------------------------------- photos


def _photo_frame(height: int, width: int) -> np.ndarray:
    """Smooth coloured noise, no face: float [0, 1]."""
    from scipy import ndimage

    noise = np.random.default_rng(0).uniform(0, 1, (height, width, 3))
    smooth = ndimage.gaussian_filter(noise, (6, 6, 0))
    return np.clip((smooth - smooth.mean()) * 4 + 0.5, 0, 1)


def test_photos_faces_found_super_resolved_and_pasted(workdir, celeba_id128, tmp_path, caplog):
    """In-the-wild inputs: a small face placed in a frame is found where it was placed,
    super-resolved and pasted back (elsewhere the output is the bicubic photo); two faces
    give two entries; a photo without a face is reported; a face listed in a CSV is used."""
    from faces.detect import YuNetDetector
    from faces.paste import upscale_photo

    files = sorted((celeba_id128 / 'images').glob('*.png'))[:2]
    faces = [
        np.asarray(Image.open(f).convert('RGB').resize((48, 48), Image.LANCZOS)) for f in files
    ]
    frame = to_uint8(_photo_frame(120, 160))
    one, two = frame.copy(), frame.copy()
    one[30:78, 60:108] = faces[0]
    two[30:78, 8:56], two[40:88, 100:148] = faces[0], faces[1]
    inputs = tmp_path / 'in'
    for name, image in (('one', one), ('two', two), ('none', frame)):
        save = inputs / f'{name}.png'
        save.parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(save)
    out = tmp_path / 'out'
    config = _config(celeba_id128, input=str(inputs), output=str(out), aligned=False, upscale=2,
                     max_shrink=0)  # fmt: skip
    manifest = _run(config, workdir)
    by_name = {Path(p['input']).stem: p for p in manifest['photos']}
    assert len(by_name['two']['faces']) == 2 and manifest['no_face'] == [str(inputs / 'none.png')]
    assert by_name['none']['faces'] == [] and by_name['none']['outputs'] == []
    # The face's box is where it was placed: YuNet's box on the 128 px face, mapped by the
    # resize (pixel centres) and the offset (test_faces measured such boxes within 3.5 px).
    (ref,) = YuNetDetector().detect(np.asarray(Image.open(files[0]).convert('RGB')))
    scale = 48 / 128
    placed = np.r_[(ref.box[:2] + 0.5) * scale - 0.5 + (60, 30), ref.box[2:] * scale]
    np.testing.assert_allclose(by_name['one']['faces'][0]['box'], placed, atol=3.5)
    face = by_name['one']['faces'][0]
    # The 48 px face is far larger than the smoke model's 8x8 LR crop: said, and recorded.
    assert face['lr_scale'] < 0.5 and 'is shrunk' in caplog.text
    assert _read(out / f'{face["item"]}.png').shape == (HR, HR, 3)
    pasted = _read(out / 'one.png').astype(int)
    bicubic = to_uint8(upscale_photo(one, 2)).astype(int)
    assert pasted.shape == (240, 320, 3)
    assert np.abs(pasted[:40, :80] - bicubic[:40, :80]).max() <= 1  # far from the face
    assert np.abs(pasted[60:156, 120:216] - bicubic[60:156, 120:216]).mean() > 2  # the face
    # A face too small for the detector, listed in a CSV (its box), is super-resolved.
    tiny = frame.copy()
    tiny[50:58, 70:78] = np.asarray(Image.fromarray(faces[1]).resize((8, 8), Image.LANCZOS))
    (inputs / 'one.png').unlink(), (inputs / 'two.png').unlink(), (inputs / 'none.png').unlink()
    Image.fromarray(tiny).save(inputs / 'tiny.png')
    listed = tmp_path / 'faces.csv'
    listed.write_text('file,x,y,w,h\ntiny.png,71,52,5,6\n')
    config.sr.update(faces_csv=str(listed), output=str(tmp_path / 'out2'))
    (photo,) = _run(config, workdir)['photos']
    assert [f['source'] for f in photo['faces']] == ['given']


def test_faces_larger_than_the_lr_are_pasted_by_plain_resizing(workdir, celeba_id128, tmp_path):
    """Issue 22: a face the model would shrink more than sr.max_shrink into its LR crop is not
    made worse: it is the photo's bicubic enlargement, has no SR item, and the manifest says
    how and why; a face near the LR size in the same photo is super-resolved. A photo whose
    faces are all resized is still written (nothing is sampled)."""
    from faces.paste import upscale_photo

    (file,) = sorted((celeba_id128 / 'images').glob('*.png'))[:1]
    frame = to_uint8(_photo_frame(120, 160))
    frame[30:78, 60:108] = np.asarray(Image.open(file).convert('RGB').resize((48, 48)))
    frame[90:98, 10:18] = np.asarray(Image.open(file).convert('RGB').resize((8, 8)))
    inputs = tmp_path / 'in'
    inputs.mkdir()
    Image.fromarray(frame).save(inputs / 'p.png')
    csv = tmp_path / 'faces.csv'
    csv.write_text('file,x,y,w,h\np.png,11,92,5,6\n')  # The 8 px face: too small for YuNet.
    out = tmp_path / 'out'
    config = _config(celeba_id128, input=str(inputs), output=str(out), aligned=False, upscale=2,
                     faces_csv=str(csv))  # fmt: skip
    manifest = _run(config, workdir)
    (photo,) = manifest['photos']
    small, large = photo['faces']
    assert (small['method'], large['method']) == ('sr', 'resize'), photo['faces']
    assert large['item'] is None and 'more than sr.max_shrink 1.5' in large['why']
    assert 1 / large['lr_scale'] > 1.5 >= 1 / small['lr_scale']
    assert manifest['num_inputs'] == 1 and (out / f'{small["item"]}.png').is_file()
    pasted = _read(out / 'p.png').astype(int)
    bicubic = to_uint8(upscale_photo(frame, 2)).astype(int)
    assert np.abs(pasted[50:166, 110:226] - bicubic[50:166, 110:226]).max() <= 1  # Resized.
    assert np.abs(pasted[176:200, 16:40] - bicubic[176:200, 16:40]).mean() > 1  # SR'd.
    config.sr.update(faces_csv='', min_face=10, output=str(tmp_path / 'out2'))  # The large one.
    manifest = _run(config, workdir)
    assert manifest['num_inputs'] == 0 and [
        f['method'] for f in manifest['photos'][0]['faces']
    ] == ['resize']
    assert np.abs(_read(tmp_path / 'out2' / 'p.png').astype(int) - bicubic).max() <= 1


def test_bad_sr_options_are_refused_before_anything_loads(celeba_id128, tmp_path, monkeypatch):
    """Each user error names its option, before the model (or a photo) is read."""
    import experiment

    def no_model(*args, **kwargs):
        raise AssertionError('the model was built before the options were checked')

    monkeypatch.setattr(experiment, 'build', no_model)
    existing = tmp_path / 'taken.png'
    existing.write_bytes(b'x')
    for fields, message in (
        ({'feather': 0.0}, 'sr.feather must be > 0'),
        ({'feather': 0.3, 'margin': 0.2}, 'leave no opaque part of the 32 px SR crop'),
        ({'output': str(existing)}, f'sr.output {existing} is an existing file'),
        ({'upscale': -1}, 'sr.upscale must be >= 0'),
        ({'faces_csv': str(tmp_path / 'none.csv')}, 'sr.faces_csv'),
        ({'noise_key_grid': 0.0}, 'sr.noise_key_grid must be > 0'),
        ({'max_shrink': 0.5}, 'sr.max_shrink must be 0 (off) or >= 1'),
        ({'video': True, 'crops_only': True}, 'sr.video encodes the pasted frames'),
        ({'frames': '0'}, 'sr.frames'),
    ):
        config = _config(celeba_id128, input=str(tmp_path), aligned=False, **fields)
        with pytest.raises(ValueError, match=re.escape(message)):
            _run(config, tmp_path)


def test_bad_faces_csv_rows_are_refused_by_file_and_line(celeba_id128, tmp_path, monkeypatch):
    """Issue 22: a row naming no input photo (a typo, a path, no extension) and a box wholly
    outside its photo are refused naming the CSV's file and line, before the model loads; a
    row for a frame of an animated image, or for a photo past sr.max_images, is not."""
    import experiment

    def no_model(*args, **kwargs):
        raise AssertionError('the model was built before the face list was checked')

    monkeypatch.setattr(experiment, 'build', no_model)
    inputs = tmp_path / 'in'
    (inputs / 'sub').mkdir(parents=True)
    frame = to_uint8(_photo_frame(60, 80))
    Image.fromarray(frame).save(inputs / 'sub' / 'a.png')
    Image.fromarray(frame).save(inputs / 'b.png')
    csv = tmp_path / 'faces.csv'
    for rows, message in (
        (['sub/a.png,1,2,20,20', 'a.jpg,1,2,20,20'], ":3: 'a.jpg' names no input photo"),
        (['in/b.png,1,2,20,20'], ":2: 'in/b.png' names no input photo"),
        (['b,1,2,20,20'], ":2: 'b' names no input photo"),
        (
            ['b.png,1,2,20,20', 'a.png,90,2,20,20'],
            ":3: the box [90.0, 2.0, 20.0, 20.0] of 'a.png' lies outside the 80x60 photo",
        ),  # fmt: skip
        (['sub/a.png,-30,2,20,20'], ':2: the box [-30.0, 2.0, 20.0, 20.0] of'),
    ):
        csv.write_text('\n'.join(['file,x,y,w,h', *rows]) + '\n')
        config = _config(celeba_id128, input=str(inputs), aligned=False, faces_csv=str(csv))
        with pytest.raises(FaceListError, match=re.escape(f'{csv}') + re.escape(message)):
            _run(config, tmp_path)
    # Known names pass the check (the run then stops at the model, as monkeypatched).
    csv.write_text('file,x,y,w,h\nb.png,1,2,20,20\nsub/a.png,-30,-30,20,20\n')
    config = _config(celeba_id128, input=str(inputs), aligned=False, faces_csv=str(csv),
                     max_images=1)  # fmt: skip
    with pytest.raises(AssertionError, match='the model was built'):
        _run(config, tmp_path)


def test_photo_scale_by_default_keeps_large_photos_openable():
    from photos import paste_scale

    cfg = demo.get_config('smoke').sr
    assert paste_scale((240, 320, 3), 4, cfg) == 4  # 1280x960
    assert paste_scale((1500, 2000, 3), 4, cfg) == 2  # 4000x3000
    assert paste_scale((3000, 4000, 3), 4, cfg) == 1  # Stays 4000x3000.
    cfg.upscale = 3
    assert paste_scale((3000, 4000, 3), 4, cfg) == 3  # Asked for.


def test_a_faces_noise_follows_its_box_not_its_index(workdir, celeba_id128, tmp_path):
    """Face B is the second of two listed faces, then the only one: its noise key, hence
    its SR, is the same (its index changed); another seed changes it (so the noise
    matters). The second run writes crops only."""
    files = sorted((celeba_id128 / 'images').glob('*.png'))[:2]
    frame = to_uint8(_photo_frame(120, 160))
    for f, (y, x) in zip(files, ((30, 8), (40, 100)), strict=True):
        frame[y : y + 48, x : x + 48] = np.asarray(Image.open(f).convert('RGB').resize((48, 48)))
    inputs = tmp_path / 'in'
    inputs.mkdir()
    Image.fromarray(frame).save(inputs / 'two.png')
    a, b = 'two.png,14,44,30,38', 'two.png,106,54,30,38'
    csv = tmp_path / 'faces.csv'

    def run(rows, out, **fields):
        csv.write_text('\n'.join(['file,x,y,w,h', *rows]) + '\n')
        config = _config(celeba_id128, input=str(inputs), output=str(tmp_path / out),
                         aligned=False, faces_csv=str(csv), min_face=1000, max_shrink=0,
                         **fields)  # fmt: skip
        (photo,) = _run(config, workdir)['photos']
        return photo, tmp_path / out

    both, out1 = run([a, b], 'both')
    alone, out2 = run([b], 'alone', crops_only=True)
    assert both['faces'][1]['noise_key'] == alone['faces'][0]['noise_key']
    assert both['faces'][0]['noise_key'] != both['faces'][1]['noise_key']
    sr_b = _read(out1 / f'{both["faces"][1]["item"]}.png')
    _assert_png_close(_read(out2 / f'{alone["faces"][0]["item"]}.png'), sr_b, 'face B')
    reseeded, out3 = run([b], 'seed1', crops_only=True, seed=1)
    other = _read(out3 / f'{reseeded["faces"][0]["item"]}.png').astype(int)
    assert np.abs(other - sr_b).mean() > 2
    # Pasted at the default scale (4: a 640x480 output); crops only: no pasted photo.
    assert both['scale'] == 4 and _read(out1 / 'two.png').shape == (480, 640, 3)
    assert alone['outputs'] == [] and not (out2 / 'two.png').exists()


def test_frames_of_an_animated_image_are_photos(workdir, celeba_id128, tmp_path):
    """sr.frames picks frames 1 to 3 of four; each is a photo of its own, its faces keyed by
    name and frame, pasted into <input>/frame<NNNNNN>.png (a frame without a face too), and
    with sr.video encoded into <input>.mp4 at the GIF's rate; as aligned crops it is refused."""
    import frames as frames_lib
    from tests.test_frames import write_gif

    face = np.asarray(Image.open(sorted((celeba_id128 / 'images').glob('*.png'))[0])
                      .convert('RGB').resize((48, 48)))  # fmt: skip
    clip = []
    for x in (10, 40, 70):  # The face walks right.
        frame = to_uint8(_photo_frame(80, 128))
        frame[16:64, x : x + 48] = face
        clip.append(frame)
    clip.append(to_uint8(_photo_frame(80, 128)))  # It has left.
    inputs = tmp_path / 'in'
    inputs.mkdir()
    write_gif(inputs / 'walk.gif', clip)
    out = tmp_path / 'out'
    config = _config(celeba_id128, input=str(inputs), output=str(out), aligned=False,
                     frames='1:4', crops_only=False, video=True)  # fmt: skip
    manifest = _run(config, workdir)
    assert [p['frame'] for p in manifest['photos']] == [1, 2, 3]
    assert manifest['no_face'] == [f'{inputs / "walk.gif"}#frame3']
    assert manifest['videos'] == [
        {'input': str(inputs / 'walk.gif'), 'output': 'walk.mp4', 'frames': 3, 'fps': 25.0}
    ]
    pasted = [_read(out / f'walk/frame{k:06d}.png').astype(int) for k in (1, 2, 3)]
    decoded = [
        image for _, image in frames_lib.read_frames(out / 'walk.mp4', frames_lib.ALL_FRAMES)
    ]
    assert len(decoded) == 3
    for image, png in zip(decoded, pasted, strict=True):  # H.264 at CRF 18: close, not equal.
        assert image.shape == png.shape and np.abs(image.astype(int) - png).mean() < 3
    for photo, x in zip(manifest['photos'][:2], (40, 70), strict=True):
        (face_record,) = photo['faces']
        assert face_record['noise_key'].startswith(f'walk/frame{photo["frame"]:06d}@')
        assert abs(face_record['box'][0] - (x + 48 * 0.2)) < 8  # Found where it walked.
        assert photo['input'] == f'{inputs / "walk.gif"}#frame{photo["frame"]}'
        assert _read(out / f'walk/frame{photo["frame"]:06d}.png').shape == (320, 512, 3)
    assert not (out / 'walk' / 'frame000000.png').exists()
    config.sr.update(aligned=True, video=False, output=str(tmp_path / 'out2'))
    with pytest.raises(datasets.DataError, match='walk.gif is a video or an animated image'):
        _run(config, workdir)


# ----------------------------------------------------------------------------- size ladder


def test_choose_rung_takes_the_nearest_lr_side_that_does_not_shrink_too_much():
    """Nearest in ratio among the LR sides that shrink the face at most max_shrink."""
    from photos import choose_rung

    sizes = [8, 16]
    assert [choose_rung(n, sizes, 1.5) for n in (4, 6, 11, 12, 16, 24)] == [0, 0, 0, 1, 1, 1]
    assert choose_rung(25, sizes, 1.5) is None  # 25 / 16 > 1.5: resized.
    assert choose_rung(100, sizes, 0) == 1  # No limit: the largest LR.
    assert choose_rung(8 * 2**0.5, sizes, 1.5) == 1  # A tie goes to the larger LR.
    assert choose_rung(10, [16, 8], 1.5) == 1  # Indices of the given order.


@pytest.fixture(scope='module')
def workdir_x2(celeba_id128, tmp_path_factory) -> Path:
    """A second smoke model: 32x32 from 2x downscaled 16x16, 4 steps."""
    path = tmp_path_factory.mktemp('sr_workdir_x2')
    config = _config(celeba_id128)
    config.data.downscale = 2
    config.training.update(n_iters=4, checkpoint_freq=4)
    train.train(config, path, devices=jax.devices()[:DEVICES])
    return path


def _placed_landmarks(size: int, x: int, y: int) -> list[float]:
    """The five landmarks of a celeba_id128 face resized to ``size`` px and placed at x, y."""
    from faces.align import CELEBA_ID128_LANDMARKS, CELEBA_ID128_SIZE

    scale = size / CELEBA_ID128_SIZE
    return list(((CELEBA_ID128_LANDMARKS + 0.5) * scale - 0.5 + (x, y)).ravel())


def test_size_ladder_gives_each_face_the_model_nearest_its_size(
    workdir, workdir_x2, celeba_id128, tmp_path
):
    """Issue 22: faces of 7, 11, 16 and 40 px with two models (LR 8 and 16): the 7 and 11 px
    faces go to the LR-8 model, the 16 px one to the LR-16 model, the 40 px one (2.5x the
    largest LR) is resized; the manifest says which model and why, each model's record counts
    its faces, and the paste (at the largest factor used, 4) holds each SR face."""
    from faces.paste import upscale_photo

    file = sorted((celeba_id128 / 'images').glob('*.png'))[0]
    frame = to_uint8(_photo_frame(120, 160))
    places = {7: (10, 10), 11: (30, 60), 16: (70, 20), 40: (100, 40)}
    rows = ['file,' + ','.join(f'{c}{k}' for k in range(1, 6) for c in 'xy')]
    for size, (x, y) in places.items():
        frame[y : y + size, x : x + size] = np.asarray(
            Image.open(file).convert('RGB').resize((size, size), Image.LANCZOS)
        )
        rows.append('p.png,' + ','.join(f'{v:.2f}' for v in _placed_landmarks(size, x, y)))
    inputs, csv = tmp_path / 'in', tmp_path / 'faces.csv'
    inputs.mkdir()
    Image.fromarray(frame).save(inputs / 'p.png')
    csv.write_text('\n'.join(rows) + '\n')
    out = tmp_path / 'out'
    config = _config(celeba_id128, input=str(inputs), output=str(out), aligned=False,
                     faces_csv=str(csv), min_face=1000, roll_search=False,
                     ladder=(str(workdir_x2),))  # fmt: skip
    manifest = _run(config, workdir)
    (photo,) = manifest['photos']
    faces = sorted(photo['faces'], key=lambda f: f['box'][2])
    assert [f['model'] for f in faces] == [str(workdir), str(workdir), str(workdir_x2), None]
    assert [f['method'] for f in faces] == ['sr', 'sr', 'sr', 'resize']
    assert (
        'of ' + str(workdir_x2) in faces[2]['why'] and 'more than sr.max_shrink' in faces[3]['why']
    )
    assert [(m['name'], m['lr_size'], m['inputs']) for m in manifest['models']] == [
        (str(workdir), 8, 2),
        (str(workdir_x2), 16, 1),
    ]
    items = {item['sr'][0][: -len('.png')]: item for item in manifest['items']}
    for face in faces[:3]:
        assert items[face['item']]['model'] == face['model']
        assert _read(out / f'{face["item"]}.png').shape == (HR, HR, 3)
    assert photo['scale'] == 4 and manifest['num_inputs'] == 3
    pasted = _read(out / 'p.png').astype(int)
    bicubic = to_uint8(upscale_photo(frame, 4)).astype(int)
    for size, (x, y) in places.items():
        region = np.s_[4 * y + 4 : 4 * (y + size) - 4, 4 * x + 4 : 4 * (x + size) - 4]
        diff = np.abs(pasted[region] - bicubic[region]).mean()
        assert (diff <= 1) if size == 40 else (diff > 1), (size, diff)


def test_ladder_models_must_agree(workdir, workdir_x2, celeba_id128, tmp_path):
    """One model per LR side, one HR side, and no guidance: refused naming sr.ladder before
    any weight is loaded; the run's own folder listed again is the same model."""
    import ladder

    config = _config(celeba_id128, ladder=(f'{workdir},{workdir_x2}',))
    models = ladder.resolve(config, workdir)
    assert [m.rung.lr_size for m in models] == [8, 16]
    other = tmp_path / 'other'
    shutil.copytree(workdir_x2, other)
    with pytest.raises(ValueError, match='both take 16 px LR faces'):
        ladder.resolve(_config(celeba_id128, ladder=(str(workdir_x2), str(other))), workdir)
    with pytest.raises(ValueError, match='neither a shipped model'):
        ladder.resolve(_config(celeba_id128, ladder=(str(tmp_path / 'nope'),)), workdir)
    guided = _config(celeba_id128, ladder=(str(workdir_x2),))
    guided.guidance.attributes = ('Male',)
    with pytest.raises(ValueError, match='guidance'):
        ladder.resolve(guided, workdir)
