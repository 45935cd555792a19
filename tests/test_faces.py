"""Tests of the faces package on real faces: finding faces in photos, crops, paste-back."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from faces.align import (
    CELEBA_ID128_LANDMARKS,
    crop_matrix,
    resize_image,
    resize_matrix,
    warp_face,
)
from faces.detect import SOURCE_GIVEN, SOURCE_YUNET, Detection
from faces.paste import feather_mask, paste_back, paste_faces, upscale_photo
from faces.wild import (
    BOX_LANDMARKS,
    FaceListError,
    box_from_landmarks,
    find_faces,
    landmarks_from_box,
    read_face_csv,
)
from tests.conftest import require_face_model

#: Two LFW images that show one face each (YuNet finds exactly one; asserted where used).
LFW_ONE_FACE = ('AJ_Lamas_0001.jpg', 'Aaron_Eckhart_0001.jpg')


@pytest.fixture(scope='module')
def detector():
    require_face_model('yunet')
    from faces.detect import YuNetDetector

    return YuNetDetector(num_threads=1)


@pytest.fixture(scope='module')
def lfw_two(lfw_pairs: Path) -> list[np.ndarray]:
    """The two :data:`LFW_ONE_FACE` images, float32 [0, 1], 150x150."""
    paths = [lfw_pairs / 'images' / name for name in LFW_ONE_FACE]
    return [np.asarray(Image.open(p).convert('RGB'), np.float32) / 255 for p in paths]


def _background(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth coloured noise (a blurred scene without faces), float32 [0, 1]."""
    noise = np.random.default_rng(seed).uniform(0, 1, (height, width, 3))
    smooth = ndimage.gaussian_filter(noise, (6, 6, 0))
    return np.clip((smooth - smooth.mean()) * 4 + 0.5, 0, 1).astype(np.float32)


def _place(frame: np.ndarray, image: np.ndarray, x: int, y: int) -> np.ndarray:
    out = frame.copy()
    out[y : y + image.shape[0], x : x + image.shape[1]] = image
    return out


# ----------------------------------------------------------------------------- paste-back


@pytest.mark.parametrize(
    ('scale', 'lr_size', 'crop_size'), [(1, 192, 192), (2, 192, 192), (2, 192, 384)]
)
def test_paste_back_reproduces_the_photo(detector, lfw_two, scale, lr_size, crop_size):
    """Cut an LFW face, 'restore' it perfectly (bicubic), paste it back: the photo returns.

    The LFW image is edge-padded (the crop lies inside the photo) and smoothed (sigma 1 px),
    so that bilinear/bicubic resampling is nearly exact and what is left is geometry: the
    round trip differs from ``upscale_photo(photo)`` by mean 0.0012-0.0019 (max 0.029) inside
    the opaque mask, where a paste half a pixel off gives mean >= 0.0044 (measured). The LR crop
    is 192 px (the face's scale ~1.1, nothing lost; a 64 px crop would shrink it 0.36x and the
    round trip would be a blur, not a resampling error). The 'restored' crop is the LR crop
    upscaled by ``crop_size / lr_size`` with Pillow's bicubic: an independent pixel grid.
    """
    photo = np.pad(lfw_two[0], ((50, 50), (50, 50), (0, 0)), mode='edge')
    photo = ndimage.gaussian_filter(photo, (1, 1, 0)).astype(np.float32)
    faces = find_faces(photo, detector)
    assert len(faces) == 1
    matrix = crop_matrix(faces[0].landmarks, lr_size)
    lr_crop = warp_face(photo, matrix, lr_size)
    restored = upscale_photo(lr_crop, crop_size // lr_size)
    photo_up = upscale_photo(photo, scale)
    out, mask = paste_back(
        photo_up, restored, matrix, scale, feather=crop_size / 12, lr_size=lr_size
    )
    assert out.shape == photo_up.shape and mask.shape == photo_up.shape[:2]
    assert np.all((mask >= 0) & (mask <= 1))
    opaque = mask >= 1 - 1e-6
    x, y = np.round((faces[0].landmarks + 0.5) * scale - 0.5).astype(int).T
    assert np.all(opaque[y, x])  # the face (its landmarks) lies in the opaque part
    err = np.abs(out - photo_up)[opaque]
    assert err.mean() < 0.003 and err.max() < 0.05, (err.mean(), err.max())
    np.testing.assert_array_equal(out[mask == 0], photo_up[mask == 0])


def test_paste_back_blends_with_the_feathered_mask(lfw_two):
    """A white crop pasted with a rotation, SR factor 2 and scale 2: ``out = m + (1 - m) photo``
    and the opaque part is the crop's eroded square mapped into the upscaled photo."""
    angle, zoom, n, lr_size, scale, feather, margin = 0.3, 0.6, 128, 64, 2, 12.0, 4.0
    rot = zoom * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.full(2, 74.5)  # The photo's centre goes to the crop's: all of it inside.
    matrix = np.c_[rot, (lr_size - 1) / 2 - rot @ centre]  # photo -> 64 px LR crop
    photo_up = upscale_photo(lfw_two[0], scale)
    white = np.ones((n, n, 3), np.float32)
    out, mask = paste_back(photo_up, white, matrix, scale, feather, lr_size=lr_size, margin=margin)
    np.testing.assert_allclose(out, mask[..., None] + (1 - mask[..., None]) * photo_up, atol=1e-6)
    # Crop pixels per upscaled-photo pixel: zoom * (n / lr_size) / scale = 0.6 (no shrink).
    side = (n - 1 - 2 * (margin + feather)) / (zoom * n / lr_size / scale)
    np.testing.assert_allclose((mask >= 1 - 1e-6).sum(), side**2, rtol=0.03)
    soft = ((mask > 0.01) & (mask < 0.99)).sum()
    assert soft > 4 * side * feather  # a band about feather / 0.6 px wide around it
    with pytest.raises(ValueError, match='whole number'):
        upscale_photo(lfw_two[0], 1.01)


def test_feather_mask_shape_and_limits():
    mask = feather_mask(32, feather=4, margin=2)
    assert mask.shape == (32, 32) and mask.dtype == np.float32
    assert np.all(mask[:3] == 0) and np.all(mask[:, -3:] == 0)  # d = 0, 1, 2 <= margin
    assert np.all(mask[6:26, 6:26] == 1)  # d >= margin + feather
    ramp = mask[16, :16]
    assert np.all(np.diff(ramp) >= 0) and 0 < ramp[4] < 1
    np.testing.assert_allclose(mask, mask.T)
    with pytest.raises(ValueError, match='no opaque part'):
        feather_mask(16, feather=6, margin=2)
    with pytest.raises(ValueError, match='feather'):
        feather_mask(16, feather=0)


# ----------------------------------------------------------------------------- finding faces


@pytest.fixture(scope='module')
def two_faces(detector, lfw_two) -> np.ndarray:
    """Two LFW faces side by side, 300x150."""
    for image in lfw_two:
        assert len(detector.detect(image)) == 1  # the premise of LFW_ONE_FACE
    return np.concatenate(lfw_two, axis=1)


def test_two_faces_side_by_side_give_two_records(detector, two_faces):
    faces = find_faces(two_faces, detector)
    assert len(faces) == 2 and {f.source for f in faces} == {SOURCE_YUNET}
    centres = sorted(f.box[0] + f.box[2] / 2 for f in faces)
    assert centres[0] < 150 < centres[1]  # one face in each half
    for face in faces:
        assert face.landmarks.shape == (5, 2) and face.score >= detector.score_threshold


def test_two_faces_pasted_one_after_the_other(detector, two_faces):
    faces = find_faces(two_faces, detector)
    matrices = [crop_matrix(f.landmarks, 128) for f in faces]
    crops = [warp_face(two_faces, m, 128) for m in matrices]
    out, mask = paste_faces(two_faces, crops, matrices, 1, feather=10)
    halves = (mask[:, :150] >= 1 - 1e-6).sum(), (mask[:, 150:] >= 1 - 1e-6).sum()
    assert min(halves) > 1000  # both faces pasted
    # Each crop shrinks its face ~0.8x, so the round trip blurs a little: measured mean 0.006.
    assert np.abs(out - two_faces)[mask >= 1 - 1e-6].mean() < 0.02
    np.testing.assert_array_equal(out[mask == 0], two_faces[mask == 0])


def test_no_face_in_flat_or_smooth_noise(detector):
    flat = np.full((120, 160, 3), 0.5, np.float32)
    assert find_faces(flat, detector) == []
    assert find_faces(_background(120, 160, seed=1), detector) == []
    assert find_faces(_background(240, 320, seed=2), detector, detect_scale=2) == []


def test_min_size_only_center_and_given_faces(detector, lfw_two):
    """A large face (box 108 px wide) on the left, a half-size one (43 px) nearer the centre."""
    small = resize_image(lfw_two[1], 75, 75)
    photo = _place(_place(_background(200, 400), lfw_two[0], 0, 20), small, 230, 60)
    faces = find_faces(photo, detector)
    widths = sorted(f.box[2] for f in faces)
    assert len(faces) == 2 and widths[0] < 60 < 90 < widths[1], widths
    large = find_faces(photo, detector, min_size=75)
    assert len(large) == 1 and large[0].box[2] > 90
    central = find_faces(photo, detector, only_center=True)
    assert len(central) == 1 and central[0].box[2] < 60  # the small face is nearer the centre
    both = find_faces(photo, detector, min_size=75, only_center=True)
    assert len(both) == 1 and both[0].box[2] > 90  # filtered first, then the central one
    tiny_box = np.array([360.0, 10.0, 8.0, 10.0])
    tiny = Detection(tiny_box, landmarks_from_box(tiny_box), 1.0, SOURCE_GIVEN)
    with_given = find_faces(photo, detector, min_size=75, given=[tiny])
    assert [f.source for f in with_given] == [SOURCE_GIVEN, SOURCE_YUNET]  # kept though tiny
    small_box = central[0].box + 1.0  # the small face, listed: the list wins, no duplicate
    listed = Detection(small_box, landmarks_from_box(small_box), 1.0, SOURCE_GIVEN)
    merged = find_faces(photo, detector, given=[listed])
    assert [f.source for f in merged] == [SOURCE_GIVEN, SOURCE_YUNET]
    assert merged[1].box[2] > 90


class _FixedDetector:
    """Reports one face at fixed coordinates of whatever image it gets, and keeps its shape."""

    def __init__(self, box: np.ndarray, landmarks: np.ndarray):
        self.face = Detection(box, landmarks, 0.9)
        self.shape: tuple[int, ...] = ()

    def detect(self, image: np.ndarray) -> list[Detection]:
        self.shape = image.shape
        return [self.face]


def test_detect_scale_maps_detections_back_to_photo_pixels():
    """Upscaled pixel u is photo pixel (u + 0.5) / 3 - 0.5; sizes shrink by 3; min_size and
    the box filter apply in photo pixels."""
    box_up, lms_up = np.array([29.0, 14.0, 12.0, 15.0]), np.arange(10.0).reshape(5, 2) + 20
    fixed = _FixedDetector(box_up, lms_up)
    photo = np.zeros((40, 60, 3), np.uint8)
    (face,) = find_faces(photo, fixed, detect_scale=3)
    assert fixed.shape == (120, 180, 3)
    np.testing.assert_allclose(face.box, [29.5 / 3 - 0.5, 14.5 / 3 - 0.5, 4.0, 5.0])
    np.testing.assert_allclose(face.landmarks, (lms_up + 0.5) / 3 - 0.5)
    assert find_faces(photo, fixed, detect_scale=3, min_size=4.5) == []
    assert len(find_faces(photo, fixed, detect_scale=1, min_size=4.5)) == 1


# ----------------------------------------------------------------------------- small faces


@pytest.fixture(scope='module')
def celeba_faces(celeba_id128: Path) -> list[np.ndarray]:
    """The first six test faces of celeba_id128, float32 [0, 1], 128x128."""
    with open(celeba_id128 / 'faces.csv') as f:
        files = [r['file'] for r in csv.DictReader(f) if r['split'] == 'test'][:6]
    return [
        np.asarray(Image.open(celeba_id128 / n).convert('RGB'), np.float32) / 255 for n in files
    ]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a - b) ** 2)))


@pytest.mark.parametrize('detect_scale', [1, 2])
def test_small_face_found_and_aligned(detector, celeba_faces, detect_scale):
    """celeba_id128 faces downscaled to 32 px in a 160x120 frame: found where placed, and
    their 16x16 crop is close to the 128 px face downscaled to 16 directly.

    Box: each face's YuNet box on the 128 px image, mapped by the downscale (pixel centres,
    ``resize_matrix``) and the offset, is where the detection's box must be: within 3.5 px
    (measured: max 2.7 px, detect_scale 1; 2.3 px, detect_scale 2; the box is ~18x24 px).
    Crop: median PSNR over the six faces >= 16 dB (measured 17.9 dB at detect_scale 1,
    21.9 dB at 2). Not higher: a crop aligned on the 128 px face's own landmarks already
    differs from the direct downscale by 18.7 dB median (the faces deviate from the canonical
    landmarks, MAD 1.2-2.5 px at 128), and YuNet's landmarks on a 32 px face are off by ~0.2
    eye distances (~0.8 px of the 16 px crop). A different face scores ~10 dB; the same
    alignment 2 crop pixels off scores a median 13.3 / 13.8 dB (checked below).
    """
    size, x, y, crop = 32, 61, 43, 16
    frame = _background(120, 160)
    to_frame = np.array([[1.0, 0, x], [0, 1.0, y], [0, 0, 1]]) @ resize_matrix(size / 128)
    psnrs, shifted = [], []
    for face in celeba_faces:
        (ref,) = find_faces(face, detector)
        photo = _place(frame, resize_image(face, size, size), x, y)
        found = find_faces(photo, detector, only_center=True, detect_scale=detect_scale)
        assert len(found) == 1
        corner = to_frame[:2, :2] @ ref.box[:2] + to_frame[:2, 2]
        expected = np.r_[corner, ref.box[2:] * size / 128]
        np.testing.assert_allclose(found[0].box, expected, atol=3.5)
        direct = resize_image(face, crop, crop)
        psnrs.append(_psnr(warp_face(photo, crop_matrix(found[0].landmarks, crop), crop), direct))
        off = found[0].landmarks + 2 * size / crop  # 2 crop pixels right and down
        shifted.append(_psnr(warp_face(photo, crop_matrix(off, crop), crop), direct))
    assert np.median(psnrs) >= 16, psnrs
    assert np.median(shifted) < 16, shifted  # the threshold tells a misaligned crop apart


# ----------------------------------------------------------------------------- face lists


def test_read_face_csv_boxes_and_landmarks(tmp_path):
    boxes = tmp_path / 'boxes.csv'
    boxes.write_text(
        'file,x,y,w,h\na.jpg,10,20,30,40\nsub/b.png, 1.5, 2, 74, 97.6\na.jpg,0,0,8,10\n'
    )
    faces = read_face_csv(boxes)
    assert sorted(faces) == ['a.jpg', 'sub/b.png'] and len(faces['a.jpg']) == 2
    first = faces['a.jpg'][0]
    assert first.source == SOURCE_GIVEN and first.score == 1.0
    np.testing.assert_array_equal(first.box, [10, 20, 30, 40])
    np.testing.assert_allclose(first.landmarks, [10, 20] + BOX_LANDMARKS * [30, 40])
    np.testing.assert_allclose(box_from_landmarks(first.landmarks), first.box, atol=1e-9)

    marks = tmp_path / 'landmarks.csv'
    header = ','.join(f'{a}{i}' for i in range(1, 6) for a in 'xy')
    row = ','.join(f'{v:.2f}' for v in (CELEBA_ID128_LANDMARKS + [3, 4]).ravel())
    marks.write_text(f'file,{header}\nc.png,{row}\n')
    (face,) = read_face_csv(marks)['c.png']
    np.testing.assert_allclose(face.landmarks, CELEBA_ID128_LANDMARKS + [3, 4], atol=0.005)
    # The box of the canonical landmarks is YuNet's median box on celeba_id128 crops,
    # (28.3, 22.9, 73.9, 97.5) (python -m faces.canonical), within 2.3 px (measured 2.2).
    np.testing.assert_allclose(face.box, [28.3 + 3, 22.9 + 4, 73.9, 97.5], atol=2.3)


@pytest.mark.parametrize(
    ('text', 'line', 'message'),
    [
        ('', 1, 'empty'),
        ('file,x,y,w\na.jpg,1,2,3\n', 1, "missing \\['h'\\]"),
        ('name,x,y,w,h\na.jpg,1,2,3,4\n', 1, "missing \\['file'\\]"),
        ('file,x,y,w,h,score\na.jpg,1,2,3,4,1\n', 1, "unknown or repeated \\['score'\\]"),
        ('file,x1,y1,x2,y2\na.jpg,1,2,3,4\n', 1, 'missing'),
        ('file,left,top\na.jpg,1,2\n', 1, 'expected file,x,y,w,h'),
        ('file,x,y,w,h\na.jpg,1,2,3,4\nb.jpg,1,2,three,4\n', 3, "'w' is not a number"),
        ('file,x,y,w,h\na.jpg,1,2,3,4\nb.jpg,1,2,3\n', 3, '4 values, but the header'),
        ('file,x,y,w,h\na.jpg,1,2,3,4,5\n', 2, '6 values, but the header'),
        ('file,x,y,w,h\na.jpg,1,2,,4\n', 2, "no value in column 'w'"),
        ('file,x,y,w,h\na.jpg,1,2,3,4\nb.jpg,0,0,5,5\na.jpg,1,2,3,5\n', 4, 'line 2'),
        ('file,x,y,w,x\na.jpg,1,2,3,4\n', 1, 'repeated column'),
        ('file,x,y,w,h\na.jpg,1,2,nan,4\n', 2, 'not finite'),
        ('file,x,y,w,h\na.jpg,1,2,-3,4\n', 2, 'no area'),
        ('file,x,y,w,h\n,1,2,3,4\n', 2, 'no file name'),
        (
            'file,'
            + ','.join(f'{a}{i}' for i in range(1, 6) for a in 'xy')
            + '\na,'
            + '5,' * 9
            + '5\n',
            2,
            'no area',
        ),
    ],
)
def test_read_face_csv_errors_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / 'faces.csv'
    path.write_text(text)
    with pytest.raises(FaceListError, match=f'{re.escape(str(path))}:{line}: .*{message}'):
        read_face_csv(path)


def test_read_face_csv_with_box_and_landmarks_keeps_both_and_checks_them(tmp_path):
    """Issue 22: a row may give its box and its landmarks; a landmark outside the box
    (shifted or swapped columns) is refused naming file, line and landmark."""
    header = ','.join(f'{a}{i}' for i in range(1, 6) for a in 'xy')
    box = np.array([10.0, 20.0, 30.0, 40.0])
    marks = landmarks_from_box(box) + [[1, 0], [0, 1], [0, 0], [-1, 0], [0, -1]]
    good = ','.join(f'{v:g}' for v in marks.ravel())
    bad = marks.copy()
    bad[3] = [5.0, 50.0]  # Left of the box.
    path = tmp_path / 'both.csv'
    rows = [f'a.jpg,{",".join(f"{v:g}" for v in box)},{good}']
    path.write_text('\n'.join([f'file,x,y,w,h,{header}', *rows]) + '\n')
    (face,) = read_face_csv(path)['a.jpg']
    np.testing.assert_array_equal(face.box, box)
    np.testing.assert_allclose(face.landmarks, marks)
    rows.append(
        f'b.jpg,{",".join(f"{v:g}" for v in box)},{",".join(f"{v:g}" for v in bad.ravel())}'
    )
    path.write_text('\n'.join([f'file,x,y,w,h,{header}', *rows]) + '\n')
    message = re.escape(f'{path}:3: landmark 4 (5, 50) lies outside the box [10.0, 20.0, 30.0')
    with pytest.raises(FaceListError, match=message):
        read_face_csv(path)


def test_read_face_csv_refuses_latin1_naming_file_and_line(tmp_path):
    """Issue 19 #9: a face list saved in latin-1 is refused, saying to save it as UTF-8."""
    path = tmp_path / 'faces.csv'
    path.write_bytes(b'file,x,y,w,h\na.jpg,1,2,3,4\nRen\xe9e.jpg,1,2,3,4\n')
    with pytest.raises(FaceListError, match=f'{re.escape(str(path))}:3: not UTF-8.*as UTF-8'):
        read_face_csv(path)


def test_read_face_csv_saved_by_excel_with_a_bom_loads(tmp_path):
    """Issue 19 #9: Excel's "CSV UTF-8" (BOM, CRLF) reads as the same face list."""
    path = tmp_path / 'faces.csv'
    path.write_bytes('\ufefffile,x,y,w,h\r\nRenée.jpg,10,20,30,40\r\n'.encode())
    (face,) = read_face_csv(path)['Renée.jpg']
    np.testing.assert_array_equal(face.box, [10, 20, 30, 40])
