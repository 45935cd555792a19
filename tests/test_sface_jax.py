"""models/sface.py: the JAX SFace equals onnxruntime's, its warp equals faces.align's, its
gradient equals finite differences, the identity loss separates people, bad inputs are refused.
"""

from __future__ import annotations

import csv
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from faces.align import (
    ALIGNED_SIZE,
    alignment_from_faces,
    canonical_landmarks,
    warp_affine,
    warp_face,
)
from tests.conftest import require_face_model

#: Real faces compared with onnxruntime (the issue asks for at least 100).
N_FACES = 100
#: The training crop size of the shipped models (64x64 HR).
TRAIN_SIZE = 64
#: JAX vs onnxruntime embeddings (the issue's bound; measured here: min 0.9999999).
MIN_COSINE = 0.999
#: Float32 rounding of two bilinear warps of [0, 1] images (measured: 1.2e-7 at 64 and 128;
#: 1.9e-6 at 256, where jax.image.resize's antialiased shrink stands in for Pillow's).
WARP_ATOL = 1e-6
PREFILTERED_WARP_ATOL = 1e-5
#: Finite differences in float64. The network is piecewise linear (PReLU): a step crosses
#: kinks along a random direction unless tiny (at 1e-4 the difference quotient is still 10 %
#: off), so the step is 1e-8 on float64 (rounding ~1e-8 relative). Measured: float64 gradient
#: 1e-7 relative, the float32 gradient training uses 4e-4.
FD_STEP = 1e-8
FD_RTOL_FLOAT64 = 1e-4
FD_RTOL_FLOAT32 = 1e-2
N_DIRECTIONS = 3
#: 1 - cos of identical images (float32 rounding) and the least 1 - cos expected between two
#: different people at 64x64 (measured on 100 test faces: min 0.57, mean 0.91 over all pairs
#: of different identities; same identity mean 0.46).
SAME_IMAGE_ATOL = 1e-6
MIN_OTHER_IDENTITY_LOSS = 0.3


@pytest.fixture(scope='module')
def sface():
    require_face_model('sface')
    from models import sface

    return sface


@pytest.fixture(scope='module')
def params(sface):
    return sface.load_sface_params()


@pytest.fixture(scope='module')
def faces(celeba_id128: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first ``N_FACES`` test-split faces (file order) as float32 [0, 1] 128x128 RGB, and
    their identities."""
    with open(celeba_id128 / 'faces.csv') as f:
        rows = [r for r in csv.DictReader(f) if r['split'] == 'test'][:N_FACES]
    if len(rows) < N_FACES:
        pytest.skip(f'{celeba_id128}/faces.csv has fewer than {N_FACES} test faces')
    images = [np.asarray(Image.open(celeba_id128 / r['file']).convert('RGB')) for r in rows]
    identities = np.array([int(r['identity']) for r in rows])
    return np.stack(images).astype(np.float32) / 255.0, identities


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Antialiased resize to ``size``-square, clipped to [0, 1] (the crop geometry at ``size``)."""
    shape = (len(images), size, size, images.shape[-1])
    return np.clip(np.asarray(jax.image.resize(images, shape, 'linear', antialias=True)), 0, 1)


def test_params_are_read_from_the_graph(sface, params):
    """Every Conv, BatchNormalization, PRelu and Gemm of the ONNX graph is one layer, and the
    loaded params tree is exactly what the Flax module declares."""
    import onnx

    from faces.onnx_models import model_path

    model = sface.sface_model()
    counts = {}
    for node in onnx.load(str(model_path('sface'))).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    ops = [layer.op for layer in model.layers]
    for onnx_op, op in [('Conv', 'conv'), ('BatchNormalization', 'batchnorm'), ('PRelu', 'prelu')]:
        assert ops.count(op) == counts[onnx_op], (onnx_op, ops.count(op), counts[onnx_op])
    assert ops.count('dense') == counts['Gemm'] == 1
    dummy = jnp.zeros((1, ALIGNED_SIZE, ALIGNED_SIZE, 3))
    declared = jax.eval_shape(model.init, jax.random.key(0), dummy)
    shapes = lambda tree: jax.tree.map(lambda a: (a.shape, str(a.dtype)), tree)
    assert shapes(params) == shapes(declared)


def test_unsupported_op_is_refused_naming_it(sface):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node('Relu', ['data'], ['out'])],
        'tiny',
        [helper.make_tensor_value_info('data', TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info('out', TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    with pytest.raises(ValueError, match='out: ONNX op Relu is not supported'):
        sface.layers_from_graph(graph)


@pytest.mark.parametrize(
    'kernel, strides, padding',
    [
        ((3, 3), (1, 1), ((1, 1), (1, 1))),
        ((3, 3), (2, 2), ((1, 1), (1, 1))),
        ((3, 2), (2, 1), ((0, 1), (2, 0))),
    ],
)
def test_depthwise_conv_equals_grouped_conv_and_its_gradients(sface, kernel, strides, padding):
    """The shifted-sum depthwise convolution and its custom VJP against lax's grouped one."""
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 9, 8, 4))
    k = jax.random.normal(kk, (*kernel, 4))
    ref = lambda x, k: jax.lax.conv_general_dilated(
        x,
        k[:, :, None],
        strides,
        padding,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=4,
    )
    ours = lambda x, k: sface.depthwise_conv(x, k, strides, padding)
    g = jax.random.normal(kg, ref(x, k).shape)
    value_and_vjp = jax.jit(lambda f, x, k: (f(x, k), jax.vjp(f, x, k)[1](g)), static_argnums=0)
    (got, got_vjp), (want, want_vjp) = value_and_vjp(ours, x, k), value_and_vjp(ref, x, k)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_vjp, want_vjp, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_embeddings_equal_onnxruntime_on_real_faces(sface, params, faces):
    """100 real faces, aligned once on the HR (YuNet + ArcFace template), the same crops to
    both networks: cosine >= 0.999 for each."""
    from evaluation.face import SFaceEmbedder

    embedder = SFaceEmbedder(num_threads=1)
    hr = faces[0]
    crops = np.clip(embedder.apply_alignment(hr, embedder.align(hr)), 0.0, 1.0)
    want = embedder.embed(crops)
    embed = jax.jit(sface.sface_embed)
    got = np.concatenate([embed(params, crops[i : i + 20]) for i in range(0, len(crops), 20)])
    norms = np.linalg.norm(got, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    cos = np.sum(got * want, axis=1)
    msg = f'cosine over {len(cos)} faces: min {cos.min():.7f}, mean {cos.mean():.7f}'
    assert len(cos) >= N_FACES and cos.min() >= MIN_COSINE, msg


@pytest.mark.parametrize('size', [TRAIN_SIZE, 128, 256])
def test_align_canonical_equals_faces_align_warp(sface, faces, size):
    """The JAX warp equals faces.align's bilinear warp of the same fixed transform: the
    ``warp_affine`` of ``FaceEmbedder.align``'s fallback at 64 and 128, and ``warp_face``
    (antialiased first) at 256, where the warp shrinks."""
    images = _resize(faces[0][:4], size)
    got = np.asarray(sface.align_canonical(images))
    matrix = sface.canonical_matrix(size)
    fallback = alignment_from_faces([None], canonical_landmarks(size, size)).matrices[0]
    np.testing.assert_allclose(matrix, fallback, atol=1e-12)
    assert got.shape == (4, ALIGNED_SIZE, ALIGNED_SIZE, 3)
    if size == 256:
        want = np.stack([warp_face(image, matrix, ALIGNED_SIZE) for image in images])
        np.testing.assert_allclose(got, want, atol=PREFILTERED_WARP_ATOL)
    else:
        want = warp_affine(images, np.repeat(matrix[None], len(images), 0))
        np.testing.assert_allclose(got, want, atol=WARP_ATOL)


def _pair(faces: tuple[np.ndarray, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 64x64 faces and, for each, the next face in the list of another identity."""
    images, ids = faces
    other = [next(j for j in range(i + 1, len(ids)) if ids[j] != ids[i]) for i in range(n)]
    return _resize(images[:n], TRAIN_SIZE), _resize(images[other], TRAIN_SIZE)


def test_identity_loss_is_zero_for_the_same_face_and_large_for_another(sface, params, faces):
    x, y = _pair(faces, 8)
    same = np.asarray(sface.identity_loss(params, x, x))
    other = np.asarray(sface.identity_loss(params, x, y))
    np.testing.assert_allclose(same, 0.0, atol=SAME_IMAGE_ATOL)
    assert other.min() > MIN_OTHER_IDENTITY_LOSS, f'1 - cos to another identity: {other}'


def test_gradient_equals_finite_differences(sface, params, faces):
    """d/dx (1 - cos(f(x), f(y))) along random directions, against central differences in
    float64; the float32 gradient (training's) within ``FD_RTOL_FLOAT32``."""
    x, y = _pair(faces, 1)
    x = 0.02 + 0.96 * x  # Inside (0, 1): any direction stays a valid image.
    loss = lambda p, x, y: sface.identity_loss(p, x, y)[0]
    grad32 = np.asarray(jax.jit(jax.grad(loss, argnums=1))(params, x, y), np.float64)
    directions = np.random.default_rng(0).normal(size=(N_DIRECTIONS, *x.shape))
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x64, y64 = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
        value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=1))
        grad64 = np.asarray(value_and_grad(p64, x64, y64)[1])
        value = lambda x: float(value_and_grad(p64, x, y64)[0])
        fd = np.array([value(x64 + FD_STEP * v) - value(x64 - FD_STEP * v) for v in directions])
    fd /= 2 * FD_STEP
    along = lambda grad: np.tensordot(directions, grad, axes=grad.ndim)
    rel64, rel32 = (np.abs(along(grad) - fd) / np.abs(fd) for grad in (grad64, grad32))
    msg = f'finite differences {fd}: relative error float64 {rel64}, float32 {rel32}'
    assert rel64.max() < FD_RTOL_FLOAT64 and rel32.max() < FD_RTOL_FLOAT32, msg


@pytest.mark.parametrize(
    'shape, value, match',
    [
        ((64, 64, 3), 0.5, r'got shape \(64, 64, 3\)'),
        ((1, 64, 64, 4), 0.5, r'got shape \(1, 64, 64, 4\)'),
        ((1, 64, 48, 3), 0.5, r'got shape \(1, 64, 48, 3\)'),
        ((1, 8, 8, 3), 0.5, r'S >= 16\), got shape \(1, 8, 8, 3\)'),
        ((1, 64, 64, 3), 1.5, r'expected values in \[0, 1\], got \[1.5, 1.5\]'),
        ((1, 64, 64, 3), -0.1, r'expected values in \[0, 1\], got \[-0.1, -0.1\]'),
        ((1, 64, 64, 3), np.nan, r'expected values in \[0, 1\], got .* and 12288 NaN'),
    ],
)
def test_bad_images_are_refused_naming_the_shape_or_range(sface, params, shape, value, match):
    images = np.full(shape, value, np.float32)
    with pytest.raises(ValueError, match='align_canonical: .*' + match):
        sface.align_canonical(images)
    with pytest.raises(ValueError, match='identity_embed: .*' + match):
        sface.identity_embed(params, images)


def test_other_bad_inputs_are_refused(sface, params):
    with pytest.raises(ValueError, match='expected float images in \\[0, 1\\], got dtype uint8'):
        sface.align_canonical(np.zeros((1, 64, 64, 3), np.uint8))
    crops = r'sface_embed: expected \[B, 112, 112, 3\] aligned crops, got shape \(1, 64, 64, 3\)$'
    with pytest.raises(ValueError, match=crops):
        sface.sface_embed(params, np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r'SR shape \(1, 64, 64, 3\) != HR shape \(2, 64, 64, 3\)'):
        sface.identity_loss(params, np.zeros((1, 64, 64, 3)), np.zeros((2, 64, 64, 3)))
    with pytest.raises(ValueError, match=r'identity_embed: .* got shape \(1, 64, 48, 3\)'):
        jax.jit(sface.identity_embed)(params, jnp.zeros((1, 64, 48, 3)))  # Shapes: also in jit.


def test_jit_compiles_once_per_shape(sface, params):
    loss = jax.jit(sface.identity_loss)
    rng = np.random.default_rng(0)
    batch = lambda n: rng.uniform(size=(n, TRAIN_SIZE, TRAIN_SIZE, 3)).astype(np.float32)
    values = [loss(params, batch(2), batch(2)) for _ in range(3)]
    assert loss._cache_size() == 1
    assert values[0].shape == (2,) and not np.allclose(values[0], values[1])
    loss(params, batch(3), batch(3))
    assert loss._cache_size() == 2
