"""ode.py (diffrax): evaluation counts, unfinished solves, gradients through the solver against
an independent unrolled implementation and finite differences, and memory that does not grow
with the number of steps; the image-quality loss built on it."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import losses
import ode
import sampling
import sde_lib
from configs import default
from models.utils import ScoreNetwork
from models.wrappers import init_params, score_options
from tests.test_sampling import exact_flow, gaussian_score, make_gaussian, make_toy_sde


def _field(t, y):
    return -y * (1.0 + t) + jnp.sin(3.0 * t)


def _field3(t, y, args):
    return _field(t, y)


@pytest.mark.parametrize(
    'solver,fixed_steps',
    [
        ('dopri5', 0),
        ('dopri5', 7),
        ('tsit5', 0),
        ('bosh3', 0),
        ('heun', 0),
        ('heun', 5),
        ('euler', 9),
    ],
)
def test_reported_nfe_counts_every_evaluation(solver, fixed_steps):
    calls = []

    def counted(t, y, args):
        jax.debug.callback(lambda: calls.append(1))
        return _field(t, y)

    opts = ode.ODEOptions(solver=solver, rtol=1e-5, atol=1e-5, fixed_steps=fixed_steps)
    y, nfe, finished = jax.jit(lambda y: ode.solve(counted, y, 1.0, 1e-3, opts))(jnp.ones(3))
    jax.block_until_ready(y)
    assert bool(finished) and int(nfe) == len(calls) > 0


def test_euler_needs_fixed_steps():
    with pytest.raises(ValueError, match='fixed steps'):
        ode.solve(_field3, jnp.ones(2), 1.0, 0.0, ode.ODEOptions(solver='euler'))


def test_unfinished_solves_are_reported_never_silent():
    opts = ode.ODEOptions(rtol=1e-9, atol=1e-9, max_steps=3)
    _, _, finished = jax.vmap(lambda y: ode.solve(_field3, y, 1.0, 1e-3, opts))(jnp.ones((2, 3)))
    assert not np.any(np.asarray(finished))
    sde = sde_lib.VPSDE(N=10)
    x_T = jnp.ones((3, 2))
    score_fn = lambda x, t, c: -x
    _, stats = sampling.sample_ode(
        None, score_fn, sde, x_T, np.array([1.0, 1e-3]), {}, rtol=1e-9, atol=1e-9, max_steps=3
    )
    assert int(stats['unfinished']) == 3
    cfg = default.sampling_config()
    cfg.update(method='ode', max_steps=3)
    with pytest.raises(RuntimeError, match=r'3 sample\(s\) reached sampling.max_steps=3'):
        sampling.check_finished(stats, cfg)
    sampling.check_finished({'unfinished': 0}, cfg)  # Finished: no error.


# ----------------------------------------------------------------------------- gradients


def _theta():
    return {'w': jnp.asarray([[0.5, -0.3], [0.2, 0.4]]), 'b': jnp.asarray([0.1, -0.2])}


def _param_field(t, y, theta):
    return jnp.tanh(y @ theta['w'] + theta['b'] * t) - 0.5 * y


def _heun_unrolled(theta, y, t0, t1, steps):
    """Heun's method written out: the independent reference for backprop through the solver."""
    f, h = (lambda t, y: _param_field(t, y, theta)), (t1 - t0) / steps
    for n in range(steps):
        t = t0 + n * h
        k1 = f(t, y)
        k2 = f(t + h, y + h * k1)
        y = y + 0.5 * h * (k1 + k2)
    return y


def _objective(y):
    return jnp.sum(jnp.sin(y) ** 2)


@pytest.mark.parametrize('checkpoints', [3, 12])
def test_gradient_through_the_solver_matches_unrolled_backprop(checkpoints):
    y0, steps = jnp.asarray([0.7, -1.1]), 12
    opts = ode.ODEOptions(solver='heun', fixed_steps=steps, checkpoints=checkpoints)

    def loss(theta):
        return _objective(ode.solve(_param_field, y0, 1.0, 0.0, opts, theta)[0])

    reference = jax.grad(lambda th: _objective(_heun_unrolled(th, y0, 1.0, 0.0, steps)))(_theta())
    grads = jax.grad(loss)(_theta())
    for k in grads:
        np.testing.assert_allclose(grads[k], reference[k], rtol=1e-5, atol=1e-6)
    # And a central finite difference along one direction.
    direction = {'w': jnp.asarray([[1.0, 0.0], [0.0, -1.0]]), 'b': jnp.asarray([0.5, 0.5])}
    shift = lambda s: jax.tree.map(lambda a, d: a + s * d, _theta(), direction)
    h = 1e-3
    fd = (loss(shift(h)) - loss(shift(-h))) / (2 * h)
    directional = sum(jnp.sum(grads[k] * direction[k]) for k in grads)
    np.testing.assert_allclose(directional, fd, rtol=2e-3)


def test_continuous_adjoint_agrees_to_the_tolerance():
    y0 = jnp.asarray([0.7, -1.1])
    grads = {}
    for adjoint in ('recursive_checkpoint', 'backsolve'):
        opts = ode.ODEOptions(solver='dopri5', rtol=1e-7, atol=1e-7, adjoint=adjoint)
        loss = lambda th, o=opts: _objective(ode.solve(_param_field, y0, 1.0, 0.0, o, th)[0])
        grads[adjoint] = jax.grad(loss)(_theta())
    for k in grads['backsolve']:
        np.testing.assert_allclose(
            grads['backsolve'][k], grads['recursive_checkpoint'][k], rtol=1e-4, atol=1e-6
        )


def _grad_temp_bytes(checkpoints: int, steps: int) -> int:
    """Compiled temporary memory of the gradient of a 4096-dimensional solve."""
    y0 = jnp.linspace(-1.0, 1.0, 4096)
    theta = {'w': jnp.full((4096,), 0.3), 'b': jnp.zeros(4096)}
    field = lambda t, y, th: jnp.tanh(y * th['w'] + th['b']) - 0.1 * y
    opts = ode.ODEOptions(solver='heun', fixed_steps=steps, checkpoints=checkpoints)
    loss = lambda th: jnp.sum(ode.solve(field, y0, 1.0, 0.0, opts, th)[0] ** 2)
    compiled = jax.jit(jax.grad(loss)).lower(theta).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_checkpointed_gradient_memory_does_not_grow_with_steps():
    checkpointed = {n: _grad_temp_bytes(4, n) for n in (16, 128)}
    plain = {n: _grad_temp_bytes(n, n) for n in (16, 128)}  # A checkpoint at every step.
    print('gradient temp bytes, 4 checkpoints:', checkpointed, 'plain backprop:', plain)
    assert checkpointed[128] < 1.25 * checkpointed[16], checkpointed
    assert plain[128] > 4 * plain[16], plain  # (measured 0.49 -> 2.33 MB: 16 KB a step)


# ----------------------------------------------------------------------------- quality loss


class TinyNet(ScoreNetwork):
    @nn.compact
    def __call__(self, x, label, train=False, lr=None):
        h = nn.Conv(8, (3, 3))(x) + nn.Dense(8)(label[:, None] / 1000.0)[:, None, None, :]
        return 0.1 * nn.Conv(6, (3, 3))(nn.silu(h))


@pytest.mark.parametrize('unroll', [False, True])
def test_quality_loss_is_differentiable(unroll):
    """Through a fixed-step ODE: gradients reach the network and match finite differences
    (what the loss is at an exact generator: ``test_quality_loss_is_zero_only_at_the_exact_
    solution`` below)."""
    sde = sde_lib.MeanRevertingSDE(N=100, sigma=0.2)
    tcfg = ml_collections.ConfigDict(
        dict(
            quality_solver='heun',
            quality_fixed_steps=4,
            quality_tol=1e-3,
            quality_max_steps=64,
            quality_adjoint='recursive_checkpoint',
            quality_checkpoints=2,
            quality_t_end=1e-3,
            quality_unroll=unroll,
        )
    )
    model = TinyNet()
    params = init_params(model, jax.random.key(0), (16, 16, 3))
    from models.wrappers import make_predict_fn

    predict = lambda p, k: make_predict_fn(model, p, sde, score_options('hybrid'))
    features = lambda images: images[..., :2] * 3.0  # A linear stand-in for VGG.
    hr = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    batch = {'hr': hr, 'lr_up': jnp.clip(hr + 0.1, 0, 1)}
    loss_fn = losses.get_quality_loss_fn(sde, predict, tcfg, features, lambda x: x)
    key = jax.random.key(2)
    value, grads = jax.value_and_grad(loss_fn)(params, batch, key)
    assert float(value) > 0 and np.isfinite(float(value))
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves) and max(np.abs(g).max() for g in leaves) > 0
    # Finite difference along the gradient of the last layer's bias.
    g_bias = grads['Conv_1']['bias']
    shift = lambda s: jax.tree.map(
        lambda p: p,
        {**params, 'Conv_1': {**params['Conv_1'], 'bias': params['Conv_1']['bias'] + s * g_bias}},
    )
    h = 1e-3
    fd = (loss_fn(shift(h), batch, key) - loss_fn(shift(-h), batch, key)) / (2 * h)
    # (an L1 loss of clipped images: kinks make the difference quotient only roughly linear)
    np.testing.assert_allclose(fd, jnp.sum(g_bias**2), rtol=0.1)
    assert float(loss_fn(shift(-10 * h), batch, key)) < float(value)  # A descent direction.


# ----------------------------------------------------------------------------- generate
# Gaussian data in the SDE's state frame, u0 ~ N(mu, U diag(lam) U^T): the score is exact and
# the probability-flow map is affine and known in closed form (tests.test_sampling.exact_flow),
# so losses.generate is compared with the exact ODE solution, an independent reference that a
# solve stopped early or an output of lr_up does not match.

GEN_T_END, GEN_BATCH, GEN_SHAPE = 1e-3, 64, (2, 2, 1)
# name -> (SDE, ODE options, RMS tolerance in data units). Measured errors: adaptive dopri5 at
# rtol = atol = 1e-5, 1.6e-5 (ECDP) and 6.5e-6 (VE); 32 fixed Heun steps (second order,
# ECDP), 4.1e-4. The wrong outputs are 0.14-0.8 away, over 100 tolerances.
ADAPTIVE = ode.ODEOptions(solver='dopri5', rtol=1e-5, atol=1e-5)
GEN_CASES = {
    'ecdp_adaptive': ('ecdp', ADAPTIVE, 1e-4),
    'ecdp_fixed': ('ecdp', ode.ODEOptions(solver='heun', fixed_steps=32), 1e-3),
    'ecdp_unrolled': ('ecdp', ode.ODEOptions(solver='heun', fixed_steps=32, unroll=True), 1e-3),
    've_adaptive': ('ve', ADAPTIVE, 1e-4),
}


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a))))


def _gaussian_generation(sde_name: str):
    """``(sde, score_fn, cond, exact_at)``: ECDP's SDE (offset lr_up, scale 0.3) or a VE SDE,
    the exact score, a cond, and ``exact_at(key, t)``: the exact ODE solution at time ``t``,
    in data coordinates, from the prior draw that ``generate`` makes with ``key``."""
    if sde_name == 'ecdp':
        sde = sde_lib.MeanRevertingSDE(beta_min=0.1, beta_max=20.0, N=100, sigma=0.3)
    else:
        sde = make_toy_sde(sde_name)
    mu, U, lam = make_gaussian(int(np.prod(GEN_SHAPE)), 0.1)
    lr_up = jax.random.uniform(jax.random.key(7), (GEN_BATCH, *GEN_SHAPE), minval=0.3, maxval=0.7)
    cond = {'lr_up': lr_up}

    def exact_at(key: jax.Array, t: float) -> np.ndarray:
        # generate's prior draw: row i from jax.random.split(key, batch)[i].
        keys = jax.random.split(key, GEN_BATCH)
        u_T = jax.vmap(lambda k: sde.prior_sampling(k, GEN_SHAPE))(keys)
        u_t = exact_flow(sde, u_T, sde.T, t, mu, U, lam, noise_removal=False)
        offset = np.asarray(sde.offset(cond), np.float64)
        return offset + sde.scale * u_t.reshape(lr_up.shape)

    return sde, gaussian_score(sde, mu, U, lam), cond, exact_at


@pytest.mark.parametrize('case', sorted(GEN_CASES))
def test_generate_matches_the_exact_probability_flow_solution(case):
    """Issue 19 #13: losses.generate (both branches: per-sample adaptive, batched fixed steps)
    reaches the exact solution at t_end; an output of lr_up or a solve stopped at t = 0.5 would
    be more than 100 tolerances away (checked too, so the test keeps its power)."""
    sde_name, opts, tol = GEN_CASES[case]
    sde, score_fn, cond, exact_at = _gaussian_generation(sde_name)
    key, params = jax.random.key(3), {'unused': jnp.zeros(())}

    def run(cond, key):
        return losses.generate(sde, lambda p: score_fn, params, cond, key, opts, GEN_T_END)

    sr, finished = jax.jit(run)(cond, key)
    exact = exact_at(key, GEN_T_END)
    assert np.all(np.asarray(finished))
    error = _rms(np.asarray(sr, np.float64) - exact)
    print(case, 'RMS error of generate vs the exact solution:', error)
    assert error < tol, (error, tol)
    for wrong in (np.asarray(cond['lr_up']), exact_at(key, 0.5)):
        assert _rms(wrong - exact) > 100 * tol


def test_quality_loss_is_zero_only_at_the_exact_solution():
    """With an exact generator (Gaussian data, exact score, adaptive ODE), the image-quality loss
    against HR = the exact ODE solution is its solver error (features are 3 x the image, so
    below 3e-4); against HR = lr_up, or the solution at t = 0.5, it is above 0.1."""
    sde, score_fn, cond, exact_at = _gaussian_generation('ecdp')
    tcfg = ml_collections.ConfigDict(
        dict(
            quality_solver='dopri5',
            quality_fixed_steps=0,
            quality_tol=1e-5,
            quality_max_steps=4096,
            quality_adjoint='recursive_checkpoint',
            quality_checkpoints=0,
            quality_t_end=GEN_T_END,
            quality_unroll=False,
        )
    )
    predict_model = lambda p, k: lambda u, t, c: {'score': score_fn(u, t, c)}
    features = lambda images: images * 3.0  # A linear stand-in for VGG.
    loss_fn = jax.jit(losses.get_quality_loss_fn(sde, predict_model, tcfg, features, lambda x: x))
    key, params = jax.random.key(2), {'unused': jnp.zeros(())}
    noise_key = jax.random.split(key)[0]  # The loss generates from its key's first half.
    targets = {
        'exact': exact_at(noise_key, GEN_T_END),
        'lr_up': cond['lr_up'],
        'stopped at t = 0.5': exact_at(noise_key, 0.5),
    }
    loss = {
        name: float(loss_fn(params, {'hr': jnp.asarray(hr, jnp.float32), **cond}, key))
        for name, hr in targets.items()
    }
    print('quality loss against each HR:', loss)
    assert loss['exact'] < 3e-4 and loss['lr_up'] > 0.1 and loss['stopped at t = 0.5'] > 0.1


def test_vgg_features_shape_and_sensitivity():
    from evaluation.lpips import make_vgg_features

    features, params = make_vgg_features()
    images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    f = features(params, images)
    assert f.shape == (2, 2, 2, 512)
    assert float(jnp.abs(features(params, images * 0.5) - f).mean()) > 0


@pytest.mark.parametrize('solver', ['heun', 'euler'])
def test_unrolled_fixed_steps_equal_diffrax_values_and_gradients(solver):
    """``unroll`` writes the fixed steps out (XLA CPU's loop backward is slow): the same
    solution and gradient as diffrax's constant-step solver, and the same NFE."""
    y0, steps = jnp.asarray([0.7, -1.1]), 9
    looped = ode.ODEOptions(solver=solver, fixed_steps=steps, checkpoints=steps)
    unrolled = ode.ODEOptions(solver=solver, fixed_steps=steps, unroll=True)

    def loss(theta, opts):
        return _objective(ode.solve(_param_field, y0, 1.0, 0.0, opts, theta)[0])

    np.testing.assert_allclose(loss(_theta(), unrolled), loss(_theta(), looped), rtol=1e-6)
    grads, reference = (jax.grad(loss)(_theta(), o) for o in (unrolled, looped))
    for k in grads:
        np.testing.assert_allclose(grads[k], reference[k], rtol=1e-5, atol=1e-7)
    nfe = [ode.solve(_param_field, y0, 1.0, 0.0, o, _theta())[1] for o in (unrolled, looped)]
    assert int(nfe[0]) == int(nfe[1])
    with pytest.raises(ValueError, match='unroll needs fixed steps'):
        ode.solve(_param_field, y0, 1.0, 0.0, ode.ODEOptions(solver='dopri5', unroll=True))
