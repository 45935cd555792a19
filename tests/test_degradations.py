"""Real-world LR degradations (issue 22): the area kernel, kernel specs, random per-image
degradation (determinism, ranges, validation), defaults bit for bit, and the eval LR options."""

from __future__ import annotations

import copy
import csv
import re

import jax
import numpy as np
import pytest
from PIL import Image

import datasets
import degradations
import runs
from configs import default, degradation_presets
from configs.ecdp import demo
from evaluation import run as eval_run
from utils.paths import REPO_ROOT

SIZE, FACTOR, BATCH = 32, 4, 6
# Resizes of batches of other shapes may differ by a few ulps (tests/test_datasets.py).
ACROSS_SHAPES_ATOL = 1e-6
SEVEN_KERNELS = degradation_presets.TRAINING['down_kernels']


def _config(**overrides):
    config = default.data_config()
    config.image_size, config.downscale = SIZE, FACTOR
    config.update(overrides)
    return config


def _random_config(**overrides):
    config = _config()
    degradation_presets.apply_random_degradation(config)
    config.update(overrides)
    return config


def _faces(seed=0, rows=BATCH):
    return np.random.default_rng(seed).random((rows, SIZE, SIZE, 3), dtype=np.float32)


def _block_mean(x, factor):
    b, h, w, c = x.shape
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


# ----------------------------------------------------------------------------- area kernel


@pytest.mark.parametrize('factor', [2, 4, 8])
def test_area_kernel_is_the_block_mean(factor):
    hr = _faces(factor, 2)
    for antialias in (True, False):  # An average needs no antialiasing: the flag is ignored.
        lr = np.asarray(degradations.downscale(hr, factor, 'area', antialias))
        np.testing.assert_allclose(lr, _block_mean(hr, factor), rtol=0, atol=1e-6)
    made, _ = datasets.make_lr(hr, _config(down_kernel='area', downscale=factor), 0)
    np.testing.assert_allclose(made, _block_mean(hr, factor), rtol=0, atol=1e-6)


def test_area_kernel_of_a_non_integer_factor_averages_each_footprint():
    """Each input pixel repeated out-size times, then averaged in in-size blocks: the exact
    overlap-weighted mean (OpenCV's INTER_AREA for a non-integer shrink)."""
    x = _faces(1, 1)[..., :16, :16, :]
    reference = np.repeat(np.repeat(x, 5, axis=1), 7, axis=2)
    reference = reference.reshape(1, 5, 16, 7, 16, 3).mean(axis=(2, 4))
    out = np.asarray(degradations.resize(x, (5, 7), 'area'))  # float32 weights: ~10 ulps.
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match='only shrinks'):
        degradations.upscale(x, 2, 'area')


def test_area_kernel_matches_opencv_inter_area():
    cv2 = pytest.importorskip(
        'cv2', reason='OpenCV is not installed in the venv (not a dependency); the numpy '
        'block-mean reference above is the check'
    )  # fmt: skip
    hr = _faces(2, 1)[0]
    for size in ((8, 8), (5, 7)):
        ours = np.asarray(degradations.resize(hr[None], size, 'area'))[0]
        theirs = cv2.resize(hr, size[::-1], interpolation=cv2.INTER_AREA)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_kernel_specs():
    assert degradations.parse_kernel('bicubic') == ('bicubic', True)
    assert degradations.parse_kernel(' lanczos3:noaa ') == ('lanczos3', False)
    for spec in SEVEN_KERNELS:
        assert degradations.kernel_spec(*degradations.parse_kernel(spec)) == spec
    for bad in ('box', 'bicubic:aa', 'area:noaa', ''):
        with pytest.raises(ValueError, match='kernel'):
            degradations.parse_kernel(bad)


# ----------------------------------------------------------------------------- make_lr


_down = jax.jit(degradations.downscale, static_argnames=('factor', 'method', 'antialias'))
_up = jax.jit(degradations.upscale, static_argnames=('factor', 'method', 'antialias'))


def _fixed_reference(hr, c, key):
    """make_lr before random degradation existed (blur -> down -> noise -> clip -> JPEG)."""
    blurred = jax.device_put(degradations.gaussian_blur(hr, c.blur_sigma), jax.devices('cpu')[0])
    lr = np.asarray(_down(blurred, c.downscale, c.down_kernel, c.antialias))
    if c.noise_sigma > 0:
        rngs = datasets._row_generators(key, len(lr))
        lr = degradations.add_gaussian_noise(lr, c.noise_sigma, rngs)
    lr = degradations.jpeg_compress(np.clip(lr, 0.0, 1.0), c.jpeg_quality)
    up = np.asarray(_up(jax.device_put(lr, jax.devices('cpu')[0]), c.downscale, c.up_kernel))
    return lr, np.clip(up, 0, 1)


def test_defaults_reproduce_the_fixed_make_lr_bit_for_bit():
    hr, entropy = _faces(), np.arange(BATCH * 3).reshape(BATCH, 3)
    ranges = {k: v for k, v in degradation_presets.TRAINING.items()}  # Ignored while off.
    for fixed in ({}, dict(noise_sigma=0.04, blur_sigma=1.2, jpeg_quality=60), ranges):
        config = _config(**fixed)
        for key in (7, entropy):
            for got, want in zip(
                datasets.make_lr(hr, config, key), _fixed_reference(hr, config, key), strict=True
            ):
                np.testing.assert_array_equal(got, want, err_msg=str(fixed))


def test_random_degradation_is_deterministic_per_row():
    config = _random_config()
    hr, entropy = _faces(3), np.stack([np.full(BATCH, 11), np.arange(BATCH)], axis=1)
    lr, lr_up = datasets.make_lr(hr, config, entropy)
    again, _ = datasets.make_lr(hr, config, entropy)
    np.testing.assert_array_equal(lr, again)
    # A row's LR does not depend on the batch around it: made one image at a time (bit-equal);
    # lr_up is resized per batch (other shape: to ACROSS_SHAPES_ATOL).
    part, part_up = datasets.make_lr(hr[[4, 1]], config, entropy[[4, 1]])
    np.testing.assert_array_equal(part, lr[[4, 1]])
    np.testing.assert_allclose(part_up, lr_up[[4, 1]], rtol=0, atol=ACROSS_SHAPES_ATOL)
    other, _ = datasets.make_lr(hr, config, entropy + 1)
    assert all(not np.array_equal(a, b) for a, b in zip(lr, other, strict=True))
    assert lr.min() >= 0 and lr.max() <= 1


def test_random_settings_vary_within_ranges_and_cover_the_kernels():
    config = _random_config()
    kernels = datasets.lr_kernels(config)
    draws = [
        datasets.draw_degradation(config, np.random.default_rng([5, i]), kernels)
        for i in range(300)
    ]
    t = degradation_presets.TRAINING
    assert {degradations.kernel_spec(d.kernel, d.antialias) for d in draws} == set(SEVEN_KERNELS)
    for field, (lo, hi) in (
        ('blur_sigma', t['blur_sigma_range']),
        ('noise_sigma', t['noise_sigma_range']),
        ('jpeg_quality', t['jpeg_quality_range']),
    ):
        values = np.array([getattr(d, field) for d in draws])
        assert lo <= values.min() and values.max() <= hi, field
        assert values.max() - values.min() > 0.8 * (hi - lo), field  # Spread over the range.
    assert all(isinstance(d.jpeg_quality, int) for d in draws)


def test_each_row_is_made_with_its_drawn_setting():
    """Without noise, row i of a random batch is the fixed pipeline at row i's draw."""
    config = _random_config(noise_sigma_range=(0.0, 0.0))
    hr, entropy = _faces(4), np.stack([np.full(BATCH, 3), np.arange(BATCH)], axis=1)
    lr, _ = datasets.make_lr(hr, config, entropy)
    for i, rng in enumerate(datasets._row_generators(entropy, BATCH)):
        d = datasets.draw_degradation(config, rng)
        fixed = _config(
            down_kernel=d.kernel, antialias=d.antialias, blur_sigma=d.blur_sigma,
            jpeg_quality=d.jpeg_quality,
        )  # fmt: skip
        np.testing.assert_allclose(lr[i], datasets.make_lr(hr[i], fixed, 0)[0], atol=1e-6)


@pytest.mark.parametrize(
    'key,value',
    [
        ('blur_sigma_range', (2.0, 1.0)),
        ('blur_sigma_range', (-0.5, 1.0)),
        ('blur_sigma_range', (1.0,)),
        ('noise_sigma_range', (0.0, 0.1, 0.2)),
        ('noise_sigma_range', (0.1, 0.05)),
        ('jpeg_quality_range', (0, 50)),
        ('jpeg_quality_range', (50, 101)),
        ('jpeg_quality_range', (50.5, 60.0)),
        ('down_kernels', ('box',)),
        ('down_kernels', ('area:noaa',)),
        ('down_kernel', 'box'),
        ('blur_sigma', 1.0),  # Fixed while random degradation draws it.
    ],
)
def test_bad_degradation_settings_are_refused_naming_the_key(key, value):
    config = _random_config()
    with config.unlocked():
        config[key] = value
    with pytest.raises(ValueError) as err:
        datasets.validate_data_config(config)
    assert re.search(rf'\bdata\.{key}\b', str(err.value)) and '\n' not in str(err.value)


def test_presets_and_migrations():
    datasets.validate_data_config(_random_config())
    stage = demo.get_config('degraded').data
    assert stage.random_degradation and tuple(stage.down_kernels) == SEVEN_KERNELS
    datasets.validate_data_config(stage)
    # A package recorded before the fields existed: migrated to "off".
    shipped = runs.Run.open(REPO_ROOT / 'pretrained' / 'ecdp_x4_student').config()
    assert shipped.data.random_degradation is False and tuple(shipped.data.down_kernels) == ()


# ----------------------------------------------------------------------------- eval LR


def test_eval_lr_options_make_the_lr_and_name_the_folder():
    config = demo.get_config('degraded')  # Random training degradation: off for the eval.
    config.eval.update(down_kernel='bicubic:noaa', degradation='degraded')
    lr = eval_run.lr_config(config).data
    assert (lr.down_kernel, lr.antialias, lr.random_degradation) == ('bicubic', False, False)
    assert lr.jpeg_quality == degradation_presets.EVAL_DEGRADATIONS['degraded']['jpeg_quality']
    assert config.data.down_kernel == 'bilinear' and config.data.random_degradation  # Kept.
    name = eval_run.eval_name(config, ('bicubic',), None)
    assert '-x8-lr_bicubic_noaa-degraded-baselines' in name
    for field, bad in (('down_kernel', 'box'), ('degradation', 'foggy')):
        wrong = copy.deepcopy(config)
        wrong.eval[field] = bad
        with pytest.raises(ValueError, match=f'config.eval.{field}'):
            eval_run.lr_config(wrong)
    plain = default.get_config()  # Default settings record exactly the data fields of before.
    settings = eval_run.eval_settings(eval_run.lr_config(plain), ('bicubic',), None, _no_mean())
    assert set(settings['data']) == set(plain.data) - set(datasets.RANDOM_DEGRADATION_FIELDS)


def _no_mean():
    from mean_model import MeanModel

    return MeanModel()


def test_baseline_eval_per_kernel(tmp_path):
    """``--config.eval.down_kernel=area`` in --mode eval: its own folder, settings and LR."""
    images = tmp_path / 'faces'
    images.mkdir()
    with open(images / 'faces.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['file', 'identity', 'split'])
        for i, face in enumerate(np.round(_faces(6, 4) * 255).astype(np.uint8)):
            Image.fromarray(face).save(images / f'{i}.png')
            writer.writerow([f'{i}.png', i, 'test'])
    config = demo.get_config('smoke')
    config.data.path = str(images)
    config.eval.update(methods=('bicubic',), lpips='', face=(), batch_size=4, grid_images=2)
    psnr = {}
    for kernel in ('', 'area'):
        config.eval.down_kernel = kernel
        metrics = eval_run.run(config, tmp_path / 'w', devices=jax.devices()[:1])
        assert metrics['settings']['data']['down_kernel'] == (kernel or 'bilinear')
        psnr[kernel] = metrics['methods']['bicubic']['psnr']['mean']
    assert sorted(p.name for p in (tmp_path / 'w' / 'eval').iterdir()) == [
        'faces-test-x4-baselines',
        'faces-test-x4-lr_area-baselines',
    ]
    assert psnr[''] != psnr['area']
