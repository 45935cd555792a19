"""SDEs against independent references: Monte-Carlo simulation of the forward process with its
own ``discretize``, scipy's normal log-density, and closed-form reverse drifts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats

import sde_lib

N_STEPS = 400
SDES = {
    'vesde': sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0, N=N_STEPS),
    'vpsde': sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=N_STEPS),
    'subvpsde': sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0, N=N_STEPS),
}


def _simulate_forward(sde, x0, key, checkpoints):
    """Runs ``x_{i+1} = x_i + f_i + G_i z_i`` over the SDE's own grid; returns x at checkpoints.

    Step i uses time ``t_i = i / (N - 1)``; after it, x has the law of the marginal at
    ``t_{i+1}`` for the continuous SDEs, and exactly at level ``i`` for the SMLD chain.
    """

    def step(x, i):
        t = jnp.full((x.shape[0],), i / (sde.N - 1))
        f, g = sde.discretize(x, t)
        z = jax.random.normal(jax.random.fold_in(key, i), x.shape)
        x = x + f + sde_lib.batch_mul(g, z)
        return x, x

    _, xs = jax.lax.scan(step, x0, jnp.arange(sde.N))
    return {c: xs[c] for c in checkpoints}


@pytest.mark.parametrize('name', sorted(SDES))
def test_marginal_prob_matches_simulation(name):
    sde = SDES[name]
    x0 = jnp.full((20000, 4), 1.5)
    checkpoints = (N_STEPS // 8, N_STEPS // 2, N_STEPS - 1)
    xs = _simulate_forward(sde, x0, jax.random.PRNGKey(0), checkpoints)
    for i in checkpoints:
        # The SMLD chain reaches level i exactly; EM/DDPM steps reach t = (i + 1) dt.
        t_value = i / (N_STEPS - 1) if name == 'vesde' else (i + 1) / N_STEPS
        t = jnp.full((1,), t_value)
        mean, std = sde.marginal_prob(x0[:1], t)
        sim = np.asarray(xs[i])
        scale = float(std[0])
        np.testing.assert_allclose(sim.mean(), float(mean[0, 0]), atol=0.03 * scale + 0.01)
        np.testing.assert_allclose(sim.std(), scale, rtol=0.03)


@pytest.mark.parametrize('name', sorted(SDES))
def test_prior_logp_matches_scipy(name):
    sde = SDES[name]
    z = sde.prior_sampling(jax.random.PRNGKey(1), (5, 3, 4, 2))
    scale = sde.sigma_max if name == 'vesde' else 1.0
    expected = scipy.stats.norm(0.0, scale).logpdf(np.asarray(z, np.float64)).reshape(5, -1)
    np.testing.assert_allclose(sde.prior_logp(z), expected.sum(-1), rtol=1e-5)
    # The prior is what the forward SDE reaches at T (up to sigma_min for VE).
    std = float(sde.marginal_std(jnp.ones((1,)))[0])
    np.testing.assert_allclose(std, scale, rtol=2e-3 if name == 'vesde' else 1e-3)
    np.testing.assert_allclose(np.std(np.asarray(z)), scale, rtol=0.2)


def test_marginal_std_of_variants():
    t = jnp.array([0.0, 0.3, 1.0])
    vp, subvp = SDES['vpsde'], SDES['subvpsde']
    alpha = np.exp(np.asarray(vp.log_mean_coeff(t)))
    np.testing.assert_allclose(vp.marginal_std(t), np.sqrt(1 - alpha**2), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(subvp.marginal_std(t), 1 - alpha**2, rtol=1e-5, atol=1e-7)
    ve = SDES['vesde']
    np.testing.assert_allclose(ve.marginal_std(t), 0.01 * 2000.0 ** np.asarray(t), rtol=1e-5)


@pytest.mark.parametrize('name', sorted(SDES))
def test_sde_consistent_with_marginal_variance(name):
    """d var / dt = 2 (df/dx) var + g^2 for the linear SDEs: checks drift and diffusion."""
    sde = SDES[name]
    t = jnp.array([0.2, 0.5, 0.8])
    h = 1e-3
    var = lambda s: sde.marginal_std(s) ** 2
    dvar = (var(t + h) - var(t - h)) / (2 * h)
    drift_coeff = sde.sde(jnp.ones((3, 1)), t)[0][:, 0]  # f(x, t) = a(t) x, so f(1) = a(t).
    g2 = sde.sde(jnp.ones((3, 1)), t)[1] ** 2
    np.testing.assert_allclose(dvar, 2 * drift_coeff * var(t) + g2, rtol=2e-2)


def test_reverse_and_probability_flow_drifts():
    sde = SDES['vpsde']
    score_fn = lambda x, t, cond: -x * cond['scale']
    x = jnp.ones((2, 3))
    t = jnp.array([0.3, 0.6])
    cond = {'scale': 2.0}
    f, g = sde.sde(x, t)
    rev_f, rev_g = sde.reverse(score_fn).sde(x, t, cond)
    np.testing.assert_allclose(rev_f, f + sde_lib.batch_mul(g**2, 2.0 * x), rtol=1e-6)
    np.testing.assert_allclose(rev_g, g)
    ode_f, ode_g = sde.reverse(score_fn, probability_flow=True).sde(x, t, cond)
    np.testing.assert_allclose(ode_f, f + sde_lib.batch_mul(0.5 * g**2, 2.0 * x), rtol=1e-6)
    np.testing.assert_allclose(ode_g, 0.0)
    disc_f, disc_g = sde.reverse(score_fn).discretize(x, t, cond)
    fwd_f, fwd_g = sde.discretize(x, t)
    np.testing.assert_allclose(disc_f, fwd_f + sde_lib.batch_mul(fwd_g**2, 2.0 * x), rtol=1e-6)
    np.testing.assert_allclose(disc_g, fwd_g)


def test_make_sde_from_config():
    cfg = ml_collections.ConfigDict(
        dict(
            name='subvpsde',
            sigma_min=0.01,
            sigma_max=348.0,
            beta_min=0.1,
            beta_max=20.0,
            num_scales=2000,
        )
    )
    sde = sde_lib.make_sde(cfg)
    assert isinstance(sde, sde_lib.SubVPSDE) and sde.N == 2000
    cfg.name = 'vesd'
    with pytest.raises(KeyError, match='vesd'):
        sde_lib.make_sde(cfg)


def test_time_labels():
    t = jnp.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(SDES['vpsde'].time_label(t), [0.0, 499.5, 999.0])
    # VE: sigma(t) = sigma_min (sigma_max / sigma_min)^t, written out (sigma_min 0.01, max 20).
    np.testing.assert_allclose(
        SDES['vesde'].time_label(t), [0.01, np.sqrt(0.01 * 20.0), 20.0], rtol=1e-5
    )
    ve = SDES['vesde']
    np.testing.assert_allclose(ve.discrete_sigmas[jnp.array([0, -1])], [0.01, 20.0], rtol=1e-5)
