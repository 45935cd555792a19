"""Losses with the exact score of Gaussian data, and the data-parallel train step."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import scipy.integrate

import losses
import sde_lib
from models.utils import ScoreNetwork
from models.wrappers import make_predict_fn, make_score_fn, score_options
from utils import parallel

MU, S = 0.3, 0.2  # Data: every pixel i.i.d. N(MU, S^2).
SHAPE = (4, 4, 3)


def _gaussian_score(sde, x, t):
    """Exact score of p_t for N(MU, S^2) data: the perturbed law is N(a MU, a^2 S^2 + std^2)."""
    alpha = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)[0][:, 0]
    std = sde.marginal_std(t)
    var = alpha**2 * S**2 + std**2
    return sde_lib.batch_mul(-1.0 / var, x - sde_lib.batch_mul(alpha * MU, jnp.ones_like(x)))


class ExactScoreNet(ScoreNetwork):
    """Outputs ``scale`` times the exact score (raw 'score' parametrization); scale=1 is exact.

    The time is recovered from the label the wrapper passes (sigma for VE, 999 t for VP).
    """

    sde: sde_lib.SDE
    scale: float = 1.0

    @nn.compact
    def __call__(self, x, label, train=False, lr=None):
        x = x[..., :3]  # The network input is [noisy HR, upsampled LR].
        if hasattr(self.sde, 'sigma_max'):
            sde = self.sde
            t = jnp.log(label / sde.sigma_min) / np.log(sde.sigma_max / sde.sigma_min)
        else:
            t = label / 999.0
        bias = self.param('bias', nn.initializers.zeros, ())
        return self.scale * _gaussian_score(self.sde, x, t) + bias


SDES = {
    'vesde': sde_lib.VESDE(0.01, 5.0, N=1000),
    'vpsde': sde_lib.VPSDE(0.1, 20.0, N=1000),
    'subvpsde': sde_lib.SubVPSDE(0.1, 20.0, N=1000),
}
LOSS_FOR = {'vesde': ('dsm', 'smld'), 'vpsde': ('dsm', 'ddpm'), 'subvpsde': ('dsm',)}


def _tcfg(**overrides):
    cfg = dict(reduce_mean=True, likelihood_weighting=False, eps=1e-5)
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def _batch(key, n=512):
    hr = MU + S * jax.random.normal(key, (n, *SHAPE))
    return {'hr': hr, 'lr_up': jnp.zeros_like(hr)}


def _score_model(model, sde, parametrization, train):
    return lambda params, key: make_predict_fn(
        model, params, sde, score_options(parametrization), train=train, dropout_key=key
    )


def _loss(sde, loss_name, scale, key, **tcfg):
    model = _score_model(ExactScoreNet(sde, scale), sde, 'score', False)
    loss_fn = losses.LOSSES.get(loss_name)(sde, model, _tcfg(**tcfg))
    return float(loss_fn({'bias': jnp.zeros(())}, _batch(jax.random.PRNGKey(0)), key))


@pytest.mark.parametrize(
    'sde_name,loss_name', [(s, loss) for s, names in LOSS_FOR.items() for loss in names]
)
def test_exact_score_minimises_loss(sde_name, loss_name):
    sde = SDES[sde_name]
    key = jax.random.PRNGKey(1)
    exact = _loss(sde, loss_name, 1.0, key)
    for scale in (0.8, 1.25):
        assert exact < _loss(sde, loss_name, scale, key)


def test_dsm_loss_value_matches_closed_form():
    """With the exact score, E ||std s + z||^2 per pixel = a^2 S^2 / (a^2 S^2 + std^2)."""
    sde = SDES['vpsde']

    def per_pixel(t):
        alpha = np.exp(float(sde.log_mean_coeff(jnp.array(t))))
        std2 = 1 - alpha**2
        return alpha**2 * S**2 / (alpha**2 * S**2 + std2)

    expected = scipy.integrate.quad(per_pixel, 1e-5, 1.0)[0] / (1.0 - 1e-5)
    values = [_loss(sde, 'dsm', 1.0, jax.random.PRNGKey(k)) for k in range(4)]
    np.testing.assert_allclose(np.mean(values), expected, rtol=0.1)


def test_likelihood_weighting_also_minimised_by_exact_score():
    sde = SDES['vesde']
    key = jax.random.PRNGKey(2)
    exact = _loss(sde, 'dsm', 1.0, key, likelihood_weighting=True)
    assert exact < _loss(sde, 'dsm', 1.1, key, likelihood_weighting=True)


def test_wrong_sde_for_discrete_loss_fails():
    with pytest.raises(ValueError, match='vesde'):
        sde = SDES['vpsde']
        losses.LOSSES.get('smld')(
            sde, _score_model(ExactScoreNet(sde), sde, 'score', True), _tcfg()
        )


def test_parametrizations_give_same_score():
    """eps and scaled_score outputs map to the score through std(t)."""
    sde = SDES['vpsde']
    t = jnp.array([0.1, 0.7])
    std = sde.marginal_std(t)

    class Constant(ScoreNetwork):
        @nn.compact
        def __call__(self, x, label, train=False, lr=None):
            return jnp.ones_like(x[..., :3]) + 0 * self.param('b', nn.initializers.zeros, ())

    x = jnp.zeros((2, *SHAPE))
    cond = {'lr_up': x}
    params = {'b': jnp.zeros(())}
    eps = make_score_fn(Constant(), params, sde, score_options('eps'))(x, t, cond)
    scaled = make_score_fn(Constant(), params, sde, score_options('scaled_score'))(x, t, cond)
    np.testing.assert_allclose(eps[:, 0, 0, 0], -1 / std, rtol=1e-6)
    np.testing.assert_allclose(scaled[:, 0, 0, 0], 1 / std, rtol=1e-6)


class TinyConvNet(ScoreNetwork):
    @nn.compact
    def __call__(self, x, label, train=False, lr=None):
        h = nn.Conv(8, (3, 3))(x)
        h = h + nn.Dense(8)(jnp.log(label)[:, None])[:, None, None, :]
        return nn.Conv(3, (3, 3))(nn.silu(h))


def _run_steps(devices, n_steps=3):
    """A few data-parallel train steps of a tiny net over ``devices``; returns final params."""
    sde = SDES['vesde']
    model = TinyConvNet()
    mesh = parallel.make_mesh(devices)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE[:2], 6)), jnp.ones((1,)))
    optimizer = optax.adam(1e-2)
    state = parallel.replicate(losses.init_train_state(params['params'], optimizer), mesh)
    loss_fn = losses.LOSSES.get('dsm')(sde, _score_model(model, sde, 'scaled_score', True), _tcfg())
    step = losses.jit_train_step(
        losses.make_train_step(loss_fn, optimizer, 0.9, optax.constant_schedule(1e-2)), mesh
    )
    for i in range(n_steps):
        batch = _batch(jax.random.PRNGKey(10 + i), n=16)
        state, metrics = step(
            state, parallel.shard_batch(jax.device_get(batch), mesh), jax.random.PRNGKey(5)
        )
    return jax.device_get(state), jax.device_get(metrics)


def test_data_parallel_matches_single_device():
    assert len(jax.devices()) == 8, 'conftest sets 8 simulated CPU devices'
    state8, metrics8 = _run_steps(jax.devices())
    state1, metrics1 = _run_steps(jax.devices()[:1])
    assert int(state8.step) == 3
    np.testing.assert_allclose(metrics8['loss'], metrics1['loss'], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # EMA moved away from the initial parameters in the same way.
    for a, b in zip(
        jax.tree.leaves(state8.ema_params), jax.tree.leaves(state1.ema_params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _has_mu(x) -> bool:
    return hasattr(x, 'mu')


def test_learning_rate_warmup_and_clipping():
    optim = ml_collections.ConfigDict(
        dict(
            optimizer='adam',
            lr=1e-3,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            warmup=10,
            grad_clip=1.0,
        )
    )
    schedule = losses.learning_rate_schedule(optim)
    np.testing.assert_allclose(
        [schedule(0), schedule(5), schedule(10), schedule(1000)], [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6
    )
    params = {'w': jnp.zeros(3)}
    grads = {'w': jnp.array([300.0, 400.0, 0.0])}  # Global norm 500, clipped to 1.

    def first_moment_norm(optim):
        """Adam's first moment after one step: (1 - beta1) * the gradient it was given (its
        update is ~lr * sign(gradient) whatever the scale, so only its state shows a clip)."""
        tx = losses.make_optimizer(optim)
        updates, state = tx.update(grads, tx.init(params), params)
        assert np.all(np.isfinite(np.asarray(updates['w'])))
        (adam,) = [s for s in jax.tree.leaves(state, is_leaf=_has_mu) if _has_mu(s)]
        return float(optax.tree.norm(adam.mu))

    np.testing.assert_allclose(first_moment_norm(optim), 0.1 * 1.0, rtol=1e-5)  # Clipped.
    optim.grad_clip = 0.0  # Off: the whole gradient reaches Adam.
    np.testing.assert_allclose(first_moment_norm(optim), 0.1 * 500.0, rtol=1e-5)
    optim.optimizer = 'sgd'
    with pytest.raises(ValueError, match='optimizer'):
        losses.make_optimizer(optim)


# ----------------------------------------------------------------------------- quality solves


def _quality_tcfg(max_steps: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            quality_solver='dopri5',
            quality_fixed_steps=0,
            quality_tol=1e-3,
            quality_max_steps=max_steps,
            quality_adjoint='recursive_checkpoint',
            quality_checkpoints=0,
            quality_t_end=1e-3,
            quality_unroll=False,
            quality_max_unfinished=0.25,
        )
    )


def _quality_fn(max_steps: int):
    """The quality loss and its metrics for a one-parameter linear score (a tiny model whose
    adaptive solve finishes in a few steps) and features 3 x the image."""
    sde = sde_lib.MeanRevertingSDE(N=100, sigma=0.2)
    predict_model = lambda p, k: lambda u, t, c: {'score': -p['a'] * u / 0.04}
    features = lambda images: 3.0 * images
    image_losses = {'quality': (1.0, losses.feature_l1(features))}
    return losses.get_quality_loss_and_metrics_fn(
        sde, predict_model, _quality_tcfg(max_steps), image_losses, lambda x: x
    )


QUALITY_PARAMS = {'a': jnp.asarray(1.0)}


def _quality_batch() -> dict:
    hr = jax.random.uniform(jax.random.key(1), (4, *SHAPE))
    return {'hr': hr, 'lr_up': jnp.clip(hr + 0.1, 0, 1)}


def test_quality_loss_counts_unfinished_solves_and_leaves_them_out():
    """Issue 19 #11: with max_steps=1 every adaptive solve stops unfinished: all 4 are counted
    and the loss is 0 without gradient (not a mean that counts them as perfect faces); with
    room to finish, none is counted."""
    batch, key = _quality_batch(), jax.random.key(2)
    (loss, metrics), grads = jax.value_and_grad(_quality_fn(1), has_aux=True)(
        QUALITY_PARAMS, batch, key
    )
    assert float(metrics[losses.QUALITY_UNFINISHED]) == 4.0
    assert float(metrics[losses.QUALITY_UNFINISHED_FRACTION]) == 1.0
    assert float(loss) == 0.0 and float(grads['a']) == 0.0
    loss, metrics = _quality_fn(64)(QUALITY_PARAMS, batch, key)
    assert float(metrics[losses.QUALITY_UNFINISHED]) == 0.0 and float(loss) > 0


def test_quality_loss_is_the_mean_over_finished_solves(monkeypatch):
    """Two of four solves forced unfinished: the loss is the mean over the other two (twice
    what counting them as 0 gave), and the metrics say 2, one half."""
    generated = {}
    real_generate = losses.generate

    def half_unfinished(*args, **kwargs):
        sr, finished = real_generate(*args, **kwargs)
        generated['sr'] = sr
        return sr, finished & jnp.asarray([True, False, True, False])

    monkeypatch.setattr(losses, 'generate', half_unfinished)
    batch = _quality_batch()
    loss, metrics = _quality_fn(64)(QUALITY_PARAMS, batch, jax.random.key(2))
    diff = np.abs(3.0 * np.clip(generated['sr'], 0, 1) - 3.0 * np.asarray(batch['hr']))
    per_image = diff.reshape(4, -1).mean(axis=1)
    np.testing.assert_allclose(float(loss), per_image[[0, 2]].mean(), rtol=1e-5)
    assert float(metrics[losses.QUALITY_UNFINISHED]) == 2.0
    assert float(metrics[losses.QUALITY_UNFINISHED_FRACTION]) == 0.5


def test_unfinished_metrics_reach_the_train_step_and_stop_above_the_bound():
    """The train step's metrics carry the quality loss's counts (the path train.py logs), and
    :func:`losses.check_quality_solves` stops above ``quality_max_unfinished`` naming the step."""
    optimizer = optax.adam(1e-2)
    step = losses.make_train_step(
        _quality_fn(1), optimizer, 0.9, optax.constant_schedule(1e-2), has_aux=True
    )
    state = losses.init_train_state(QUALITY_PARAMS, optimizer)
    _, metrics = jax.jit(step)(state, _quality_batch(), jax.random.key(0))
    assert float(metrics[losses.QUALITY_UNFINISHED]) == 4.0 and 'loss' in metrics
    tcfg = _quality_tcfg(1)
    with pytest.raises(RuntimeError, match=r'step 7: 4 quality-loss solves \(100%\) reached'):
        losses.check_quality_solves(jax.device_get(metrics), 7, tcfg)
    tcfg.quality_max_unfinished = 1.0  # Never stops.
    losses.check_quality_solves(jax.device_get(metrics), 7, tcfg)
    losses.check_quality_solves({'loss': 1.0}, 7, _quality_tcfg(1))  # No quality loss: no check.
