"""Classifier guidance against exact references.

* ``SDE.ve_equivalent`` against each SDE's own perturbation kernel.
* The guidance term against central finite differences of ``log C`` (float64).
* Guided sampling of Gaussian data ``N(m, S)`` with a classifier whose noisy log-likelihood is
  the exact one of the tilt ``exp(w . x0)``: for ``x_ve = x0 + sigma z`` it is
  ``log E[exp(w . x0) | x_ve] = w . S (S + sigma^2 I)^-1 x_ve + const``, so the guided score
  (``h`` times its gradient, plus the exact data score) is the exact score of the tilted law
  ``N(m + h S w, S)`` at every t, and every sampler must shift the mean by ``h S w``. A wrong
  time mapping (sigma of another scale, the score network's time label, a missing ``1/alpha``)
  gives another shift.
* ``h = 0`` is the unguided sampler bit for bit; one compilation for new classifier weights and
  new ``h``; the same guided samples on 1 and 8 devices and at batch sizes 4 and 8.
"""

from __future__ import annotations

import re

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import degradations
import guidance as guidance_lib
import sampling
import sde_lib
from configs import default
from models import classifiers
from models.wrappers import init_params, score_options
from tests.test_classifiers import random_variables
from tests.test_sampling import SHAPE, TinyScoreNet, make_gaussian, make_toy_sde, moment_errors
from utils.parallel import make_mesh

EPS = {'ve': 1e-5, 'vp': 1e-3, 'subvp': 1e-3, 'ecdp': 1e-3}
ECDP_SIGMA = 0.3
# The class-0 logit sits this far above class 1, so log softmax of class 1 is its logit minus
# the offset to within exp(-60): exactly linear in float32.
TILT_OFFSET = 60.0


def make_sde(name: str, n: int = 200) -> sde_lib.SDE:
    if name == 'ecdp':
        return sde_lib.MeanRevertingSDE(beta_min=0.1, beta_max=20.0, N=n, sigma=ECDP_SIGMA)
    return make_toy_sde(name, n)


# ----------------------------------------------------------------------------- time mapping


@pytest.mark.parametrize('name', ['ve', 'vp', 'subvp', 'ecdp'])
def test_ve_equivalent_is_data_plus_sigma_noise(name):
    sde, shape = make_sde(name), (64, 4, 4, 3)
    keys = jax.random.split(jax.random.key(0), 4)
    x0 = jax.random.uniform(keys[0], shape)
    cond = {'lr_up': x0 + 0.1 * jax.random.normal(keys[1], shape)}
    z = jax.random.normal(keys[2], shape)
    t = jax.random.uniform(keys[3], (shape[0],), minval=1e-3, maxval=1.0)
    mean, std = sde.marginal_prob(sde.to_state(x0, cond), t)  # the SDE's own kernel
    u = mean + sde_lib.batch_mul(std, z)
    x_ve, sigma = sde.ve_equivalent(u, t, cond)
    np.testing.assert_allclose(x_ve, x0 + sde_lib.batch_mul(sigma, z), rtol=1e-4, atol=1e-4)
    alpha = sde.mean_coeff(t)
    np.testing.assert_allclose(sigma, sde.scale * std / alpha, rtol=1e-6)
    if name == 've':  # VE is its own VE equivalent
        np.testing.assert_array_equal(x_ve, u)
        np.testing.assert_allclose(sigma, sde.sigma(t), rtol=1e-6)
    # The data-space form (x_t - (1 - alpha) offset) / alpha.
    x_t, offset = sde.from_state(u, cond), sde.offset(cond)
    expected = sde_lib.batch_mul(1.0 / alpha, x_t - sde_lib.batch_mul(1.0 - alpha, offset + 0 * u))
    np.testing.assert_allclose(x_ve, expected, rtol=1e-4, atol=1e-4)


def test_centered_data_are_mapped_to_the_unit_range():
    x, sigma = guidance_lib.to_unit_range(jnp.asarray([-1.0, 0.0, 1.0]), jnp.asarray(0.4), True)
    np.testing.assert_allclose(x, [0.0, 0.5, 1.0])
    assert float(sigma) == pytest.approx(0.2)
    x, sigma = guidance_lib.to_unit_range(jnp.asarray([0.25]), jnp.asarray(0.4), False)
    assert float(x[0]) == 0.25 and float(sigma) == pytest.approx(0.4)


# ----------------------------------------------------------------------------- gradient


def test_guidance_term_equals_finite_differences_of_log_c():
    """Two attributes (two classifiers), ECDP's frame (offset and scale), centred data."""
    shape, batch = (8, 8, 3), 3
    model = classifiers.build_classifier('small_densenet', num_layers=(1, 1))
    g = guidance_lib.Guidance(('male', 'no_beard'), (model, model), centered=True)
    sde = make_sde('ecdp')
    with jax.enable_x64(True):
        f64 = lambda tree: jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), tree)
        variables = f64(
            {
                'scale': 1.0,
                'classifiers': {
                    'male': random_variables(model, shape, 1),
                    'no_beard': random_variables(model, shape, 2),
                },
            }
        )
        keys = jax.random.split(jax.random.key(3), 3)
        u = jax.random.normal(keys[0], (batch, *shape), jnp.float64)
        cond = {
            'lr_up': jax.random.uniform(keys[1], (batch, *shape), jnp.float64, -1.0, 1.0),
            guidance_lib.ATTRIBUTES: jnp.asarray([[0, 1], [1, 1], [1, 0]]),
        }
        t = jnp.asarray([0.05, 0.3, 0.7], jnp.float64)
        log_p = jax.jit(lambda v: guidance_lib.log_prob(g, variables, sde, v, t, cond))
        grad = jax.jit(lambda v: guidance_lib.guidance_term(g, variables, sde, v, t, cond))(u)
        assert grad.dtype == jnp.float64 and np.abs(np.asarray(grad)).max() > 0
        eps = 1e-5
        for k in range(3):
            v = jax.random.normal(jax.random.fold_in(keys[2], k), u.shape, jnp.float64)
            fd = (log_p(u + eps * v) - log_p(u - eps * v)) / (2 * eps)
            analytic = jnp.sum((grad * v).reshape(batch, -1), axis=-1)
            np.testing.assert_allclose(analytic, fd, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- Gaussian tilt


class LinearTilt(nn.Module):
    """A two-class classifier with ``log C(1 | x, sigma) = w . S (S + sigma^2 I)^-1 x + c``:
    the exact noisy likelihood of the tilt ``exp(w . x0)`` for data ``N(m, S = U diag(lam) U^T)``;
    ``w`` is a parameter (an argument of the compiled sampler)."""

    U: tuple
    lam: tuple
    w_init: tuple

    @nn.compact
    def __call__(self, x, sigma, train=False):
        w = self.param('w', lambda key: jnp.asarray(self.w_init, jnp.float32))
        U, lam = jnp.asarray(self.U, jnp.float32), jnp.asarray(self.lam, jnp.float32)
        coef = ((w @ U)[None] * lam / (lam + sigma[:, None] ** 2)) @ U.T
        logit = jnp.sum(x.reshape(x.shape[0], -1) * coef, axis=-1)
        return jnp.stack([jnp.zeros_like(logit), logit - TILT_OFFSET], axis=-1)


def tilt_setup(dim: int = 4, h: float = 2.5):
    mu, U, lam = make_gaussian(dim, 0.1)
    w = np.random.default_rng(7).normal(size=dim)
    w = w / np.linalg.norm(w)
    model = LinearTilt(tuple(map(tuple, U)), tuple(lam), tuple(w))
    g = guidance_lib.Guidance(('tilt',), (model,))
    variables = {'scale': jnp.float32(h), 'classifiers': {'tilt': {'params': {'w': w}}}}
    shift = h * (U @ np.diag(lam) @ U.T) @ w
    return (mu, U, lam), g, variables, shift


def frame_score(sde, mu, U, lam):
    """The exact score of the state ``u`` for data ``x0 ~ N(mu, S)`` in the SDE's frame
    (``u0 = (x0 - offset) / scale``)."""
    U, lam = jnp.asarray(U, jnp.float32), jnp.asarray(lam, jnp.float32)

    def score_fn(u, t, cond):
        alpha, std = sampling.alpha_std(sde, t)
        offset = jnp.broadcast_to(sde.offset(cond), u.shape).reshape(u.shape[0], -1)
        mean0 = (jnp.asarray(mu, jnp.float32) - offset) / sde.scale
        diff = (u.reshape(u.shape[0], -1) - alpha[:, None] * mean0) @ U
        var = alpha[:, None] ** 2 * lam / sde.scale**2 + std[:, None] ** 2
        return ((-diff / var) @ U.T).reshape(u.shape)

    return score_fn


def guided_runner(method, sde, shape, score_fn, ts, g, **opts):
    """``run(variables, batch, cond) -> samples [batch, dim]`` in data coordinates, one jit."""
    sampler = sampling.get_sampler(method)

    @jax.jit
    def sample(variables, keys, u_T, cond):
        guided = guidance_lib.guided_score_fn(score_fn, sde, g, variables)
        u, stats = sampler(keys, guided, sde, u_T, ts, cond, **opts)
        return sde.from_state(u, cond), stats

    def run(variables, batch, cond, key=0):
        keys = sampling.per_sample_keys(jax.random.key(key), jnp.arange(batch))
        prior_keys, loop_keys = sampling.split_keys(keys)
        x, stats = sample(variables, loop_keys, sampling.prior_sample(sde, prior_keys, shape), cond)
        assert int(stats['unfinished']) == 0
        return np.asarray(x).reshape(batch, -1)

    run.jitted = sample
    return run


SAMPLER_CASES = [
    ('pc', 've', 199, dict(predictor='euler_maruyama')),
    ('pc', 'vp', 199, dict(predictor='reverse_diffusion')),
    ('pc', 'ecdp', 199, dict(predictor='euler_maruyama', corrector='ald', snr=0.16)),
    ('ode', 've', 1, dict(rtol=1e-4, atol=1e-4)),
    ('heun', 'subvp', 40, {}),
    ('dpm2m', 'vp', 40, {}),
    ('dpm2m', 'ecdp', 80, dict(eta=1.0)),
]


@pytest.mark.parametrize('method,sde_name,steps,opts', SAMPLER_CASES)
def test_guided_sampling_shifts_the_gaussian_mean_by_h_s_w(method, sde_name, steps, opts):
    (mu, U, lam), g, variables, shift = tilt_setup()
    sde, shape, batch = make_sde(sde_name), (2, 2, 1), 4000
    schedule = sampling.get_ts_logsnr if method in ('heun', 'dpm2m') else sampling.get_ts_uniform
    ts = schedule(sde, steps, EPS[sde_name])
    cond = {guidance_lib.ATTRIBUTES: jnp.ones((batch, 1), jnp.int32)}
    if sde_name == 'ecdp':  # a per-sample mean mu(y) near the data mean
        noise = np.random.default_rng(5).normal(size=(batch, 4)) * 0.1
        cond['lr_up'] = jnp.asarray((mu + noise).reshape(batch, *shape), jnp.float32)
    run = guided_runner(method, sde, shape, frame_score(sde, mu, U, lam), ts, g, **opts)
    x = run(variables, batch, cond)
    mean_err, cov_err = moment_errors(x, mu + shift, U, lam)
    print(method, sde_name, 'shift', np.round(shift, 3), 'errors (mean, cov):', mean_err, cov_err)
    assert np.abs(shift).max() > 10 * 0.06  # the test can tell a shift from none
    assert mean_err < 0.06 and cov_err < 0.15, (mean_err, cov_err)


# ----------------------------------------------------------------------------- make_sampler


@pytest.fixture(scope='module')
def tiny_guided():
    """TinyScoreNet on 8x8, a small classifier with two weight sets, conds with targets."""
    model, sde = TinyScoreNet(), sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=6)
    score_params = jax.jit(lambda key: init_params(model, key, SHAPE))(jax.random.key(0))
    classifier = classifiers.build_classifier('small_densenet', num_layers=(1, 1))
    g = guidance_lib.Guidance(('male',), (classifier,))
    weights = [random_variables(classifier, SHAPE, seed) for seed in (0, 1)]
    lr = jax.random.uniform(jax.random.key(10), (8, 4, 4, 3))
    targets = jnp.asarray([[0], [1]] * 4)
    cond = {'lr': lr, 'lr_up': degradations.upscale(lr, 2), guidance_lib.ATTRIBUTES: targets}
    cfg = default.sampling_config()
    cfg.update(method='pc', predictor='reverse_diffusion', eps=1e-3)
    cache = {}

    def build(guided, n_devices=None):
        """make_sampler, with or without guidance, on ``n_devices`` (None: no mesh), once."""
        if (guided, n_devices) not in cache:
            mesh = None if n_devices is None else make_mesh(jax.devices()[:n_devices])
            cache[guided, n_devices] = sampling.make_sampler(
                cfg,
                sde,
                model,
                score_options('scaled_score'),
                default.data_config(),
                SHAPE,
                mesh,
                guidance=g if guided else None,
            )
        return cache[guided, n_devices]

    return build, score_params, weights, cond


def _params(score_params, weights, h):
    variables = {'scale': jnp.float32(h), 'classifiers': {'male': weights}}
    return guidance_lib.sampler_params(score_params, variables)


def test_h_zero_is_unguided_bit_for_bit_and_one_compilation(tiny_guided):
    build, score_params, weights, cond = tiny_guided
    key, ids = jax.random.key(0), jnp.arange(8)
    plain, _ = build(False)(score_params, key, cond, ids)
    guided_fn = build(True)
    at_zero, _ = guided_fn(_params(score_params, weights[0], 0.0), key, cond, ids)
    np.testing.assert_array_equal(np.asarray(at_zero), np.asarray(plain))
    first, _ = guided_fn(_params(score_params, weights[0], 5.0), key, cond, ids)
    second, _ = guided_fn(_params(score_params, weights[1], 5.0), key, cond, ids)
    assert guided_fn._cache_size() == 1  # weights and h are arguments, not constants
    assert np.abs(np.asarray(first - plain)).max() > 1e-4
    assert np.abs(np.asarray(second - first)).max() > 1e-4


def test_guided_samples_same_on_1_and_8_devices_and_batch_sizes(tiny_guided):
    build, score_params, weights, cond = tiny_guided
    params, key = _params(score_params, weights[0], 5.0), jax.random.key(1)
    samples = {
        n: np.asarray(build(True, n)(params, key, cond, jnp.arange(8))[0]) for n in (8, None)
    }
    np.testing.assert_allclose(samples[8], samples[None], rtol=1e-5, atol=1e-5)
    half = jax.tree.map(lambda v: v[:4], cond)
    first4, _ = build(True)(params, key, half, jnp.arange(4))
    np.testing.assert_allclose(np.asarray(first4), samples[None][:4], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- configuration


def _guidance_config(**fields):
    cfg = default.guidance_config()
    cfg.update(fields)
    return cfg


def test_guidance_from_config_loads_each_checkpoint(tmp_path):
    assert guidance_lib.make_guidance(default.guidance_config(), centered=False) is None
    classifier = classifiers.build_classifier('small_densenet', num_layers=(1, 1))
    paths = []
    for seed in (0, 1):
        variables = jax.tree.map(np.asarray, random_variables(classifier, SHAPE, seed))
        paths.append(tmp_path / f'ckpt{seed}')
        paths[-1].write_bytes(flax.serialization.msgpack_serialize(variables))
    cfg = _guidance_config(
        attributes=('male', 'eyeglasses'),
        checkpoints=tuple(map(str, paths)),
        classifier='small_densenet',
        scale=3.0,
    )
    # The preset has 3 blocks of 3 layers, the files 2 of 1.
    with pytest.raises(ValueError, match='does not fit'):
        guidance_lib.load_variables(guidance_lib.make_guidance(cfg, True), cfg, SHAPE)
    g = guidance_lib.Guidance(('male', 'eyeglasses'), (classifier, classifier), centered=True)
    loaded = guidance_lib.load_variables(g, cfg, SHAPE)
    assert float(loaded['scale']) == 3.0
    np.testing.assert_array_equal(
        loaded['classifiers']['eyeglasses']['params']['Dense_3']['kernel'],
        random_variables(classifier, SHAPE, 1)['params']['Dense_3']['kernel'],
    )
    with pytest.raises(ValueError, match='one checkpoint per attribute'):
        guidance_lib.make_guidance(_guidance_config(attributes=('male',)), centered=False)


def test_targets_per_input_from_csv_or_one_vector(tmp_path):
    csv_path = tmp_path / 'attributes.csv'
    csv_path.write_text('file,male,eyeglasses,no_beard\na.png,1,0,1\nsub/b.png,0,1,1\n')
    cfg = _guidance_config(attributes=('no_beard', 'male'), attributes_csv=str(csv_path))
    targets = guidance_lib.input_targets(cfg, ['/data/x/sub/b.png', 'faces/a.png'])
    np.testing.assert_array_equal(targets, [[1, 0], [1, 1]])
    with pytest.raises(ValueError, match='no row for 1 input.*c.png'):
        guidance_lib.input_targets(cfg, ['a.png', 'c.png'])
    with pytest.raises(ValueError, match="no column \\['gender'\\]"):
        guidance_lib.input_targets(
            _guidance_config(attributes=('gender',), attributes_csv=str(csv_path)), ['a.png']
        )
    csv_path.write_text('file,male\na.png,2\n')
    with pytest.raises(ValueError, match=r'attributes.csv:2: .* must be 0 or 1'):
        guidance_lib.input_targets(
            _guidance_config(attributes=('male',), attributes_csv=str(csv_path)), ['a.png']
        )
    fixed = guidance_lib.input_targets(
        _guidance_config(attributes=('male',), targets=(1,)), ['p', 'q']
    )
    np.testing.assert_array_equal(fixed, [[1], [1]])
    with pytest.raises(ValueError, match='one 0/1 value per attribute'):
        guidance_lib.input_targets(_guidance_config(attributes=('male',), targets=()), ['p'])


class NanGradient(nn.Module):
    """A classifier whose log-probability has a nan gradient everywhere."""

    @nn.compact
    def __call__(self, x, sigma, train=False):
        bad = jnp.sqrt(-jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=-1) - 1.0)
        return jnp.stack([jnp.zeros_like(bad), jnp.nan_to_num(bad)], axis=-1)


def test_h_zero_stays_exact_when_the_classifier_gradient_is_nan():
    g = guidance_lib.Guidance(('bad',), (NanGradient(),))
    sde, u = make_sde('vp'), jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
    t, cond = jnp.full((3,), 0.4), {guidance_lib.ATTRIBUTES: jnp.ones((3, 1), jnp.int32)}
    score_fn = lambda u, t, cond: -u
    for h, finite in ((0.0, True), (1.0, False)):
        variables = {'scale': jnp.float32(h), 'classifiers': {'bad': {}}}
        guided = jax.jit(guidance_lib.guided_score_fn(score_fn, sde, g, variables))(u, t, cond)
        assert bool(jnp.all(jnp.isfinite(guided))) == finite
        if finite:
            np.testing.assert_array_equal(guided, -u)


# ----------------------------------------------------------------------------- target CSVs


def _csv_targets(tmp_path, data: bytes | str, sources, attributes=('male',)):
    path = tmp_path / 'attributes.csv'
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    cfg = _guidance_config(attributes=attributes, attributes_csv=str(path))
    return guidance_lib.input_targets(cfg, sources), path


def test_photo_faces_take_their_own_row_or_else_their_photos(tmp_path):
    """Issue 19 #8: a face found in a photo is the input ``<photo>#faceNN`` (sr.py); a row
    ``photo.jpg`` names every face of the photo, ``photo.jpg#faceNN`` one face, which wins."""
    text = 'file,male\ngroup.jpg,1\ngroup.jpg#face01,0\nsub/solo.png,0\nsolo.png#face00,1\n'
    sources = [
        '/in/group.jpg#face00',
        '/in/group.jpg#face01',
        '/in/group.jpg#face02',
        '/in/sub/solo.png#face00',  # Its own row (any trailing part) before its photo's.
        '/in/sub/solo.png#face01',
        '/in/group.jpg',  # A crop file of that name: the photo's row.
    ]
    targets, path = _csv_targets(tmp_path, text, sources)
    np.testing.assert_array_equal(targets[:, 0], [1, 0, 1, 1, 0, 1])
    assert guidance_lib.row_keys('/in/sub/solo.png#face01') == [
        'in/sub/solo.png#face01',
        'sub/solo.png#face01',
        'solo.png#face01',
        'in/sub/solo.png',
        'sub/solo.png',
        'solo.png',
    ]
    with pytest.raises(
        ValueError,
        match=re.escape(
            f'{path} has no row for 1 input(s), e.g. /in/other.jpg#face03: give a row with file '
            '"other.jpg#face03" (that face) or "other.jpg" (every face of the photo)'
        ),
    ):
        _csv_targets(tmp_path, text, ['/in/group.jpg#face00', '/in/other.jpg#face03'])


@pytest.mark.parametrize(
    ('data', 'message'),
    [
        (b'file,male,eyeglasses\na.png,1,0\nb.png,1\n', r':3: 2 values, but the header'),
        (b'file,male\na.png,1\nb.png,1,0\n', r':3: 3 values, but the header'),
        (b'file,male\na.png,1\nb.png,0\na.png,0\n', r":4: file 'a.png' repeats line 2"),
        (b'file,male\na.png,\n', r":2: no value in column 'male'"),
        (b'file,male\n,1\n', r":2: no value in column 'file'"),
        (b'file,male\na.png,1\nRen\xe9e.png,0\n', r':3: not UTF-8 text .*save the file as UTF-8'),
        (b'', r':1: empty'),
    ],
    ids=['short_row', 'long_row', 'duplicate', 'empty_value', 'empty_key', 'latin1', 'empty'],
)
def test_bad_attribute_csvs_are_refused_naming_file_and_line(tmp_path, data, message):
    """Issue 19 #9: each mistake is one ValueError naming the CSV and the line at fault."""
    attributes = ('male', 'eyeglasses') if b'eyeglasses' in data else ('male',)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / 'attributes.csv')) + message):
        _csv_targets(tmp_path, data, ['a.png'], attributes)


def test_attribute_csv_saved_by_excel_with_a_bom_loads(tmp_path):
    """Issue 19 #9: Excel's "CSV UTF-8" starts with a BOM; CRLF line ends, a non-ASCII name."""
    data = '\ufefffile,male\r\na.png,1\r\nRenée.png,0\r\n'.encode()
    targets, _ = _csv_targets(tmp_path, data, ['/x/a.png', '/x/Renée.png'])
    np.testing.assert_array_equal(targets, [[1], [0]])


def test_damaged_classifier_checkpoint_is_refused_naming_it(tmp_path):
    """Issue 19 #9: guidance loads classifiers through the checker that names the file."""
    cfg = _guidance_config(attributes=('male',), checkpoints=(str(tmp_path),))
    g = guidance_lib.Guidance(('male',), (classifiers.build_classifier('tiny_densenet'),))
    with pytest.raises(ValueError, match=re.escape(f'classifier checkpoint {tmp_path} is a fold')):
        guidance_lib.load_variables(g, cfg, SHAPE)
