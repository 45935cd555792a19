"""Tests for ``models``: FIR resampling against scipy, NCSN++ variants, config checking."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

import models
from models import layerspp
from models import up_or_down_sampling as updown

KERNEL = (1, 3, 3, 1)


# ----------------------------------------------------------------------------- FIR resampling


def _fir_along(x: np.ndarray, k1: np.ndarray, axis: int, up: int, down: int, start: int, n: int):
    """scipy reference along one axis: zero-insert by ``up``, full convolution, slice, decimate."""
    full = signal.upfirdn(k1, x, up=up, down=1, axis=axis)
    idx = start + down * np.arange(n)
    return np.take(full, idx, axis=axis)


def _ref_upsample(x: np.ndarray, k: tuple[int, ...]) -> np.ndarray:
    """StyleGAN2 upsample_2d (factor 2): pads (p+1)//2+1 before, p//2 after, p = len(k) - 2."""
    k1 = np.asarray(k, np.float64) / np.sum(k) * 2  # gain factor**2 split over two axes
    pad0 = (len(k) - 1) // 2 + 1
    for axis in (1, 2):
        x = _fir_along(x, k1, axis, 2, 1, len(k) - 1 - pad0, 2 * x.shape[axis])
    return x


def _ref_downsample(x: np.ndarray, k: tuple[int, ...]) -> np.ndarray:
    """StyleGAN2 downsample_2d (factor 2): pads (p+1)//2 before, p = len(k) - 2."""
    k1 = np.asarray(k, np.float64) / np.sum(k)
    pad0 = (len(k) - 1) // 2
    for axis in (1, 2):
        x = _fir_along(x, k1, axis, 1, 2, len(k) - 1 - pad0, x.shape[axis] // 2)
    return x


def _ref_conv_same(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """SAME cross-correlation of NHWC ``x`` with an odd HWIO kernel ``w`` (scipy)."""
    out = np.zeros((*x.shape[:3], w.shape[3]))
    for n in range(x.shape[0]):
        for i in range(w.shape[2]):
            for o in range(w.shape[3]):
                out[n, :, :, o] += signal.correlate2d(x[n, :, :, i], w[:, :, i, o], mode='same')
    return out


@pytest.fixture(scope='module')
def image() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 8, 10, 3)).astype(np.float32)


@pytest.mark.parametrize('k', [KERNEL, (1, 2, 1), (1, 1)])
def test_fir_resampling_matches_scipy(image: np.ndarray, k: tuple[int, ...]) -> None:
    up = np.asarray(updown.upsample_2d(jnp.asarray(image), k))
    down = np.asarray(updown.downsample_2d(jnp.asarray(image), k))
    assert up.shape == (2, 16, 20, 3) and down.shape == (2, 4, 5, 3)
    np.testing.assert_allclose(up, _ref_upsample(image, k), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(down, _ref_downsample(image, k), rtol=1e-5, atol=1e-5)


def test_fir_box_kernel_is_nearest_and_average_pool(image: np.ndarray) -> None:
    x = jnp.asarray(image)
    nearest = np.repeat(np.repeat(image, 2, axis=1), 2, axis=2)
    pooled = image.reshape(2, 4, 2, 5, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(updown.upsample_2d(x, (1, 1)), nearest, atol=1e-6)
    np.testing.assert_allclose(updown.naive_upsample_2d(x), nearest, atol=1e-6)
    np.testing.assert_allclose(updown.downsample_2d(x, (1, 1)), pooled, atol=1e-6)
    np.testing.assert_allclose(updown.naive_downsample_2d(x), pooled, atol=1e-6)


def test_fir_resampling_is_centred(image: np.ndarray) -> None:
    """With a symmetric kernel, flipping the image flips the result (no half-pixel shift)."""
    x = jnp.asarray(image)
    for fn in (updown.upsample_2d, updown.downsample_2d):
        flipped = fn(x[:, ::-1, ::-1], KERNEL)
        np.testing.assert_allclose(flipped, fn(x, KERNEL)[:, ::-1, ::-1], atol=1e-5)


def test_fused_conv_resampling_matches_separate_ops(image: np.ndarray) -> None:
    """Fused ops pad once: they equal the separate ops on a zero-extended image, cropped."""
    w = np.random.default_rng(1).normal(size=(3, 3, 3, 4)).astype(np.float32)
    x = jnp.asarray(image)
    fused_up = updown.upsample_conv_2d(x, jnp.asarray(w), KERNEL)
    padded = np.pad(image, ((0, 0), (2, 2), (2, 2), (0, 0)))
    ref_up = _ref_conv_same(_ref_upsample(padded, KERNEL), w)[:, 4:-4, 4:-4]
    np.testing.assert_allclose(fused_up, ref_up, rtol=1e-4, atol=1e-4)
    fused_down = updown.conv_downsample_2d(x, jnp.asarray(w), KERNEL)
    padded = np.pad(image, ((0, 0), (4, 4), (4, 4), (0, 0)))
    ref_down = _ref_downsample(_ref_conv_same(padded, w), KERNEL)[:, 2:-2, 2:-2]
    np.testing.assert_allclose(fused_down, ref_down, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- model configs

PAPER_CONFIG = dict(
    nf=128,
    ch_mult=(1, 1, 2, 2, 2, 2, 2),
    num_res_blocks=2,
    attn_resolutions=(16,),
    fir=True,
    resblock_type='biggan',
    progressive='none',
    progressive_input='input_skip',
    progressive_combine='sum',
    skip_rescale=True,
    embedding_type='fourier',
    init_scale=0.0,
    dropout=0.0,
)


def _param_shapes(model: nn.Module, size: int, channels: int) -> dict:
    """Param shapes without allocating or compiling anything."""
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t)['params']


def _count(tree: dict) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def test_paper_config_has_about_65m_parameters() -> None:
    model = models.get_model('ncsnpp')(**PAPER_CONFIG)
    n = _count(_param_shapes(model, 128, 6))
    print(f'SDE-SR NCSN++ (128x128, 6 -> 3 channels): {n:,} parameters')
    assert 60_000_000 < n < 70_000_000


def test_unknown_model_option_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r'config\.model\.num_res_block is not an option'):
        models.get_model('ncsnpp')(nf=16, num_res_block=1)
    with pytest.raises(ValueError, match=r'config\.model\.scale_by_sigma .* ddpmpp'):
        models.build_model('ddpmpp', scale_by_sigma=False)
    with pytest.raises(ValueError, match='progressive_input'):
        models.build_model('ncsnpp', progressive_input='input-skip')
    with pytest.raises(KeyError, match='ncsnpp'):
        models.get_model('ncsnp')


def test_registry_presets() -> None:
    assert {'ncsnpp', 'ddpmpp'} <= set(models.MODELS.names())
    ddpmpp = models.build_model('ddpmpp', ch_mult=[1, 2])  # lists from a ConfigDict are fine
    assert ddpmpp.ch_mult == (1, 2)
    assert (ddpmpp.fir, ddpmpp.embedding_type, ddpmpp.num_res_blocks) == (False, 'positional', 4)
    assert 'dropout' in models.model_options('ddpmpp')
    assert 'parent' not in models.model_options('ddpmpp')


# ----------------------------------------------------------------------------- tiny models

TINY = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
# fourier embeds log(sigma) (VE); positional embeds 999 * t (VP).
TIMES = {'fourier': (0.05, 20.0), 'positional': (3.0, 800.0)}
VARIANTS = {
    'biggan-fir-fourier': dict(dropout=0.2),
    'biggan-outskip-inskip-cat': dict(progressive='output_skip', progressive_input='input_skip',
                                      progressive_combine='cat'),
    'biggan-residual-residual': dict(progressive='residual', progressive_input='residual'),
    'ddpm-nofir-positional': dict(resblock_type='ddpm', fir=False, embedding_type='positional',
                                  progressive='output_skip', progressive_input='residual'),
    'ddpm-fir-residual-inskip': dict(resblock_type='ddpm', progressive='residual',
                                     progressive_input='input_skip'),
    'ddpmpp-preset': dict(name='ddpmpp'),
}  # fmt: skip
KEY = jax.random.PRNGKey(7)


def _tiny_model(variant: str) -> nn.Module:
    kwargs = {**TINY, **VARIANTS[variant]}
    return models.get_model(kwargs.pop('name', 'ncsnpp'))(**kwargs)


def _inputs(embedding_type: str) -> tuple[jax.Array, jax.Array]:
    """Two identical images with different times: outputs must differ between them."""
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 16, 16, 6))
    return jnp.concatenate([x, x]), jnp.asarray(TIMES[embedding_type], jnp.float32)


def _random_params(model: nn.Module) -> dict:
    """Random O(1)-scale params of the right shapes, without compiling ``model.init``.

    (Compiling init takes ~4x longer than compiling apply on CPU; the real initialiser is
    checked once in ``test_real_init``. Random weights also avoid the zero-initialised output
    layers, which would hide whether the output depends on time.)
    """
    x, t = _inputs(model.embedding_type)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t)['params']
    rng = np.random.default_rng(0)

    def fill(path: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if len(leaf.shape) >= 2:  # kernels: unit-variance outputs
            return jnp.asarray(noise / np.sqrt(np.prod(leaf.shape[:-1])))
        if path[-1].key == 'scale':  # GroupNorm
            return jnp.asarray(1 + 0.1 * noise)
        return jnp.asarray(0.1 * noise)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope='module')
def fourier_model() -> tuple[nn.Module, dict]:
    """The default (BigGAN, FIR, Fourier) tiny model with dropout, and random params."""
    model = _tiny_model('biggan-fir-fourier')
    return model, _random_params(model)


@functools.partial(jax.jit, static_argnames=('model', 'train'))
def _apply(model: nn.Module, params: dict, x: jax.Array, t: jax.Array, train: bool, key):
    return model.apply({'params': params}, x, t, train=train, rngs={'dropout': key})


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_tiny_model_shape_finite_and_time_dependent(variant: str) -> None:
    model = _tiny_model(variant)
    x, t = _inputs(model.embedding_type)
    out = _apply(model, _random_params(model), x, t, False, KEY)
    assert out.shape == (2, 16, 16, 3) and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
    assert float(jnp.std(out)) > 1e-2
    diff = float(jnp.max(jnp.abs(out[0] - out[1])))
    assert diff > 1e-3 * float(jnp.max(jnp.abs(out))), 'output ignores time_label'


def test_real_init() -> None:
    """score_sde init: Fourier W ~ N(0, fourier_scale^2); init_scale=0 zeroes the output."""
    model = _tiny_model('biggan-fir-fourier')
    x, t = _inputs('fourier')
    params = jax.jit(model.init)(jax.random.key(0, impl='rbg'), x, t)['params']  # rbg: fast
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t)['params']
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes)
    assert 4 < float(jnp.std(params['GaussianFourierProjection_0']['W'])) < 40
    assert float(jnp.max(jnp.abs(params['Dense_0']['kernel']))) > 0.01
    out = _apply(model, params, x, t, False, KEY)
    assert out.shape == (2, 16, 16, 3) and float(jnp.max(jnp.abs(out))) < 1e-3


def test_fourier_projection_is_frozen() -> None:
    layer = layerspp.GaussianFourierProjection(embedding_size=8, scale=16.0)
    sigma = jnp.asarray([0.1, 3.0])
    params = layer.init(jax.random.PRNGKey(0), sigma)
    grads = jax.grad(lambda p: jnp.sum(layer.apply(p, sigma) ** 2))(params)
    assert not np.any(grads['params']['W'])
    assert layer.apply(params, sigma).shape == (2, 16)


def test_dropout_only_in_training(fourier_model: tuple[nn.Module, dict]) -> None:
    model, params = fourier_model
    x, t = _inputs('fourier')
    key2 = jax.random.PRNGKey(8)
    train1 = _apply(model, params, x, t, True, KEY)
    train2 = _apply(model, params, x, t, True, key2)
    assert not np.allclose(train1, train2)
    np.testing.assert_array_equal(train1, _apply(model, params, x, t, True, KEY))
    eval1 = _apply(model, params, x, t, False, KEY)
    np.testing.assert_array_equal(eval1, _apply(model, params, x, t, False, key2))
    assert not np.allclose(eval1, train1)


def test_bfloat16_compute_keeps_float32_params_and_output(
    fourier_model: tuple[nn.Module, dict],
) -> None:
    model, params = fourier_model
    bf16 = model.clone(dtype=jnp.bfloat16)
    x, t = _inputs('fourier')
    from_config = models.build_model('ncsnpp', **TINY, dtype='bfloat16')  # a config string
    bf16_shapes = jax.eval_shape(from_config.init, jax.random.PRNGKey(0), x, t)['params']
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(bf16_shapes)} == {np.dtype('float32')}
    ref = _apply(model, params, x, t, False, KEY)
    out = _apply(bf16, params, x, t, False, KEY)
    assert out.dtype == jnp.float32
    rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    print(f'bfloat16 vs float32 relative error: {rel:.4f}')
    assert rel < 0.05, rel


# ----------------------------------------------------------------------------- GroupNorm


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_group_norm_matches_flax(dtype: jnp.dtype) -> None:
    """The CPU-friendly GroupNorm equals Flax's (same parameter names, shapes and values)."""
    from models.layers import GroupNorm

    rng = np.random.default_rng(0)
    x = jnp.asarray(3.0 + 2.0 * rng.standard_normal((2, 8, 6, 24)), jnp.float32)
    ours, theirs = GroupNorm(6, dtype=dtype), nn.GroupNorm(6, epsilon=1e-6, dtype=dtype)
    params = theirs.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == jax.tree.map(
        jnp.shape, params
    )
    params = {
        'params': {
            'scale': jnp.asarray(rng.standard_normal(24), jnp.float32),
            'bias': jnp.asarray(rng.standard_normal(24), jnp.float32),
        }
    }
    got, want = ours.apply(params, x), theirs.apply(params, x)
    assert got.dtype == want.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 3e-2
    np.testing.assert_allclose(np.float32(got), np.float32(want), atol=tol, rtol=tol)
    with pytest.raises(ValueError, match='groups'):
        GroupNorm(5).init(jax.random.PRNGKey(0), x)
