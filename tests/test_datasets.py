"""Data pipeline: TFRecord reader, image sources, LR kernels, determinism, bad inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import datasets
import tfrecord_io
from configs import default

# Small shapes keep jit compilations (one per batch shape) few and cheap.
SIZE, FACTOR, BATCH = 32, 8, 6


def _config(path, **overrides):
    config = default.data_config()
    config.path = str(path)
    config.image_size, config.downscale = SIZE, FACTOR
    config.update(overrides)
    return config


def _stack(batches):
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


# XLA's CPU code may round a resize differently for another batch shape, or on another
# processor (issue 19 #14: lr_up of a 6-image batch and of its 3-image host slices differ by 1
# ulp in 2.3 % of the values on an AMD EPYC). Images resized in batches of different shapes are
# therefore compared within this absolute tolerance on [0, 1] (over 10 ulps of 1.0, far below
# 1/255); rows made per image in numpy (hr) and integers (index, id, mask) stay exact.
ACROSS_SHAPES_ATOL = 1e-6
RESIZED = ('lr', 'lr_up')  # Made by make_lr's jitted resizes, per batch.


def _assert_batches_equal(a, b):
    """Bit-equal: batches of the same shape (the same compiled program on the same input)."""
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _assert_batches_close(a, b):
    """Batches assembled from batches of other shapes: resized images to
    ``ACROSS_SHAPES_ATOL``, everything else bit-equal."""
    assert a.keys() == b.keys()
    for key in a:
        if key in RESIZED:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=ACROSS_SHAPES_ATOL, err_msg=key)
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _pil_resize(image, size, method):
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c])).resize((size, size), method)
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(planes, -1)


@pytest.fixture(scope='session')
def synthetic_faces(tmp_path_factory) -> Path:
    """23 random RGB PNGs (some non-square) with a faces.csv: 17 train, 6 test, identities."""
    root = tmp_path_factory.mktemp('faces')
    (root / 'images').mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(23):
        shape = (40, 48, 3) if i % 3 == 0 else (SIZE, SIZE, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
            root / 'images' / f'{i:02d}.png'
        )
        rows.append(
            {
                'file': f'images/{i:02d}.png',
                'identity': 100 + i // 4,
                'split': 'test' if i >= 17 else 'train',
            }
        )
    with open(root / 'faces.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, ['file', 'identity', 'split'])
        writer.writeheader()
        writer.writerows(rows)
    return root


# ----------------------------------------------------------------------------- TFRecord


def test_crc32c_known_values_and_lanes():
    assert tfrecord_io.crc32c(b'123456789') == 0xE3069283
    assert tfrecord_io.crc32c(b'') == 0
    rng = np.random.default_rng(1)
    for n in (5, 1023, 1024, 1025, 5000, 49152 + 7):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        expected = tfrecord_io._crc_update_py(0xFFFFFFFF, data) ^ 0xFFFFFFFF
        assert tfrecord_io.crc32c(data) == expected, n


def test_example_and_record_round_trip(tmp_path):
    features = {
        'data': b'\x00\xffabc',
        'names': [b'a', b'', b'ccc'],
        'floats': np.array([0.5, -2.25, 1e30], np.float32),
        'ints': np.array([3, -1, 2**40, -(2**62)], np.int64),
    }
    path = tmp_path / 'x.tfrecords'
    assert tfrecord_io.write_tfrecord(path, [tfrecord_io.encode_example(features)] * 3) == 3
    records = list(tfrecord_io.iter_tfrecord(path))
    assert len(records) == 3
    parsed = tfrecord_io.parse_example(records[2])
    assert parsed['data'] == [features['data']] and parsed['names'] == features['names']
    np.testing.assert_array_equal(parsed['floats'], features['floats'])
    np.testing.assert_array_equal(parsed['ints'], features['ints'])


def _records_as_images(path):
    for data in tfrecord_io.iter_tfrecord(path):
        yield datasets.example_image(tfrecord_io.parse_example(data), 3)


def test_tfrecord_matches_pngs_bit_exactly(shared_data, celebahq32):
    records = list(_records_as_images(shared_data / 'tfrecords' / 'celebahq32.tfrecords'))
    pngs = sorted(celebahq32.glob('*.png'))
    assert len(records) == len(pngs) == 32
    example = tfrecord_io.parse_example(
        next(tfrecord_io.iter_tfrecord(shared_data / 'tfrecords' / 'celebahq32.tfrecords'))
    )
    assert example['shape'].tolist() == [3, 128, 128]
    for record, png in zip(records, pngs, strict=True):  # Same order: record i == i.png.
        np.testing.assert_array_equal(record, np.asarray(Image.open(png)), err_msg=png.name)


def test_tfrecord_source_equals_folder_source(shared_data, celebahq32):
    tf_config = _config(shared_data / 'tfrecords' / 'celebahq32.tfrecords', source='tfrecord')
    folder = _stack(list(datasets.get_dataset(_config(celebahq32), 'test', 16)))
    records = _stack(list(datasets.get_dataset(tf_config, 'test', 16)))
    _assert_batches_equal(folder, records)


def test_truncated_tfrecord_names_file_and_record(shared_data, tmp_path):
    source = (shared_data / 'tfrecords' / 'quis8.tfrecords').read_bytes()
    record = len(source) // 8  # All 8 records have the same size.
    for cut, index in ((3 * record + 5, 3), (5 * record + record // 2, 5), (len(source) - 1, 7)):
        path = tmp_path / f'cut{cut}.tfrecords'
        path.write_bytes(source[:cut])
        with pytest.raises(tfrecord_io.TFRecordError, match=f'{path.name}.*record {index}'):
            tfrecord_io.TFRecordFile(path)
        with pytest.raises(datasets.DataError, match=path.name):
            datasets.get_dataset(_config(path, source='tfrecord'), 'train', 2)


def test_flipped_byte_gives_crc_error(shared_data, tmp_path):
    data = bytearray((shared_data / 'tfrecords' / 'quis8.tfrecords').read_bytes())
    record = len(data) // 8
    data[2 * record + 1000] ^= 0x10  # Inside the data of record 2.
    data[6 * record + 2] ^= 0x01  # Inside the length of record 6.
    path = tmp_path / 'flipped.tfrecords'
    path.write_bytes(bytes(data[: 6 * record]))
    records = tfrecord_io.TFRecordFile(path)
    records[1]
    with pytest.raises(tfrecord_io.TFRecordError, match=r'flipped.tfrecords: record 2: corrupt'):
        records[2]
    path.write_bytes(bytes(data))
    with pytest.raises(tfrecord_io.TFRecordError, match=r'record 6 .*corrupt length'):
        tfrecord_io.TFRecordFile(path)


# ----------------------------------------------------------------------------- LR kernels


@pytest.mark.parametrize('factor,size', [(8, 64), (16, 128)])
def test_default_lr_kernels_match_pil(factor, size):
    hr = np.random.default_rng(factor).random((2, size, size, 3), dtype=np.float32)
    lr, lr_up = datasets.make_lr(hr, _config('', image_size=size, downscale=factor), 0)
    assert lr.shape == (2, size // factor, size // factor, 3) and lr_up.shape == hr.shape
    # PIL's float-mode BILINEAR/BICUBIC reductions are antialiased (support scaled by factor).
    lr_ref = np.stack([_pil_resize(h, size // factor, Image.Resampling.BILINEAR) for h in hr])
    up_ref = np.stack([_pil_resize(x, size, Image.Resampling.BICUBIC) for x in lr])
    np.testing.assert_allclose(lr, lr_ref, atol=1e-4)
    np.testing.assert_allclose(lr_up, np.clip(up_ref, 0, 1), atol=1e-4)


def test_degradation_switches():
    hr = np.random.default_rng(3).random((BATCH, SIZE, SIZE, 3), dtype=np.float32)
    base_lr, base_up = datasets.make_lr(hr, _config(''), 7)
    switches = {'noise_sigma': 0.05, 'blur_sigma': 1.5, 'jpeg_quality': 30}
    for name, value in switches.items():
        lr, lr_up = datasets.make_lr(hr, _config('', **{name: value}), 7)
        assert np.abs(lr - base_lr).mean() > 1e-3, name
        assert np.abs(lr_up - base_up).mean() > 1e-4, name
        assert lr.min() >= 0 and lr.max() <= 1 and lr_up.min() >= 0 and lr_up.max() <= 1
        again, _ = datasets.make_lr(hr, _config('', **{name: value}), 7)
        np.testing.assert_array_equal(lr, again, err_msg=f'{name} not deterministic')
    off = _config('', noise_sigma=0.0, blur_sigma=0.0, jpeg_quality=0)
    lr, lr_up = datasets.make_lr(hr, off, 123)  # Off: the seed does not matter.
    np.testing.assert_array_equal(lr, base_lr)
    np.testing.assert_array_equal(lr_up, base_up)
    noisy = _config('', noise_sigma=0.05)
    other, _ = datasets.make_lr(hr, noisy, 8)
    assert not np.array_equal(other, datasets.make_lr(hr, noisy, 7)[0])
    # Per-row entropy: a row's noise does not depend on the other rows of the batch (batch 6
    # vs 2: resized in programs of other shapes, so to ACROSS_SHAPES_ATOL; noise 0.05 >> it).
    entropy = np.arange(BATCH * 2).reshape(BATCH, 2)
    full, full_up = datasets.make_lr(hr, noisy, entropy)
    part, part_up = datasets.make_lr(hr[2:4], noisy, entropy[2:4])
    np.testing.assert_allclose(full[2:4], part, rtol=0, atol=ACROSS_SHAPES_ATOL)
    np.testing.assert_allclose(full_up[2:4], part_up, rtol=0, atol=ACROSS_SHAPES_ATOL)


def test_data_scalers():
    x = np.linspace(0, 1, 5, dtype=np.float32)
    np.testing.assert_allclose(datasets.get_data_scaler(True)(x), 2 * x - 1)
    np.testing.assert_allclose(datasets.get_data_inverse_scaler(True)(2 * x - 1), x)
    assert datasets.get_data_scaler(False)(x) is x
    assert datasets.get_data_inverse_scaler(False)(x) is x


# ----------------------------------------------------------------------------- folder source


def test_celeba_id128_splits_and_identities(celeba_id128):
    config = _config(celeba_id128)
    assert datasets.dataset_size(config, 'train') == 3772
    assert datasets.dataset_size(config, 'test') == datasets.dataset_size(config, 'eval') == 1119
    with open(celeba_id128 / 'faces.csv', newline='') as f:
        rows = [r for r in csv.DictReader(f) if r['split'] == 'test']
    batch = next(datasets.get_dataset(config, 'eval', BATCH))
    assert batch['index'].tolist() == list(range(BATCH))
    assert batch['id'].tolist() == [int(r['identity']) for r in rows[:BATCH]]
    expected = datasets.load_image(celeba_id128 / rows[1]['file'], SIZE)
    np.testing.assert_array_equal(np.round(batch['hr'][1] * 255), expected)
    train = datasets.open_source(config, 'train')
    train_ids = {int(train.source.ids[i]) for i in range(len(train))}
    assert not train_ids & {int(r['identity']) for r in rows}  # Split by identity.


def test_eval_order_complete_and_padded(synthetic_faces):
    config = _config(synthetic_faces)
    batches = list(datasets.get_dataset(config, 'test', 4))  # 6 test images -> 4 + 2 padded.
    assert len(batches) == 2 and all(len(b['hr']) == 4 for b in batches)
    data = _stack(batches)
    assert data['mask'].tolist() == [True] * 6 + [False] * 2
    assert data['index'].tolist() == [0, 1, 2, 3, 4, 5, -1, -1]
    assert data['id'].tolist() == [104, 104, 104, 105, 105, 105, -1, -1]
    assert not data['hr'][6:].any()
    for i in range(6):
        image = datasets.load_image(synthetic_faces / 'images' / f'{17 + i:02d}.png', SIZE)
        np.testing.assert_array_equal(np.round(data['hr'][i] * 255), image)  # No flip.
    _assert_batches_equal(data, _stack(list(datasets.get_dataset(config, 'eval', 4))))
    assert data['hr'].dtype == np.float32 and data['lr'].shape == (8, 4, 4, 3)


def test_hosts_slices_concatenate_to_global_batch(synthetic_faces):
    config = _config(synthetic_faces, noise_sigma=0.1)
    for split in ('train', 'test'):
        single = datasets.get_dataset(config, split, BATCH, seed=5)
        hosts = [
            datasets.get_dataset(config, split, BATCH, seed=5, process_index=i, process_count=2)
            for i in range(2)
        ]
        for _ in range(3 if split == 'train' else 1):
            parts = [next(h) for h in hosts]
            assert len(parts[0]['hr']) == BATCH // 2
            _assert_batches_close(next(single), _stack(parts))  # Batch 6 vs 2 x 3.
    with pytest.raises(ValueError, match='multiple'):
        datasets.get_dataset(config, 'train', 5, process_count=2)


def test_training_order_is_resumable_and_covers_epochs(synthetic_faces):
    config = _config(synthetic_faces, noise_sigma=0.05, blur_sigma=1.0, jpeg_quality=50)
    stream = datasets.get_dataset(config, 'train', BATCH, seed=3)
    batches = [next(stream) for _ in range(6)]  # 36 rows: crosses the 17-image epoch twice.
    resumed = datasets.get_dataset(config, 'train', BATCH, seed=3, start_step=4)
    _assert_batches_equal(next(resumed), batches[4])
    _assert_batches_equal(next(resumed), batches[5])
    order = _stack(batches)['index']
    assert sorted(order[:17]) == list(range(17)) and sorted(order[17:34]) == list(range(17))
    assert order[:17].tolist() != order[17:34].tolist()  # A new permutation each epoch.
    unflipped = datasets.get_dataset(
        _config(synthetic_faces, random_flip=False), 'train', BATCH, seed=3
    )
    plain = _stack([next(unflipped) for _ in range(2)])
    ours = _stack(batches[:2])
    np.testing.assert_array_equal(ours['index'], plain['index'])
    flipped = [not np.array_equal(a, b) for a, b in zip(ours['hr'], plain['hr'], strict=True)]
    for row in np.flatnonzero(flipped):
        np.testing.assert_array_equal(ours['hr'][row], plain['hr'][row, :, ::-1])
    assert 0 < sum(flipped) < len(flipped)
    other = next(datasets.get_dataset(config, 'train', BATCH, seed=4))
    assert other['index'].tolist() != batches[0]['index'].tolist()


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_in_folder(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / 'a_rgb.png')
    Image.fromarray(rgb[..., 0]).save(tmp_path / 'b_gray.png')
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / 'c_rgba.png')
    Image.fromarray(rgb).convert('P').save(tmp_path / 'd_palette.png')
    (tmp_path / 'notes.txt').write_text('not an image')
    Image.fromarray(rgb).save(tmp_path / 'e_bad.jpg', quality=95)
    jpeg = (tmp_path / 'e_bad.jpg').read_bytes()
    (tmp_path / 'e_bad.jpg').write_bytes(jpeg[: len(jpeg) // 2])
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    config = _config(tmp_path)
    assert datasets.dataset_size(config, 'train') == 5  # notes.txt ignored.
    source = datasets.open_source(config, 'train')
    np.testing.assert_array_equal(source.read(0)[0], rgb)
    np.testing.assert_array_equal(source.read(1)[0], np.repeat(rgb[..., :1], 3, -1))
    np.testing.assert_array_equal(source.read(2)[0], rgb)  # Alpha dropped.
    assert source.read(3)[0].shape == (SIZE, SIZE, 3)
    with pytest.raises(datasets.DataError, match='e_bad.jpg'):
        source.read(4)
    with pytest.raises(datasets.DataError, match='e_bad.jpg'):
        list(datasets.get_dataset(config, 'eval', 5))
    (tmp_path / 'f_fake.png').write_text('text with an image extension')
    with pytest.raises(datasets.DataError, match='f_fake.png'):
        datasets.load_image(tmp_path / 'f_fake.png')


def test_missing_or_empty_folder_names_path(tmp_path):
    with pytest.raises(datasets.DataError, match='nowhere'):
        datasets.get_dataset(_config(tmp_path / 'nowhere'), 'train', 2)
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'readme.txt').write_text('no images here')
    with pytest.raises(datasets.DataError, match='empty'):
        datasets.dataset_size(_config(tmp_path / 'empty'), 'train')


def test_resize_modes_and_config_checks():
    image = np.zeros((40, 20, 3), np.uint8)
    image[10:30] = 200  # The centred 20x20 square.
    np.testing.assert_array_equal(datasets.fit_image(image, 20, 'center_crop'), image[10:30])
    squashed = datasets.fit_image(image, 20, 'resize')
    assert squashed.shape == (20, 20, 3) and squashed[0].max() < 100 < squashed[10].min()
    with pytest.raises(ValueError, match='downscale'):
        datasets.validate_data_config(_config('', image_size=36))
    with pytest.raises(ValueError, match='resize_mode'):
        datasets.validate_data_config(_config('', resize_mode='stretch'))


def test_load_lr_images(synthetic_faces):
    images, names = datasets.load_lr_images(synthetic_faces / 'images', 8)
    assert images.shape == (23, 8, 8, 3) and images.dtype == np.float32 and len(names) == 23
    assert names[0].endswith('00.png') and 0 <= images.min() and images.max() <= 1


# ----------------------------------------------------------------------------- tfds


def _build_tfds_dataset(data_dir: Path) -> dict[str, list[np.ndarray]]:
    """A prepared array_record tfds dataset written without TensorFlow (PIL-encoded PNG)."""
    tfds = pytest.importorskip('tensorflow_datasets')
    rng = np.random.default_rng(4)
    images = {'train': [], 'test': []}
    for split, n in (('train', 5), ('test', 3)):
        images[split] = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(n)]

    class FacesrTinyFaces(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version('1.0.0')

        def _info(self):
            features = tfds.features.FeaturesDict(
                {'image': tfds.features.Image(shape=(None, None, 3)), 'person': np.int64}
            )
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in images}

        def _generate_examples(self, split):
            for i, image in enumerate(images[split]):
                yield i, {'image': Image.fromarray(image), 'person': 1000 + i}

    FacesrTinyFaces(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
    return images


def test_tfds_source_reads_array_record(tmp_path):
    images = _build_tfds_dataset(tmp_path)
    config = _config(
        tmp_path,
        source='tfds',
        tfds_name='facesr_tiny_faces',
        image_size=24,
        tfds_id_key='person',
        resize_mode='center_crop',
    )
    data = _stack(list(datasets.get_dataset(config, 'eval', 4)))
    assert data['mask'].tolist() == [True] * 3 + [False]
    for row in range(3):  # tfds shuffles at preparation; match by the stored id.
        original = images['test'][data['id'][row] - 1000][:, 2:22]
        expected = datasets.fit_image(original, 24)
        np.testing.assert_array_equal(np.round(data['hr'][row] * 255), expected)
    assert datasets.dataset_size(config, 'train') == 5
    config.tfds_image_key = 'photo'
    with pytest.raises(datasets.DataError, match="no feature 'photo'"):
        next(datasets.get_dataset(config, 'train', 2))
    with pytest.raises(datasets.DataError, match='no_such_set'):
        datasets.dataset_size(_config(tmp_path, source='tfds', tfds_name='no_such_set'), 'train')


def test_sources_are_registered(tmp_path):
    assert {'folder', 'tfrecord', 'tfds'} <= set(datasets.SOURCES.names())
    with pytest.raises(ValueError, match='source'):
        datasets.get_dataset(_config(tmp_path, source='nope'), 'train', 2)


def test_sources_without_a_split_are_refused_for_held_out_use(synthetic_faces, tmp_path):
    """Issue 12 #5: a folder without faces.csv (or a tfrecord path without '{split}') has no
    held-out images; sr/eval of its 'test' split is refused unless asked for."""
    bare = tmp_path / 'bare'
    bare.mkdir()
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(bare / 'a.png')
    config = _config(bare)
    for split in ('test', 'eval'):
        with pytest.raises(datasets.DataError, match=rf'{bare}: split .test. is the training'):
            datasets.check_held_out(config, split)
    datasets.check_held_out(config, 'train')
    datasets.check_held_out(_config(bare, allow_split_overlap=True), 'test')
    datasets.check_held_out(_config(synthetic_faces), 'test')  # faces.csv splits it.
    records = _config('faces.tfrecord', source='tfrecord')
    with pytest.raises(datasets.DataError, match="no '{split}' in the path"):
        datasets.check_held_out(records, 'test')
    datasets.check_held_out(_config('faces-{split}.tfrecord', source='tfrecord'), 'test')


# ----------------------------------------------------------------------------- faces.csv


def _folder_with_csv(root: Path, data: bytes) -> Path:
    """Two tiny PNGs ``a.png``, ``b.png`` and a ``faces.csv`` of the given bytes."""
    root.mkdir()
    for name in ('a.png', 'b.png'):
        Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(root / name)
    (root / 'faces.csv').write_bytes(data)
    return root


@pytest.mark.parametrize(
    ('data', 'message'),
    [
        (b'file,identity,split\na.png,1,train\nb.png,2\n', r':3: 2 values, but the header'),
        (b'file,split\na.png,train\nb.png,train,x\n', r':3: 3 values, but the header'),
        (b'file,split\na.png,train\nb.png,test\na.png,test\n', r":4: file 'a.png' repeats line 2"),
        (b'file,split\na.png,train\nb.png,\n', r":3: no value in column 'split'"),
        (b'file,identity,split\na.png,x7,train\n', r":2: identity 'x7' is not an integer"),
        (b'file,split\na.png,train\nb\xe9.png,train\n', r':3: not UTF-8 text .*as UTF-8'),
    ],
    ids=['short_row', 'long_row', 'duplicate', 'empty_split', 'identity', 'latin1'],
)
def test_bad_faces_csv_is_refused_naming_file_and_line(tmp_path, data, message):
    """Issue 19 #9: faces.csv mistakes are one DataError naming the file and line."""
    import re

    root = _folder_with_csv(tmp_path / 'data', data)
    pattern = re.escape(str(root / 'faces.csv')) + message
    with pytest.raises(datasets.DataError, match=pattern):
        datasets.FolderSource(_config(root), 'train')


def test_faces_csv_saved_by_excel_with_a_bom_loads(tmp_path):
    """Issue 19 #9: a BOM (Excel's "CSV UTF-8") and CRLF line ends read as plain UTF-8."""
    data = '\ufefffile,identity,split\r\na.png,7,train\r\nb.png,,test\r\n'.encode()
    root = _folder_with_csv(tmp_path / 'data', data)
    train, test = (datasets.FolderSource(_config(root), s) for s in ('train', 'test'))
    assert (train.files, list(train.ids)) == ([root / 'a.png'], [7])
    assert (test.files, list(test.ids)) == ([root / 'b.png'], [-1])
