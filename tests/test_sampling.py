"""Samplers against Gaussian data, whose perturbed scores and probability-flow map are exact.

For ``x_0 ~ N(mu, U diag(lam) U^T)`` the marginal at time t is
``N(alpha mu, U diag(alpha^2 lam + std^2) U^T)``, so the score is linear and closed-form, and the
probability-flow ODE in ``x_hat = x / alpha`` maps ``x_hat - mu`` along each eigen-direction by
``sqrt((lam + sigma_1^2) / (lam + sigma_0^2))``: deterministic solvers can be compared with the
exact endpoint, stochastic ones with the data moments.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import degradations
import sampling
import sde_lib
from configs import default, presets
from models.utils import ScoreNetwork
from models.wrappers import init_params, score_options
from tests.test_ecdp import ExactConditionalScore
from utils.parallel import batch_sharding, make_mesh, replicate

N_LEVELS = 200
EPS = {'ve': 1e-5, 'vp': 1e-3, 'subvp': 1e-3}


def make_toy_sde(name: str, n: int = N_LEVELS) -> sde_lib.SDE:
    if name == 've':
        return sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0, N=n)
    if name == 'vp':
        return sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=n)
    return sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0, N=n)


def make_gaussian(dim: int, lam_min: float, seed: int = 0):
    """Mean, eigenvectors and eigenvalues of a random Gaussian in ``dim`` dimensions."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return rng.normal(size=dim) * 0.7, U, np.linspace(lam_min, 1.0, dim)


def gaussian_score(sde, mu, U, lam, mean_fn=None):
    """Exact score of ``p_t``; ``mean_fn(cond)`` [B, d] replaces ``mu`` for conditional data."""
    U, lam = jnp.asarray(U, jnp.float32), jnp.asarray(lam, jnp.float32)

    def score_fn(x, t, cond):
        alpha, std = sampling.alpha_std(sde, t)
        mean = jnp.asarray(mu, jnp.float32) if mean_fn is None else mean_fn(cond)
        diff = (x.reshape(x.shape[0], -1) - alpha[:, None] * mean) @ U
        var = alpha[:, None] ** 2 * lam + std[:, None] ** 2
        return ((-diff / var) @ U.T).reshape(x.shape)

    return score_fn


def exact_flow(sde, x_T, t0, t1, mu, U, lam, noise_removal):
    """The exact probability-flow map from ``t0`` to ``t1`` (then Tweedie's denoiser)."""
    (s0, s1), (a0, a1) = sampling.sigma_of_t(sde, [t0, t1]), _alphas(sde, [t0, t1])
    z = (np.asarray(x_T, np.float64).reshape(x_T.shape[0], -1) / a0 - mu) @ U
    z = z * np.sqrt((lam + s1**2) / (lam + s0**2))
    if noise_removal:
        return mu + (z * lam / (lam + s1**2)) @ U.T
    return a1 * (mu + z @ U.T)


def _alphas(sde, ts):
    return np.asarray(sampling.alpha_std(sde, jnp.asarray(ts, jnp.float32))[0], np.float64)


def make_runner(name, sde, shape, score_fn, ts, **opts):
    """``run(batch, cond, key, ids) -> (x_T, samples, nfe)``: one jitted sampler, many calls."""
    sampler = sampling.get_sampler(name)
    fn = jax.jit(lambda k, x, c: sampler(k, score_fn, sde, x, ts, c, **opts))

    def run(batch, cond=None, key=0, ids=None):
        ids = jnp.arange(batch) if ids is None else jnp.asarray(ids)
        keys = sampling.per_sample_keys(jax.random.key(key), ids)
        prior_keys, loop_keys = sampling.split_keys(keys)
        x_T = sampling.prior_sample(sde, prior_keys, shape)
        x, stats = fn(loop_keys, x_T, {} if cond is None else cond)
        assert int(stats['unfinished']) == 0
        return np.asarray(x_T), np.asarray(x), int(stats['nfe'])

    return run


def run_sampler(name, sde, shape, score_fn, ts, batch, cond=None, **opts):
    """``(x_T, samples, nfe)`` of a registered sampler on a batch of ``batch`` samples."""
    return make_runner(name, sde, shape, score_fn, ts, **opts)(batch, cond)


def moment_errors(x, mu, U, lam):
    """Max error of the mean, and of the covariance in the eigenbasis relative to ``lam``."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    cov = U.T @ np.cov(flat.T) @ U
    rel = (cov - np.diag(lam)) / np.sqrt(np.outer(lam, lam))
    return np.abs(flat.mean(0) - mu).max(), np.abs(rel).max()


# ----------------------------------------------------------------------------- PC sampler


@pytest.mark.parametrize(
    'sde_name,predictor',
    [
        ('ve', 'euler_maruyama'),
        ('ve', 'reverse_diffusion'),
        ('ve', 'ancestral_sampling'),
        ('vp', 'euler_maruyama'),
        ('vp', 'reverse_diffusion'),
        ('vp', 'ancestral_sampling'),
        ('subvp', 'euler_maruyama'),
        ('subvp', 'reverse_diffusion'),
    ],
)
def test_pc_predictors_reproduce_gaussian(sde_name, predictor):
    sde, (mu, U, lam) = make_toy_sde(sde_name), make_gaussian(4, 0.1)
    ts = sampling.get_ts_uniform(sde, N_LEVELS - 1, EPS[sde_name])
    _, x, nfe = run_sampler(
        'pc', sde, (2, 2, 1), gaussian_score(sde, mu, U, lam), ts, 4000, predictor=predictor
    )
    mean_err, cov_err = moment_errors(x, mu, U, lam)
    assert nfe == N_LEVELS
    assert mean_err < 0.06 and cov_err < 0.12, (mean_err, cov_err)


@pytest.mark.parametrize(
    'sde_name,predictor,corrector,n_steps_each',
    [
        ('ve', 'euler_maruyama', 'langevin', 1),
        ('vp', 'reverse_diffusion', 'langevin', 1),
        ('vp', 'none', 'langevin', 2),
        ('ve', 'reverse_diffusion', 'ald', 1),
    ],
)
def test_pc_with_corrector_reproduces_gaussian(sde_name, predictor, corrector, n_steps_each):
    # Langevin's snr rule uses per-sample norms, which fluctuate in few dimensions: use 64.
    sde, (mu, U, lam) = make_toy_sde(sde_name), make_gaussian(64, 0.5)
    ts = sampling.get_ts_uniform(sde, N_LEVELS - 1, EPS[sde_name])
    opts = dict(predictor=predictor, corrector=corrector, n_steps_each=n_steps_each, snr=0.16)
    score_fn = gaussian_score(sde, mu, U, lam)
    _, x, nfe = run_sampler('pc', sde, (8, 8, 1), score_fn, ts, 2000, **opts)
    mean_err, cov_err = moment_errors(x, mu, U, lam)
    assert nfe == N_LEVELS * ((predictor != 'none') + n_steps_each)
    assert mean_err < 0.1 and cov_err < 0.25, (mean_err, cov_err)


@pytest.mark.parametrize('corrector', ['langevin', 'ald'])
def test_corrector_leaves_the_marginal_invariant(corrector):
    # Diagonal Gaussian in 1024 dimensions: the per-sample snr step size of 'langevin' tilts the
    # stationary law by O(1 / dim) (the step depends on the state), negligible here as for images.
    sde, batch, dim = make_toy_sde('vp'), 500, 1024
    lam = np.linspace(0.5, 1.0, dim)
    t = jnp.full((batch,), 0.3)
    alpha, std = (float(v[0]) for v in sampling.alpha_std(sde, t))
    var = alpha**2 * lam + std**2
    z = np.random.default_rng(1).normal(size=(batch, dim)) * np.sqrt(var)
    x = jnp.asarray((alpha + z).reshape(batch, 32, 32, 1), jnp.float32)
    keys = sampling.per_sample_keys(jax.random.key(3), jnp.arange(batch))
    correct = sampling.CORRECTORS.get(corrector)
    score_fn = lambda x, t, cond: -(x - alpha) / jnp.asarray(var.reshape(32, 32, 1), jnp.float32)
    x, _ = jax.jit(lambda x: correct(keys, score_fn, sde, x, t, {}, 0.05, 60))(x)
    ratio = (np.asarray(x).reshape(batch, -1) - alpha).var(0) / var
    assert abs(ratio.mean() - 1.0) < 0.015 and np.abs(ratio - 1.0).max() < 0.35, ratio.mean()


def test_ancestral_sampling_refuses_sub_vp():
    sde = make_toy_sde('subvp')
    with pytest.raises(ValueError, match='no ancestral step'):
        sampling.predict_ancestral(
            None, lambda x, t, c: x, sde, jnp.zeros((2, 4)), jnp.ones(2), -0.1, {}
        )


# ----------------------------------------------------------------------------- deterministic


def _few_step_ts(sde_name, sde, method, steps):
    schedule = sampling.get_ts_karras if method == 'heun' else sampling.get_ts_logsnr
    return schedule(sde, steps, EPS[sde_name])


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
@pytest.mark.parametrize('method', ['ode', 'heun', 'dpm2m'])
def test_deterministic_samplers_reproduce_gaussian(method, sde_name):
    sde, (mu, U, lam) = make_toy_sde(sde_name), make_gaussian(4, 0.1)
    ts = (
        np.array([sde.T, EPS[sde_name]])
        if method == 'ode'
        else _few_step_ts(sde_name, sde, method, 40)
    )
    score_fn = gaussian_score(sde, mu, U, lam)
    x_T, x, _ = run_sampler(method, sde, (2, 2, 1), score_fn, ts, 4000)
    mean_err, cov_err = moment_errors(x, mu, U, lam)
    assert mean_err < 0.06 and cov_err < 0.12, (mean_err, cov_err)
    exact = exact_flow(sde, x_T, sde.T, EPS[sde_name], mu, U, lam, noise_removal=True)
    assert np.sqrt(np.mean((x.reshape(exact.shape) - exact) ** 2)) < 0.01


@pytest.mark.parametrize(
    'method,sde_name', [('heun', 've'), ('heun', 'subvp'), ('dpm2m', 've'), ('dpm2m', 'vp')]
)
def test_few_step_error_shrinks_with_steps(method, sde_name):
    sde, (mu, U, lam) = make_toy_sde(sde_name), make_gaussian(4, 0.1)
    errors = []
    for steps in (5, 20, 80):
        ts = _few_step_ts(sde_name, sde, method, steps)
        x_T, x, nfe = run_sampler(
            method, sde, (2, 2, 1), gaussian_score(sde, mu, U, lam), ts, 256, noise_removal=False
        )
        exact = exact_flow(sde, x_T, sde.T, EPS[sde_name], mu, U, lam, noise_removal=False)
        errors.append(np.sqrt(np.mean((x.reshape(exact.shape) - exact) ** 2)))
        assert nfe == (2 if method == 'heun' else 1) * steps
    print(method, sde_name, 'RMS error vs exact flow at 5/20/80 steps:', errors)
    # Second order: 4x the steps should give ~16x less error once in the asymptotic regime.
    assert errors[1] < errors[0] and errors[2] < errors[1] / 8, errors
    assert errors[2] < 5e-3, errors


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_sde_dpm_solver_reproduces_gaussian_better_with_steps(sde_name):
    """SDE-DPM-Solver++(2M) (dpm2m, eta=1) samples the data distribution, not the ODE's map:
    its covariance error shrinks with steps (measured 0.18-0.36 at 5, 0.02-0.04 at 80)."""
    sde, (mu, U, lam) = make_toy_sde(sde_name), make_gaussian(4, 0.1)
    score_fn = gaussian_score(sde, mu, U, lam)
    errors = {}
    for steps in (5, 80):
        ts = sampling.get_ts_logsnr(sde, steps, EPS[sde_name])
        run = make_runner('dpm2m', sde, (2, 2, 1), score_fn, ts, eta=1.0)
        x_T, x, nfe = run(8000)
        assert nfe == steps + 1
        errors[steps] = moment_errors(x, mu, U, lam)
    print(sde_name, 'SDE-DPM-Solver++(2M) (mean, cov) errors at 5 / 80 steps:', errors)
    assert errors[80][0] < 0.05 and errors[80][1] < 0.08, errors
    assert errors[5][1] > 2 * errors[80][1], errors
    # Stochastic, yet a function of the key: same key, same samples; the noise matters.
    _, again, _ = run(8000)
    _, other, _ = run(8000, key=1)
    _, ode, _ = make_runner('dpm2m', sde, (2, 2, 1), score_fn, ts)(8000)
    np.testing.assert_array_equal(again, x)  # Same compiled program, same input: bit-equal.
    assert not np.allclose(other, x) and not np.allclose(ode, x)


def test_ode_is_deterministic_and_tighter_tolerance_costs_more():
    sde, (mu, U, lam) = make_toy_sde('ve'), make_gaussian(4, 0.1)
    score_fn, ts = gaussian_score(sde, mu, U, lam), np.array([sde.T, EPS['ve']])
    prior_keys = sampling.per_sample_keys(jax.random.key(0), jnp.arange(256))
    x_T = sampling.prior_sample(sde, prior_keys, (2, 2, 1))
    exact = exact_flow(sde, x_T, sde.T, EPS['ve'], mu, U, lam, noise_removal=True)
    results = {}
    for tol in (1e-3, 1e-5):
        ode = jax.jit(
            functools.partial(
                sampling.sample_ode,
                score_fn=score_fn,
                sde=sde,
                x_T=x_T,
                ts=ts,
                cond={},
                rtol=tol,
                atol=tol,
            )
        )
        x, stats = ode(sampling.per_sample_keys(jax.random.key(1), jnp.arange(256)))
        results[tol] = (np.abs(np.asarray(x).reshape(exact.shape) - exact).max(), int(stats['nfe']))
    print('ODE (max error, NFE) at rtol=atol=1e-3 / 1e-5:', results)
    assert results[1e-5][1] > results[1e-3][1]
    assert results[1e-5][0] < results[1e-3][0]
    assert 20 < results[1e-3][1] < results[1e-5][1] < 1000
    # Deterministic: the sampler ignores its keys (the same program on the same x_T: bit-equal).
    again, _ = ode(sampling.per_sample_keys(jax.random.key(2), jnp.arange(256)))
    np.testing.assert_array_equal(np.asarray(x), np.asarray(again))


# ----------------------------------------------------------------------------- conditioning


@pytest.mark.parametrize(
    'method,sde_name,steps', [('pc', 'vp', N_LEVELS), ('dpm2m', 've', 30), ('ode', 've', 1)]
)
def test_conditional_sampling_recovers_conditional_mean(method, sde_name, steps):
    # x | y ~ N(A y, S): the score of p_t(x | y) is exact with cond['y'].
    sde, (_, U, lam) = make_toy_sde(sde_name), make_gaussian(4, 0.05)
    lam = lam * 0.3
    A = np.random.default_rng(2).normal(size=(4, 2))
    y = np.random.default_rng(3).normal(size=(4000, 2)).astype(np.float32)
    mean_fn = lambda cond: cond['y'] @ jnp.asarray(A.T, jnp.float32)
    score_fn = gaussian_score(sde, None, U, lam, mean_fn)
    n = steps - 1 if method == 'pc' else steps
    ts = sampling.get_ts_uniform(sde, n, EPS[sde_name])
    _, x, _ = run_sampler(method, sde, (4,), score_fn, ts, 4000, cond={'y': jnp.asarray(y)})
    residual = x - y @ A.T
    coef = np.linalg.lstsq(y, x, rcond=None)[0].T
    assert np.abs(residual.mean(0)).max() < 0.03
    assert np.abs(coef - A).max() < 0.05, coef - A
    assert np.abs(np.cov(residual.T) - U @ np.diag(lam) @ U.T).max() < 0.04


@pytest.mark.parametrize('method', ['pc', 'heun', 'dpm2m'])
def test_ilvr_projection_brings_samples_closer_to_the_lr_input(method):
    # An unconditional model: only the projection can tie samples to the LR image.
    sde, (mu, U, lam) = make_toy_sde('ve', n=50), make_gaussian(16, 0.1)
    lr = jax.random.normal(jax.random.key(5), (256, 2, 2, 1)) * 0.5 + 1.0
    n = 49 if method == 'pc' else 20
    ts = sampling.get_ts_uniform(sde, n, EPS['ve'])
    project = sampling.make_projection('ilvr', default.data_config())
    run = make_runner(
        method, sde, (4, 4, 1), gaussian_score(sde, mu, U, lam), ts, projection=project
    )
    _, x, _ = run(256, cond={sampling.LR_STATE: lr})
    # Without projection the sampler draws from the data law (tested above), unrelated to lr.
    data = mu + np.random.default_rng(0).normal(size=(256, 16)) * np.sqrt(lam) @ U.T
    errors = {}
    for name, v in (('none', data), ('ilvr', x)):
        down = degradations.downscale(jnp.asarray(v, jnp.float32).reshape(256, 4, 4, 1), 2)
        errors[name] = float(jnp.sqrt(jnp.mean((down - lr) ** 2)))
    print(method, 'RMS LR error without / with ILVR:', errors)
    assert errors['ilvr'] < 0.05 * errors['none'], errors


# ----------------------------------------------------------------------------- RNG, schedules


@pytest.mark.parametrize('method', ['pc', 'ode', 'heun', 'dpm2m'])
def test_samples_depend_only_on_key_and_sample_id(method):
    sde, (mu, U, lam) = make_toy_sde('vp', n=20), make_gaussian(4, 0.1)
    score_fn, shape = gaussian_score(sde, mu, U, lam), (2, 2, 1)
    ts = sampling.get_ts_uniform(sde, 19 if method == 'pc' else 10, 1e-3)
    opts = dict(corrector='langevin') if method == 'pc' else {}
    run = make_runner(method, sde, shape, score_fn, ts, **opts)
    _, x, _ = run(8)
    # The same ids in another order and among other samples (the batch size is covered with
    # make_sampler below).
    _, y, _ = run(8, ids=[7, 2, 0, 5, 20, 21, 22, 23])
    np.testing.assert_allclose(y[:4], x[[7, 2, 0, 5]], rtol=1e-5, atol=1e-5)
    _, other, _ = run(8, key=1)
    assert np.abs(other - x).max() > 1e-2


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_schedules(sde_name):
    sde, eps = make_toy_sde(sde_name), EPS[sde_name]
    for name in sampling.SCHEDULES.names():
        ts = sampling.SCHEDULES.get(name)(sde, 10, eps)
        assert ts.shape == (11,) and ts[0] == sde.T and ts[-1] == np.float32(eps)
        assert np.all(np.diff(ts) < 0), name
    sigmas = sampling.sigma_of_t(sde, sampling.get_ts_karras(sde, 10, eps, rho=7.0))
    root = sigmas ** (1 / 7)
    np.testing.assert_allclose(np.diff(root), np.diff(root).mean(), rtol=1e-3)
    log_sigmas = np.log(sampling.sigma_of_t(sde, sampling.get_ts_logsnr(sde, 10, eps)))
    np.testing.assert_allclose(np.diff(log_sigmas), np.diff(log_sigmas).mean(), rtol=1e-3)
    if sde_name == 've':  # geometric sigmas: uniform in log-SNR is uniform in t
        np.testing.assert_allclose(
            sampling.get_ts_logsnr(sde, 10, eps), sampling.get_ts_uniform(sde, 10, eps), atol=1e-5
        )


def test_config_presets():
    cfg = default.sampling_config()
    assert cfg.num_steps is None and cfg.method in sampling.SAMPLERS
    for variant in ('ve', 'vp', 'subvp', 'vecs'):
        cfg = presets.sdesr_sampling_config(variant)
        sde = make_toy_sde({'vecs': 've'}.get(variant, variant), n=2000)
        assert sampling.time_steps(cfg, sde).shape == (2000,)
        opts = sampling.sampler_options(sampling.get_sampler('pc'), cfg, default.data_config())
        assert set(opts) >= {'predictor'}
    assert presets.sdesr_sampling_config('vecs').n_steps_each == 2
    with pytest.raises(ValueError, match='num_steps'):  # VP's discrete predictor needs N levels
        sampling.time_steps(presets.sdesr_sampling_config('vp'), make_toy_sde('vp', 1000))
    bad = default.sampling_config()
    bad.update(method='ode', projection='ilvr')
    with pytest.raises(ValueError, match='projection'):
        sampling.sampler_options(sampling.get_sampler('ode'), bad, default.data_config())
    incomplete = default.sampling_config()
    incomplete.unlock()
    del incomplete['eta']
    with pytest.raises(ValueError, match='sampling.eta'):  # never the sampler's default, silently
        sampling.sampler_options(sampling.get_sampler('dpm2m'), incomplete, default.data_config())


# ----------------------------------------------------------------------------- make_sampler


class TinyScoreNet(ScoreNetwork):
    """Two convolutions and a time embedding; HR (3) + upsampled LR (3) channels in, 3 out."""

    @nn.compact
    def __call__(self, x, time_label, train=False, lr=None):
        emb = nn.Dense(8)(jnp.log(time_label)[:, None])
        h = nn.Conv(8, (3, 3))(x) + emb[:, None, None, :]
        return nn.Conv(3, (3, 3))(nn.silu(h)) * 0.1


SHAPE = (8, 8, 3)


@pytest.fixture(scope='module')
def tiny():
    """A tiny model, a VE SDE, two parameter sets, two conds of 8 samples, a sample_fn cache."""
    model, sde = TinyScoreNet(), sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=6)
    params = jax.jit(lambda key: init_params(model, key, SHAPE))(jax.random.key(0))
    noise = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
    params = [params, jax.tree.map(jnp.add, params, noise)]
    lr = [jax.random.uniform(jax.random.key(10 + i), (8, 4, 4, 3), minval=-1.0) for i in range(2)]
    conds = [{'lr': v, 'lr_up': degradations.upscale(v, 2)} for v in lr]
    return model, sde, params, conds, {}


CONFIGS = {
    'pc': dict(method='pc', predictor='reverse_diffusion', corrector='langevin', projection='ilvr'),
    'ode': dict(method='ode', rtol=1e-3, atol=1e-3),
}


def tiny_sample_fn(tiny, name, n_devices=None):
    """make_sampler for CONFIGS[name] on a mesh of ``n_devices`` (None: no mesh), built once."""
    model, sde, _, _, cache = tiny
    if (name, n_devices) not in cache:
        cfg = default.sampling_config()
        cfg.update(eps=1e-3, **CONFIGS[name])
        mesh = None if n_devices is None else make_mesh(jax.devices()[:n_devices])
        cache[name, n_devices] = sampling.make_sampler(
            cfg, sde, model, score_options('scaled_score'), default.data_config(), SHAPE, mesh
        )
    return cache[name, n_devices]


def test_make_sampler_compiles_once_per_shape_and_config(tiny):
    _, sde, params, conds, _ = tiny
    sample_fn, mesh = tiny_sample_fn(tiny, 'pc', 8), make_mesh()
    # Inputs placed as a caller would (utils.parallel); then the call itself transfers nothing.
    params = [replicate(p, mesh) for p in params]
    keys = [replicate(jax.random.key(i), mesh) for i in range(2)]
    split = lambda tree: jax.device_put(tree, batch_sharding(mesh))
    conds, ids = [split(c) for c in conds], [split(jnp.arange(8)), split(jnp.arange(8, 16))]
    with jax.transfer_guard('disallow'):
        x0, info = sample_fn(params[0], keys[0], conds[0], ids[0])
        x1, _ = sample_fn(params[1], keys[1], conds[1], ids[1])
    assert sample_fn._cache_size() == 1
    assert x0.shape == (8, *SHAPE) and int(info['nfe']) == 2 * sde.N
    assert np.all(np.isfinite(np.asarray(x0))) and np.abs(np.asarray(x0 - x1)).max() > 1e-3


# Samples across device counts and batch sizes agree to float rounding, not bit for bit: XLA's
# CPU code may round differently per batch shape or processor (measured here: pc 5.7e-6 on
# values up to 50, ode 0). README: "the same SR on 1 or 8 devices and at any batch size".
ACROSS_SHAPES_RTOL = ACROSS_SHAPES_ATOL = 1e-5


@pytest.mark.parametrize('name', ['pc', 'ode'])
def test_make_sampler_same_samples_on_8_and_1_devices_and_batch_sizes(tiny, name):
    _, _, params, conds, _ = tiny
    samples = {}
    for n_devices in (8, 1):
        sample_fn = tiny_sample_fn(tiny, name, n_devices)
        samples[n_devices], info = sample_fn(params[0], jax.random.key(0), conds[0], jnp.arange(8))
        assert int(info['nfe']) > 0
    tol = dict(rtol=ACROSS_SHAPES_RTOL, atol=ACROSS_SHAPES_ATOL)
    np.testing.assert_allclose(samples[8], samples[1], **tol)
    if name == 'pc':  # (the ODE's batch independence is tested on the Gaussian above)
        half = jax.tree.map(lambda v: v[:4], conds[0])
        first4, _ = tiny_sample_fn(tiny, name)(params[0], jax.random.key(0), half, jnp.arange(4))
        np.testing.assert_allclose(first4, samples[8][:4], **tol)


def test_ilvr_uses_the_configured_lr_kernels():
    """With nearest-neighbour kernels down(up(y)) = y, so one projection makes the output's LR
    equal the target exactly; the default antialiased kernels do not (so the kernels used are
    the configured ones, not degradations' defaults)."""
    u = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    target = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
    nearest = default.data_config()
    nearest.update(down_kernel='nearest', up_kernel='nearest', antialias=False)
    errors = {}
    for name, data in (('nearest', nearest), ('default', default.data_config())):
        projected = sampling.make_projection('ilvr', data)(u, target)
        down = degradations.downscale(projected, 2, data.down_kernel, data.antialias)
        errors[name] = float(jnp.abs(down - target).max())
    assert errors['nearest'] < 1e-6 < errors['default'], errors


# ----------------------------------------------------------------------------- temperature
# The temperature scales the prior draw. Samplers that inject fresh noise at every step replace
# that draw's noise, so there it would do nothing (issue 19 #5): they refuse it. The
# deterministic ones map the prior draw to the sample, so there it acts.

STOCHASTIC = {
    'pc': dict(method='pc', predictor='euler_maruyama', corrector='none'),
    'pc_corrector_only': dict(method='pc', predictor='none', corrector='langevin'),
    'pc_ilvr_only': dict(method='pc', predictor='none', corrector='none', projection='ilvr'),
    'dpm2m_eta1': dict(method='dpm2m', eta=1.0, num_steps=10, schedule='logsnr'),
}
DETERMINISTIC = {
    'ode': dict(method='ode', rtol=1e-4, atol=1e-4),
    'heun': dict(method='heun', num_steps=30, schedule='karras'),
    'dpm2m': dict(method='dpm2m', eta=0.0, num_steps=30, schedule='logsnr'),
}


def _sampling_config(temperature: float, fields: dict) -> ml_collections.ConfigDict:
    cfg = default.sampling_config()
    cfg.update(eps=1e-3, temperature=temperature, **fields)
    return cfg


def _build_tiny(cfg: ml_collections.ConfigDict) -> sampling.SampleFn:
    """make_sampler on the tiny network: building compiles nothing (jit is lazy)."""
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=6)
    opts = score_options('scaled_score')
    return sampling.make_sampler(cfg, sde, TinyScoreNet(), opts, default.data_config(), SHAPE)


@pytest.mark.parametrize('name', sorted(STOCHASTIC))
def test_temperature_is_refused_where_fresh_noise_replaces_the_prior(name):
    """Refused when the sampler is built, before any compilation, naming the key and sampler."""
    cfg = _sampling_config(0.5, STOCHASTIC[name])
    with pytest.raises(ValueError, match=r'config\.sampling\.temperature=0\.5 cannot act') as err:
        _build_tiny(cfg)
    assert f'sampling.method={cfg.method!r}' in str(err.value), err.value
    _build_tiny(_sampling_config(1.0, STOCHASTIC[name]))  # At 1 there is nothing to refuse.


@pytest.mark.parametrize('name', sorted(DETERMINISTIC))
def test_temperature_is_accepted_by_the_deterministic_samplers(name):
    _build_tiny(_sampling_config(0.5, DETERMINISTIC[name]))


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
@pytest.mark.parametrize('name', sorted(DETERMINISTIC))
def test_temperature_scales_the_deterministic_samplers_variance_by_its_square(name, sde_name):
    """Gaussian data, exact score, through make_sampler: each sample is the exact probability-
    flow map of its tempered prior draw (RMS < 0.01 against data std 0.14-0.28), and the
    variance along every eigen-direction scales by tau^2 (same draws: the map is affine, so
    within 2%, the solver's error; the closed form tau^2 lam within 10%, sampling error)."""
    sde, n, tau, eps = make_toy_sde(sde_name), 4000, 0.5, 1e-3
    mu, U, lam = np.full(4, 0.4), make_gaussian(4, 0.1)[1], np.linspace(0.02, 0.08, 4)
    model = ExactConditionalScore(sde, 0.0, 0.4, U @ np.diag(lam) @ U.T, False, sde.scale)
    cond, ids, key = {'lr_up': jnp.zeros((n, 2, 2, 1))}, jnp.arange(n), jax.random.key(0)
    prior_keys = sampling.split_keys(sampling.per_sample_keys(key, ids))[0]
    u_T = np.asarray(sampling.prior_sample(sde, prior_keys, (2, 2, 1)))
    params, samples = {'unused': jnp.zeros(())}, {}
    for temperature in (tau, 1.0):
        cfg = _sampling_config(temperature, DETERMINISTIC[name])
        fn = sampling.make_sampler(
            cfg, sde, model, score_options('score'), default.data_config(), (2, 2, 1)
        )
        x, stats = fn(params, key, cond, ids)
        assert int(stats['unfinished']) == 0
        samples[temperature] = np.asarray(x, np.float64).reshape(n, 4)
    exact = exact_flow(sde, tau * u_T, sde.T, eps, mu, U, lam, noise_removal=True)
    assert np.sqrt(np.mean((samples[tau] - exact) ** 2)) < 0.01
    var = {k: ((v - v.mean(0)) @ U).var(0) for k, v in samples.items()}
    np.testing.assert_allclose(var[tau] / var[1.0], tau**2, rtol=0.02)
    np.testing.assert_allclose(var[tau] / (tau**2 * lam), 1.0, rtol=0.1)
