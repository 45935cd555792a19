"""ECDP: the mean-reverting SDE, the SDE frame, the hybrid parametrization and its loss, the
residual statistics, and every sampler on Gaussian data with a condition-dependent mean."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

import degradations
import experiment
import losses
import residual_stats
import runs
import sampling
import sde_lib
from configs import default
from models.utils import ScoreNetwork
from models.wrappers import init_params, make_predict_fn, score_options

SIGMA = 0.3


def ecdp_sde(n: int = 1000) -> sde_lib.MeanRevertingSDE:
    return sde_lib.MeanRevertingSDE(beta_min=0.1, beta_max=20.0, N=n, sigma=SIGMA)


def _abar(t):
    return np.exp(-(0.1 * t + 0.5 * (20.0 - 0.1) * t**2))


# ----------------------------------------------------------------------------- the SDE


def test_proposition_1_mean_and_variance_are_kept():
    """x0 with mean mu(y) and variance sigma^2 (not Gaussian: uniform) keeps both at every t,
    simulated with Euler-Maruyama of the SDE written in data coordinates (``data_sde``)."""
    sde, n, steps = ecdp_sde(), 20000, 400
    rng = np.random.default_rng(0)
    mu = jnp.asarray(rng.normal(size=(n, 2)), jnp.float32)  # A different mu(y) per sample.
    half_width = SIGMA * np.sqrt(3.0)  # Uniform(-w, w) has variance w^2 / 3.
    x = mu + jnp.asarray(rng.uniform(-half_width, half_width, (n, 2)), jnp.float32)
    cond, dt = {'lr_up': mu}, 1.0 / steps

    def step(x, inputs):
        i, key = inputs
        t = jnp.full((n,), i * dt)
        drift, diffusion = sde.data_sde(x, t, cond)
        z = jax.random.normal(key, x.shape)
        x = x + drift * dt + sde_lib.batch_mul(diffusion * np.sqrt(dt), z)
        return x, x[:, 0] - mu[:, 0]

    keys = jax.random.split(jax.random.key(1), steps)
    _, residuals = jax.jit(lambda x: jax.lax.scan(step, x, (jnp.arange(steps), keys)))(x)
    residuals = np.asarray(residuals)
    for i in (39, 199, 399):  # t = 0.1, 0.5, 1.0
        assert abs(residuals[i].mean()) < 0.01, i
        assert abs(residuals[i].var() / SIGMA**2 - 1.0) < 0.04, (i, residuals[i].var())


def test_marginals_in_data_coordinates():
    """From a fixed x0: mean sqrt(abar)(x0 - mu) + mu, variance (1 - abar) sigma^2."""
    sde = ecdp_sde()
    t = jnp.array([0.05, 0.3, 0.9])
    x0, mu = jnp.full((3, 4), 0.7), jnp.full((3, 4), -0.2)
    cond = {'lr_up': mu}
    mean_u, std_u = sde.marginal_prob(sde.to_state(x0, cond), t)
    abar = _abar(np.asarray(t))
    np.testing.assert_allclose(
        sde.from_state(mean_u, cond)[:, 0], np.sqrt(abar) * 0.9 - 0.2, rtol=1e-5
    )
    np.testing.assert_allclose((sde.scale * std_u) ** 2, (1 - abar) * SIGMA**2, rtol=1e-5)
    prior = jax.vmap(lambda k: sde.prior_sampling(k, (4,)))(
        jax.random.split(jax.random.key(0), 8000)
    )
    x_T = np.asarray(sde.from_state(prior, {'lr_up': jnp.full((8000, 4), 1.5)}))
    assert abs(x_T.mean() - 1.5) < 0.01 and abs(x_T.std() / SIGMA - 1) < 0.02


def test_sigma_comes_from_the_stats_and_is_required(tmp_path):
    cfg = ml_collections.ConfigDict(dict(name='ecdp', beta_min=0.1, beta_max=20.0, num_scales=10))
    sde = sde_lib.make_sde(cfg, lambda: {'residual_var': 0.04})
    assert isinstance(sde, sde_lib.MeanRevertingSDE) and abs(sde.scale - 0.2) < 1e-9
    with pytest.raises(ValueError, match='--mode stats'):
        sde_lib.make_sde(cfg)
    config = default.get_config()
    config.unlock()
    config.sde.name = 'ecdp'
    config.model.out_channels = 6
    config.score.parametrization = 'hybrid'
    with pytest.raises(FileNotFoundError, match='residual_stats.json'):
        experiment.build(config, jax.devices()[:1], tmp_path)


# ----------------------------------------------------------------------------- residual stats


def _face_folder(root, n=6, size=16):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / f'{i:02d}.png')
    return root


def test_residual_stats_match_numpy_and_refuse_other_data(tmp_path):
    folder = _face_folder(tmp_path / 'faces')
    data = default.data_config()
    data.update(path=str(folder), image_size=16, downscale=4, cache_mb=0)
    stats = residual_stats.compute(data, batch_size=4)
    hr = np.stack([np.asarray(Image.open(p), np.float64) / 255 for p in sorted(folder.glob('*'))])
    lr = degradations.downscale(jnp.asarray(hr, jnp.float32), 4, 'bilinear')
    lr_up = np.clip(np.asarray(degradations.upscale(lr, 4, 'bicubic'), np.float64), 0, 1)
    residual = hr - lr_up
    assert stats['num_images'] == 6
    np.testing.assert_allclose(stats['residual_var'], residual.var(), rtol=1e-4)
    np.testing.assert_allclose(stats['residual_mean'], residual.mean(), atol=1e-5)
    config = default.get_config()
    config.data = data
    run = runs.Run.open(tmp_path / 'run')
    path = run.write_stats(config, stats)
    assert path == tmp_path / 'run' / runs.STATS_FILE
    assert run.read_stats(config)['residual_var'] == stats['residual_var']
    config.data.downscale = 2
    with pytest.raises(ValueError, match=r'data\.downscale'):
        run.read_stats(config)
    config.data.downscale = 4
    # Statistics of clean LR are not those of randomly degraded LR; a record written before
    # the degradation fields existed reads as clean (runs.MIGRATIONS).
    config.data.update(random_degradation=True, down_kernels=('area',))
    with pytest.raises(ValueError, match=r'data\.random_degradation.*data\.down_kernels'):
        run.read_stats(config)
    config.data.update(random_degradation=False, down_kernels=())
    record = json.loads(path.read_text())
    del record['data']['random_degradation'], record['data']['down_kernels']
    path.write_text(json.dumps(record))
    assert run.read_stats(config)['residual_var'] == stats['residual_var']
    path.write_text('{"residual_var": 0.1}')
    with pytest.raises(ValueError, match='not a residual statistics file'):
        run.read_stats(config)
    json.loads(path.read_text())  # (the file itself is still what was written)


# ----------------------------------------------------------------------------- hybrid heads


class HeadsNet(ScoreNetwork):
    """Outputs fixed eps and u0 images (the 'eps' head first), chosen by the test."""

    eps: jax.Array
    u0: jax.Array
    heads: tuple[str, ...] = ('eps', 'x0')

    @nn.compact
    def __call__(self, x, label, train=False, lr=None):
        b = self.param('b', nn.initializers.zeros, ())
        outs = {'eps': self.eps, 'x0': self.u0}
        return jnp.concatenate([outs[h] for h in self.heads], axis=-1) + b


@pytest.mark.parametrize('c', [1.0, 2.5])
def test_hybrid_score_is_exact_when_both_heads_are(c):
    """u_t = alpha u0 + std eps for a known (u0, eps): exact heads give the exact score of
    the point mass at u0, -(u_t - alpha u0) / std^2 = -eps / std, for any lambda; so do the
    eps-only and x0-only parametrizations. Imperfect heads mix by lambda = abar^c."""
    sde, shape = ecdp_sde(), (3, 4, 4, 3)
    t = jnp.array([0.02, 0.4, 0.95])
    u0 = jax.random.normal(jax.random.key(0), shape)
    eps = jax.random.normal(jax.random.key(1), shape)
    alpha, std = sde.mean_coeff(t), sde.marginal_std(t)
    u_t = sde_lib.batch_mul(alpha, u0) + sde_lib.batch_mul(std, eps)
    cond = {'lr_up': jnp.zeros(shape)}
    exact = -np.asarray(eps) / np.asarray(std)[:, None, None, None]
    params = {'b': jnp.zeros(())}
    for name, heads in (('hybrid', ('eps', 'x0')), ('eps', ('eps',)), ('x0', ('x0',))):
        out = make_predict_fn(
            HeadsNet(eps, u0, heads), params, sde, score_options(name, hybrid_c=c)
        )(u_t, t, cond)
        np.testing.assert_allclose(out['score'], exact, rtol=2e-3, atol=2e-3)
        assert set(out) == {'score', *heads}
    wrong_eps = eps + 1.0
    out = make_predict_fn(
        HeadsNet(wrong_eps, u0), params, sde, score_options('hybrid', hybrid_c=c)
    )(u_t, t, cond)
    lam = _abar(np.asarray(t)) ** c
    expected = exact - lam[:, None, None, None] / np.asarray(std)[:, None, None, None]
    np.testing.assert_allclose(out['score'], expected, rtol=2e-3, atol=2e-3)


class TwoHeadConv(ScoreNetwork):
    @nn.compact
    def __call__(self, x, label, train=False, lr=None):
        h = nn.Conv(8, (3, 3))(x) + nn.Dense(8)(label[:, None] / 1000.0)[:, None, None, :]
        return nn.Conv(6, (3, 3))(nn.silu(h))


def test_heads_loss_is_minimal_at_the_exact_heads_and_reaches_both():
    sde = ecdp_sde()
    hr = jax.random.uniform(jax.random.key(0), (16, 4, 4, 3))
    batch = {'hr': hr, 'lr_up': hr + 0.05}  # A non-zero residual mean: u0 = -0.05 / sigma.
    tcfg = ml_collections.ConfigDict(dict(reduce_mean=True, likelihood_weighting=False, eps=1e-5))
    u0 = sde.to_state(batch['hr'], batch)
    key = jax.random.key(3)
    # The noise the loss draws for this key (losses._perturb), to build exact heads.
    _, _, z, _ = losses._perturb(sde, batch, jax.random.split(key)[0], tcfg.eps)

    def loss_for(eps, x0):
        def model(params, k):
            return make_predict_fn(HeadsNet(eps, x0), params, sde, score_options('hybrid'))

        return float(losses.LOSSES.get('heads')(sde, model, tcfg)({'b': jnp.zeros(())}, batch, key))

    assert loss_for(z, u0) < 1e-10
    assert abs(loss_for(z + 0.1, u0) - 0.01) < 1e-6 and abs(loss_for(z, u0 - 0.2) - 0.04) < 1e-6
    # Gradients reach the weights of both heads.
    model = TwoHeadConv()
    params = init_params(model, jax.random.key(1), (4, 4, 3))
    predict = lambda p, k: make_predict_fn(model, p, sde, score_options('hybrid'))
    grads = jax.grad(losses.LOSSES.get('heads')(sde, predict, tcfg))(params, batch, key)
    kernel = np.asarray(grads['Conv_1']['kernel'])
    assert np.abs(kernel[..., :3]).max() > 0 and np.abs(kernel[..., 3:]).max() > 0


def test_out_channels_must_match_the_heads():
    config = default.get_config()
    config.unlock()
    config.score.parametrization = 'hybrid'
    with pytest.raises(ValueError, match='out_channels=3.*set it to 6'):
        experiment.build_model(config)
    config.data.num_channels, config.score.parametrization = 1, 'scaled_score'
    with pytest.raises(ValueError, match='set it to 1'):
        experiment.build_model(config)


# --------------------------------------------------------- samplers with a condition-dependent mean


class ExactConditionalScore(ScoreNetwork):
    """The exact score of ``u_t`` for data ``x | y ~ N(A lr_up + B, Sigma)`` (in the SDE's frame,
    ``u = (x - offset) / scale``), read from the network input [scaled u, lr_up]; 'score'
    parametrization. Offset and scale are given explicitly (not taken from the SDE)."""

    sde: sde_lib.SDE
    a: float
    b: float
    cov: np.ndarray  # [d, d]
    uses_offset: bool
    scale: float

    @nn.compact
    def __call__(self, inp, label, train=False, lr=None):
        _ = self.param('unused', nn.initializers.zeros, ())
        n, shape = inp.shape[0], inp.shape[1:-1] + (1,)
        u, lr_up = inp[..., :1].reshape(n, -1), inp[..., 1:].reshape(n, -1)
        t = self._time(label)
        alpha, std = self.sde.mean_coeff(t), self.sde.marginal_std(t)
        offset = lr_up if self.uses_offset else 0.0
        mean_u = (self.a * lr_up + self.b - offset) / self.scale
        cov_u = jnp.asarray(self.cov / self.scale**2, jnp.float32)
        d = cov_u.shape[0]
        cov_t = alpha[:, None, None] ** 2 * cov_u + std[:, None, None] ** 2 * jnp.eye(d)
        diff = u - alpha[:, None] * mean_u
        return -jnp.linalg.solve(cov_t, diff[..., None])[..., 0].reshape((n, *shape))

    def _time(self, label):
        if isinstance(self.sde, sde_lib.VESDE):
            sde = self.sde
            return jnp.log(label / sde.sigma_min) / np.log(sde.sigma_max / sde.sigma_min)
        return label / 999.0


def _toy(name):
    return {
        've': lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0, N=200),
        'vp': lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=200),
        'subvp': lambda: sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0, N=200),
        'ecdp': lambda: ecdp_sde(200),
    }[name]()


SAMPLING = {
    'pc': dict(method='pc', predictor='euler_maruyama', corrector='none', num_steps=200),
    'pc_rd': dict(method='pc', predictor='reverse_diffusion', corrector='ald', num_steps=200),
    'ode': dict(method='ode', rtol=1e-4, atol=1e-4),
    'heun': dict(method='heun', num_steps=30, schedule='karras'),
    'dpm2m': dict(method='dpm2m', num_steps=30, schedule='logsnr'),
    'dpm2m_sde': dict(method='dpm2m', num_steps=60, schedule='logsnr', eta=1.0),
}


@pytest.mark.parametrize('sde_name', ['ecdp', 've', 'vp', 'subvp'])
@pytest.mark.parametrize('method', sorted(SAMPLING))
def test_samplers_reproduce_conditional_gaussian_with_offset(sde_name, method):
    """Data ``x | y ~ N(0.6 lr_up + 0.4, Sigma)`` in 4 dimensions, ``lr_up`` random per sample:
    through ``make_sampler`` (the frame's edges included), every sampler recovers the
    conditional mean's coefficients and the covariance, for ECDP's frame and the others'."""
    sde, n = _toy(sde_name), 4000
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    cov = q @ np.diag(np.linspace(0.02, 0.08, 4)) @ q.T
    model = ExactConditionalScore(sde, 0.6, 0.4, cov, sde_name == 'ecdp', sde.scale)
    cfg = default.sampling_config()
    cfg.update(eps=1e-3, **SAMPLING[method])
    sample_fn = sampling.make_sampler(
        cfg, sde, model, score_options('score'), default.data_config(), (2, 2, 1)
    )
    lr_up = jnp.asarray(rng.normal(size=(n, 2, 2, 1)), jnp.float32)
    x, stats = sample_fn(
        {'unused': jnp.zeros(())}, jax.random.key(0), {'lr_up': lr_up}, jnp.arange(n)
    )
    assert int(stats['unfinished']) == 0
    x, y = np.asarray(x).reshape(n, 4), np.asarray(lr_up).reshape(n, 4)
    residual = x - (0.6 * y + 0.4)
    assert np.abs(residual.mean(0)).max() < 0.02, residual.mean(0)
    slope = ((x - x.mean(0)) * (y - y.mean(0))).mean(0) / y.var(0)
    assert np.abs(slope - 0.6).max() < 0.03, slope
    tol = 0.2 if method in ('pc', 'pc_rd', 'dpm2m_sde') else 0.12
    rel = np.abs(np.cov(residual.T) - cov) / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert rel.max() < tol, rel.max()


@pytest.mark.parametrize('method', ['pc', 'dpm2m'])
def test_ilvr_projection_in_the_ecdp_frame(method):
    """With an offset and a scale, the projection targets the LR image in data coordinates."""
    sde, n = ecdp_sde(100), 256
    rng = np.random.default_rng(1)
    cov = np.eye(16) * 0.05
    model = ExactConditionalScore(sde, 0.0, 0.5, cov, True, sde.scale)  # Ignores the LR.
    cfg = default.sampling_config()
    cfg.update(eps=1e-3, projection='ilvr', **{**SAMPLING[method], 'num_steps': 100})
    if method == 'pc':
        cfg.corrector = 'none'
    data = default.data_config()
    sample_fn = sampling.make_sampler(cfg, sde, model, score_options('score'), data, (4, 4, 1))
    lr = jnp.asarray(rng.uniform(0.2, 0.8, size=(n, 2, 2, 1)), jnp.float32)
    lr_up = degradations.upscale(lr, 2) + 0.3  # An offset unrelated to the LR image.
    x, _ = sample_fn(
        {'unused': jnp.zeros(())}, jax.random.key(0), {'lr': lr, 'lr_up': lr_up}, jnp.arange(n)
    )
    error = float(jnp.sqrt(jnp.mean((degradations.downscale(x, 2) - lr) ** 2)))
    unprojected = float(jnp.sqrt(jnp.mean((0.5 - lr) ** 2)))
    assert error < 0.1 * unprojected, (error, unprojected)


@pytest.mark.parametrize('sde_name', ['ecdp', 've'])
@pytest.mark.parametrize('method', ['heun', 'dpm2m'])
def test_few_step_error_shrinks_with_steps_with_offset(sde_name, method):
    """Through ``make_sampler`` with a condition-dependent mean: the deterministic solvers
    converge to the exact probability-flow map of the conditional Gaussian (second order)."""
    sde, n = _toy(sde_name), 64
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    lam = np.linspace(0.02, 0.08, 4)
    model = ExactConditionalScore(
        sde, 0.6, 0.4, q @ np.diag(lam) @ q.T, sde_name == 'ecdp', sde.scale
    )
    lr_up = jnp.asarray(rng.normal(size=(n, 2, 2, 1)), jnp.float32)
    cond, ids, key = {'lr_up': lr_up}, jnp.arange(n), jax.random.key(4)
    u_T = sampling.prior_sample(
        sde, sampling.split_keys(sampling.per_sample_keys(key, ids))[0], (2, 2, 1)
    )
    # The exact map in the state's frame, along the eigenvectors of the state's covariance.
    eps, offset = 1e-3, np.asarray(lr_up).reshape(n, 4) if sde_name == 'ecdp' else 0.0
    mean_u = (0.6 * np.asarray(lr_up).reshape(n, 4) + 0.4 - offset) / sde.scale
    lam_u = lam / sde.scale**2
    (s0, s1) = sampling.sigma_of_t(sde, [sde.T, eps])
    a0, a1 = (float(v) for v in sampling.alpha_std(sde, jnp.asarray([sde.T, eps]))[0])
    z = (np.asarray(u_T, np.float64).reshape(n, 4) / a0 - mean_u) @ q
    exact_u = a1 * (mean_u + (z * np.sqrt((lam_u + s1**2) / (lam_u + s0**2))) @ q.T)
    exact = offset + sde.scale * exact_u
    errors = []
    for steps in (5, 20, 80):
        cfg = default.sampling_config()
        schedule = 'karras' if method == 'heun' else 'logsnr'
        cfg.update(method=method, num_steps=steps, schedule=schedule, eps=eps, noise_removal=False)
        fn = sampling.make_sampler(
            cfg, sde, model, score_options('score'), default.data_config(), (2, 2, 1)
        )
        x, _ = fn({'unused': jnp.zeros(())}, key, cond, ids)
        errors.append(float(np.sqrt(np.mean((np.asarray(x).reshape(n, 4) - exact) ** 2))))
    print(method, sde_name, 'RMS error vs the exact flow at 5/20/80 steps:', errors)
    assert errors[1] < errors[0] and errors[2] < errors[1] / 8, errors
    assert errors[2] < 5e-3, errors


@pytest.mark.parametrize('method', ['ode', 'dpm2m'])
def test_temperature_scales_the_deviation_from_the_conditional_mean(method):
    """Gaussian data: the probability-flow map is affine in the prior draw, so a prior scaled by
    tau gives samples whose deviation from the conditional mean is scaled by tau (covariance
    tau^2 Sigma), for ECDP's frame."""
    sde, n, tau = _toy('ecdp'), 2000, 0.5
    rng = np.random.default_rng(2)
    cov = np.diag([0.02, 0.04, 0.06, 0.08])
    model = ExactConditionalScore(sde, 0.6, 0.4, cov, True, sde.scale)
    lr_up = jnp.asarray(rng.normal(size=(n, 2, 2, 1)), jnp.float32)

    def sample(temperature):
        cfg = default.sampling_config()
        cfg.update(eps=1e-3, temperature=temperature, **SAMPLING[method])
        fn = sampling.make_sampler(
            cfg, sde, model, score_options('score'), default.data_config(), (2, 2, 1)
        )
        x, _ = fn({'unused': jnp.zeros(())}, jax.random.key(0), {'lr_up': lr_up}, jnp.arange(n))
        return np.asarray(x).reshape(n, 4)

    cold, plain = sample(tau), sample(1.0)
    mean = 0.6 * np.asarray(lr_up).reshape(n, 4) + 0.4
    np.testing.assert_allclose(cold - mean, tau * (plain - mean), atol=0.02)
    rel = np.abs(np.diag(np.cov((cold - mean).T)) / (tau**2 * np.diag(cov)) - 1)
    assert rel.max() < 0.12, rel
