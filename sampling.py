"""Samplers: predictor-corrector, probability-flow ODE (Dopri5) and few-step ODE solvers.

Every sampler is a small pure function registered in ``SAMPLERS``::

    sample_<name>(keys, score_fn, sde, x_T, ts, cond, **opts) -> (x_0, nfe)

``keys`` holds one PRNG key per sample, derived from ``fold_in(key, sample_id)``; the noise
that sample ``i`` receives at step ``n`` is drawn (vmapped over the batch) from
``fold_in(fold_in(keys[i], n), stream)``, so a sample never depends on the batch size, on the
other samples or on the device count. Adaptive and step-size decisions are also made per
sample (the Langevin step size uses per-sample norms, Dopri5 runs per sample under ``vmap``).

``ts`` is the time grid from a ``get_ts_*`` schedule (decreasing, ``T`` first):

* ``pc``: the N noise levels the predictor and corrector are evaluated at (score_sde's
  ``linspace(T, eps, N)``); step ``n`` has ``dt = t_{n+1} - t_n`` and the last step continues
  the grid below ``eps`` (score_sde's fixed ``dt = -1/N``).
* ``heun``/``dpm2m`` (``eta`` > 0: its SDE variant): K + 1 points, K steps from ``ts[0]`` to
  ``ts[-1] = eps``.
* ``ode``: only the ends are used; Dopri5 chooses its own steps.

The few-step solvers work in the scaled variable ``x_hat = x / alpha(t)`` against
``sigma(t) = std(t) / alpha(t)`` (EDM), where ``mean = alpha(t) x_0`` and ``std(t)`` come from
``sde.marginal_prob``; in that form the probability-flow ODE of VE, VP and sub-VP is
``d x_hat / d sigma = (x_hat - D(x_hat, sigma)) / sigma`` with the denoiser
``D = (x + std^2 score(x, t)) / alpha`` (Tweedie), so one solver serves all three SDEs.

Data consistency (``projection='ilvr'``) needs ``cond['lr']`` (LR size, model value range):
``x <- x - up(down(x)) + up(y)`` with ``degradations``' default kernels. The PC sampler projects
the noisy state after each predictor step onto the LR image perturbed to the same noise level,
``y = alpha(t) lr + std(t) z`` (ILVR, Choi et al. 2021; the predictor mean onto
``alpha(t) lr``); the deterministic few-step solvers project their x_0 prediction onto ``lr``
(DDNM-style), which needs no noise and keeps them deterministic. With these antialiased kernels
``down(up(.))`` is not the identity, so one projection reduces but does not zero the LR error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh

import degradations
from models.wrappers import make_score_fn
from sde_lib import SDE, ScoreFn, batch_mul
from utils.parallel import batch_sharding, replicated_sharding
from utils.registry import Registry

Cond = Mapping[str, jax.Array]
SampleFn = Callable[[Any, jax.Array, Cond, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]

SAMPLERS = Registry('sampler')
PREDICTORS = Registry('predictor')
CORRECTORS = Registry('corrector')
SCHEDULES = Registry('step schedule')
PROJECTIONS = Registry('projection')

# Independent noise streams inside one step n of the PC sampler.
_PREDICTOR_STREAM, _PROJECTION_STREAM, _CORRECTOR_STREAM = 0, 1, 2


# ----------------------------------------------------------------------------- keys and noise


def per_sample_keys(key: jax.Array, sample_ids: jax.Array) -> jax.Array:
    """One key per sample, ``fold_in(key, sample_id)``."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, sample_ids)


def fold_keys(keys: jax.Array, data: int | jax.Array) -> jax.Array:
    """``fold_in(keys[i], data)`` for every sample ``i``."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


def split_keys(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two independent per-sample key batches (e.g. prior and sampler loop)."""
    pairs = jax.vmap(jax.random.split)(keys)
    return pairs[:, 0], pairs[:, 1]


def per_sample_normal(keys: jax.Array, like: jax.Array) -> jax.Array:
    """Standard normal noise shaped like ``like`` whose row ``i`` depends only on ``keys[i]``."""
    shape, dtype = like.shape[1:], like.dtype
    return jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(keys)


def prior_sample(sde: SDE, keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``[B, *shape]`` samples of the prior, row ``i`` drawn from ``keys[i]``."""
    return jax.vmap(lambda k: sde.prior_sampling(k, tuple(shape)))(keys)


# ----------------------------------------------------------------------------- SDE helpers


def alpha_std(sde: SDE, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``alpha(t)`` (``mean = alpha x_0``) and ``std(t)`` of the perturbation kernel, shape [B]."""
    mean, std = sde.marginal_prob(jnp.ones((jnp.shape(t)[0], 1)), t)
    return mean[:, 0], std


def denoise(score_fn: ScoreFn, sde: SDE, x: jax.Array, t: jax.Array, cond: Cond) -> jax.Array:
    """Tweedie's x_0 estimate ``(x + std^2 score) / alpha`` at times ``t`` [B]."""
    alpha, std = alpha_std(sde, t)
    return batch_mul(1.0 / alpha, x + batch_mul(std**2, score_fn(x, t, cond)))


def _full(x: jax.Array, t: jax.Array) -> jax.Array:
    return jnp.full((x.shape[0],), t, x.dtype)


# ----------------------------------------------------------------------------- schedules


def sigma_of_t(sde: SDE, ts: Any) -> np.ndarray:
    """``sigma(t) = std(t) / alpha(t)``, the noise level of the scaled variable ``x / alpha``."""
    with jax.ensure_compile_time_eval():
        alpha, std = alpha_std(sde, jnp.asarray(ts, jnp.float32).reshape(-1))
        return np.asarray(std / alpha)


def t_of_sigma(sde: SDE, sigmas: Any, eps: float, iters: int = 64) -> np.ndarray:
    """Inverts the increasing ``sigma(t)`` on ``[eps, T]`` by bisection (any SDE)."""
    sigmas = np.asarray(sigmas, np.float64)
    lo, hi = np.full(sigmas.shape, eps), np.full(sigmas.shape, sde.T)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        above = sigma_of_t(sde, mid) > sigmas
        lo, hi = np.where(above, lo, mid), np.where(above, mid, hi)
    return 0.5 * (lo + hi)


def _ends(ts: np.ndarray, sde: SDE, eps: float) -> np.ndarray:
    ts = np.asarray(ts, np.float32)
    ts[0], ts[-1] = sde.T, eps
    return ts


@SCHEDULES.register('uniform')
def get_ts_uniform(sde: SDE, num_steps: int, eps: float) -> np.ndarray:
    """``linspace(T, eps, num_steps + 1)``: uniform in t (score_sde)."""
    return _ends(np.linspace(sde.T, eps, num_steps + 1), sde, eps)


@SCHEDULES.register('karras')
def get_ts_karras(sde: SDE, num_steps: int, eps: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022): uniform in ``sigma^(1/rho)`` between sigma(T) and sigma(eps)."""
    s_max, s_min = sigma_of_t(sde, [sde.T, eps])
    ramp = np.linspace(0.0, 1.0, num_steps + 1)
    sigmas = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _ends(t_of_sigma(sde, sigmas, eps), sde, eps)


@SCHEDULES.register('logsnr')
def get_ts_logsnr(sde: SDE, num_steps: int, eps: float) -> np.ndarray:
    """Uniform in log-SNR ``lambda = -log sigma`` (DPM-Solver's default)."""
    s_max, s_min = sigma_of_t(sde, [sde.T, eps])
    sigmas = np.exp(np.linspace(np.log(s_max), np.log(s_min), num_steps + 1))
    return _ends(t_of_sigma(sde, sigmas, eps), sde, eps)


# ----------------------------------------------------------------------------- projections


@PROJECTIONS.register('none')
def project_none(x: jax.Array, lr_target: jax.Array) -> jax.Array:
    """No data consistency."""
    del lr_target
    return x


@PROJECTIONS.register('ilvr')
def project_ilvr(x: jax.Array, lr_target: jax.Array) -> jax.Array:
    """ILVR: replaces the low frequencies, ``x - up(down(x)) + up(lr_target)``."""
    factor = x.shape[-3] // lr_target.shape[-3]
    low = degradations.upscale(degradations.downscale(x, factor), factor)
    return (x - low + degradations.upscale(lr_target, factor)).astype(x.dtype)


# ----------------------------------------------------------------------------- predictors
# A predictor moves x from t to t + dt (dt < 0) and returns (x, mean of x); a corrector makes
# n_steps MCMC moves at t. ``keys`` are per-sample keys already specific to the step.


@PREDICTORS.register('none')
def predict_none(
    keys: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    x: jax.Array,
    t: jax.Array,
    dt: jax.Array,
    cond: Cond,
) -> tuple[jax.Array, jax.Array]:
    """No predictor (corrector-only sampling)."""
    return x, x


@PREDICTORS.register('euler_maruyama')
def predict_euler_maruyama(
    keys: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    x: jax.Array,
    t: jax.Array,
    dt: jax.Array,
    cond: Cond,
) -> tuple[jax.Array, jax.Array]:
    """``x_mean = x + f_rev(x, t) dt``, ``x = x_mean + g(t) sqrt(-dt) z`` (dt < 0)."""
    drift, diffusion = sde.reverse(score_fn).sde(x, t, cond)
    x_mean = x + drift * dt
    return x_mean + batch_mul(diffusion * jnp.sqrt(-dt), per_sample_normal(keys, x)), x_mean


@PREDICTORS.register('reverse_diffusion')
def predict_reverse_diffusion(
    keys: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    x: jax.Array,
    t: jax.Array,
    dt: jax.Array,
    cond: Cond,
) -> tuple[jax.Array, jax.Array]:
    """Reverse of the SDE's own discretisation (``sde.discretize``; uses ``sde.N``)."""
    f, G = sde.reverse(score_fn).discretize(x, t, cond)
    x_mean = x - f
    return x_mean + batch_mul(G, per_sample_normal(keys, x)), x_mean


@PREDICTORS.register('ancestral_sampling')
def predict_ancestral(
    keys: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    x: jax.Array,
    t: jax.Array,
    dt: jax.Array,
    cond: Cond,
) -> tuple[jax.Array, jax.Array]:
    """SMLD ancestral step (SDEs with ``discrete_sigmas``) or DDPM's (``discrete_betas``)."""
    idx = sde.discrete_index(t)
    score = score_fn(x, t, cond)
    if hasattr(sde, 'discrete_sigmas'):
        sigma = sde.discrete_sigmas[idx]
        adjacent = jnp.where(idx == 0, 0.0, sde.discrete_sigmas[jnp.maximum(idx - 1, 0)])
        x_mean = x + batch_mul(sigma**2 - adjacent**2, score)
        std = jnp.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
    elif hasattr(sde, 'discrete_betas') and _is_variance_preserving(sde):
        beta = sde.discrete_betas[idx]
        x_mean = batch_mul(1.0 / jnp.sqrt(1.0 - beta), x + batch_mul(beta, score))
        std = jnp.sqrt(beta)
    else:
        raise ValueError(
            'ancestral sampling needs discrete SMLD sigmas or a variance-preserving '
            'SDE with DDPM betas (not sub-VP: use reverse_diffusion)'
        )
    return x_mean + batch_mul(std, per_sample_normal(keys, x)), x_mean


def _is_variance_preserving(sde: SDE) -> bool:
    """Whether ``alpha^2 + std^2 = 1`` (the DDPM chain's marginals); false for sub-VP."""
    with jax.ensure_compile_time_eval():
        alpha, std = alpha_std(sde, jnp.asarray([0.1, 0.5]))
        return bool(np.allclose(np.asarray(alpha**2 + std**2), 1.0, atol=1e-4))


# ----------------------------------------------------------------------------- correctors


@CORRECTORS.register('none')
def correct_none(
    keys: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    x: jax.Array,
    t: jax.Array,
    cond: Cond,
    snr: float,
    n_steps: int,
) -> tuple[jax.Array, jax.Array]:
    """No corrector."""
    return x, x


def _langevin_alpha(sde: SDE, t: jax.Array) -> jax.Array:
    """score_sde's step-size factor: ``1 - beta_i`` for DDPM-type SDEs, else 1."""
    if hasattr(sde, 'discrete_betas'):
        return 1.0 - sde.discrete_betas[sde.discrete_index(t)]
    return jnp.ones_like(t)


def _norm(v: jax.Array) -> jax.Array:
    return jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1)


def _langevin_loop(keys, score_fn, x, t, cond, n_steps, step_size_fn):
    def step(j, carry):
        x, _ = carry
        grad = score_fn(x, t, cond)
        noise = per_sample_normal(fold_keys(keys, j), x)
        step_size = step_size_fn(grad, noise)
        x_mean = x + batch_mul(step_size, grad)
        return x_mean + batch_mul(jnp.sqrt(2.0 * step_size), noise), x_mean

    return lax.fori_loop(0, n_steps, step, (x, x))


@CORRECTORS.register('langevin')
def correct_langevin(
    keys: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    x: jax.Array,
    t: jax.Array,
    cond: Cond,
    snr: float,
    n_steps: int,
) -> tuple[jax.Array, jax.Array]:
    """score_sde's Langevin corrector, ``eps = 2 alpha (r |z| / |score|)^2``.

    The norms are per sample (score_sde averages them over the batch), so a sample's step size
    does not depend on the rest of the batch. A state-dependent step tilts the stationary law
    by O(1 / dim) (about 5% of a variance at 64 dimensions, negligible for images); 'ald' has a
    state-independent step.
    """
    alpha = _langevin_alpha(sde, t)

    def step_size(grad, noise):
        ratio = _norm(noise) / jnp.maximum(_norm(grad), 1e-20)
        return 2.0 * alpha * (snr * ratio) ** 2

    return _langevin_loop(keys, score_fn, x, t, cond, n_steps, step_size)


@CORRECTORS.register('ald')
def correct_ald(
    keys: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    x: jax.Array,
    t: jax.Array,
    cond: Cond,
    snr: float,
    n_steps: int,
) -> tuple[jax.Array, jax.Array]:
    """Annealed Langevin dynamics (NCSN), ``eps = 2 alpha (r std(t))^2``."""
    scale = 2.0 * _langevin_alpha(sde, t) * (snr * sde.marginal_std(t)) ** 2
    return _langevin_loop(keys, score_fn, x, t, cond, n_steps, lambda grad, noise: scale)


# ----------------------------------------------------------------------------- PC sampler


def _project_noisy(projection, keys, sde, x, x_mean, t, cond):
    """ILVR at time ``t``: ``x`` onto ``alpha lr + std z``, the predictor mean onto ``alpha lr``."""
    project = PROJECTIONS.get(projection)
    alpha, std = alpha_std(sde, t)
    lr = cond['lr'].astype(x.dtype)
    noisy_lr = batch_mul(alpha, lr) + batch_mul(std, per_sample_normal(keys, lr))
    return project(x, noisy_lr), project(x_mean, batch_mul(alpha, lr))


@SAMPLERS.register('pc')
def sample_pc(
    keys: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    x_T: jax.Array,
    ts: Any,
    cond: Cond,
    *,
    predictor: str = 'euler_maruyama',
    corrector: str = 'none',
    snr: float = 0.16,
    n_steps_each: int = 1,
    noise_removal: bool = True,
    projection: str = 'none',
) -> tuple[jax.Array, jax.Array]:
    """Predictor-corrector sampling (Song et al. 2021): at every ``t_n`` correct, then predict."""
    predict, correct = PREDICTORS.get(predictor), CORRECTORS.get(corrector)
    ts = jnp.asarray(ts, x_T.dtype)
    dts = jnp.diff(ts, append=2.0 * ts[-1:] - ts[-2:-1])

    def step(carry, inputs):
        n, t, dt = inputs
        step_keys, vec_t = fold_keys(keys, n), _full(carry[0], t)
        corrector_keys = fold_keys(step_keys, _CORRECTOR_STREAM)
        x, _ = correct(corrector_keys, score_fn, sde, carry[0], vec_t, cond, snr, n_steps_each)
        predictor_keys = fold_keys(step_keys, _PREDICTOR_STREAM)
        x, x_mean = predict(predictor_keys, score_fn, sde, x, vec_t, dt, cond)
        if projection != 'none':
            projection_keys = fold_keys(step_keys, _PROJECTION_STREAM)
            t_next = jnp.maximum(vec_t + dt, 0.0)
            x, x_mean = _project_noisy(projection, projection_keys, sde, x, x_mean, t_next, cond)
        return (x, x_mean), None

    (x, x_mean), _ = lax.scan(step, (x_T, x_T), (jnp.arange(ts.shape[0]), ts, dts))
    per_level = (predictor != 'none') + (corrector != 'none') * n_steps_each
    return (x_mean if noise_removal else x), jnp.asarray(ts.shape[0] * per_level, jnp.int32)


# ----------------------------------------------------------------------------- probability flow


_DOPRI5_C = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0])
_DOPRI5_A = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0],
        [1 / 5, 0, 0, 0, 0, 0, 0],
        [3 / 40, 9 / 40, 0, 0, 0, 0, 0],
        [44 / 45, -56 / 15, 32 / 9, 0, 0, 0, 0],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0, 0, 0],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0, 0],
        [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
    ]
)  # The last row is the 5th-order solution b (first same as last).
_DOPRI5_E = np.array(
    [71 / 57600, 0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]
)  # b - b*, the embedded 4th-order error estimate.


def _dopri5_step(f, y, t, h, k1):
    """One Dormand-Prince step; returns ``(y_new, error, f(t + h, y_new))`` (6 evaluations)."""
    a, c = jnp.asarray(_DOPRI5_A, y.dtype), jnp.asarray(_DOPRI5_C, y.dtype)
    ks = jnp.zeros((7, *y.shape), y.dtype).at[0].set(k1)

    def stage(s, ks):
        y_s = y + h * jnp.tensordot(a[s], ks, axes=1)
        return ks.at[s].set(f(t + c[s] * h, y_s))

    ks = lax.fori_loop(1, 7, stage, ks)
    y_new = y + h * jnp.tensordot(a[6], ks, axes=1)
    return y_new, h * jnp.tensordot(jnp.asarray(_DOPRI5_E, y.dtype), ks, axes=1), ks[6]


def dopri5(f, y0, t0, t1, rtol, atol, max_steps=4096):
    """Adaptive RK45 (Dormand-Prince) solution at ``t1`` of ``dy/dt = f(t, y)``, and its NFE.

    Standard step-size control with the error norm ``rms(err / (atol + rtol max|y|))``; runs
    on device in ``lax.while_loop`` for one (unbatched) state ``y0``; vmap it for a batch.
    """
    t0, t1 = jnp.asarray(t0, y0.dtype), jnp.asarray(t1, y0.dtype)
    direction, span = jnp.sign(t1 - t0), jnp.abs(t1 - t0)
    rms = lambda v: jnp.sqrt(jnp.mean(v**2))
    k1 = f(t0, y0)
    scale = atol + rtol * jnp.abs(y0)
    h0 = 0.01 * rms(y0 / scale) / jnp.maximum(rms(k1 / scale), 1e-10)
    h0 = jnp.clip(h0, 1e-6 * span, span)

    def body(state):
        t, y, h_abs, k1, nfe, n = state
        last = h_abs >= jnp.abs(t1 - t)
        h = direction * jnp.where(last, jnp.abs(t1 - t), h_abs)
        y_new, err, k7 = _dopri5_step(f, y, t, h, k1)
        err_norm = rms(err / (atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y_new))))
        accept = err_norm <= 1.0
        factor = 0.9 * jnp.maximum(err_norm, 1e-10) ** -0.2
        factor = jnp.where(accept, jnp.clip(factor, 0.2, 10.0), jnp.clip(factor, 0.2, 1.0))
        t = jnp.where(accept, jnp.where(last, t1, t + h), t)
        y, k1 = jnp.where(accept, y_new, y), jnp.where(accept, k7, k1)
        return t, y, jnp.abs(h) * factor, k1, nfe + 6, n + 1

    def keep_going(state):
        return (state[0] != t1) & (state[5] < max_steps)

    state = (t0, y0, h0, k1, jnp.asarray(1, jnp.int32), jnp.asarray(0, jnp.int32))
    _, y, _, _, nfe, _ = lax.while_loop(keep_going, body, state)
    return y, nfe


@SAMPLERS.register('ode')
def sample_ode(
    keys: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    x_T: jax.Array,
    ts: Any,
    cond: Cond,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    noise_removal: bool = True,
    max_steps: int = 4096,
) -> tuple[jax.Array, jax.Array]:
    """Probability-flow ODE from ``ts[0]`` to ``ts[-1]`` with Dopri5, per sample (deterministic).

    The returned NFE is the number of batched score evaluations run (the per-sample maximum).
    """
    del keys
    rsde = sde.reverse(score_fn, probability_flow=True)
    t0, t1 = jnp.asarray(ts, x_T.dtype)[0], jnp.asarray(ts, x_T.dtype)[-1]

    def solve_one(x, c):
        c = jax.tree.map(lambda v: v[None], c)
        f = lambda t, y: rsde.sde(y[None], t[None], c)[0][0]
        y, nfe = dopri5(f, x, t0, t1, rtol, atol, max_steps)
        if noise_removal:
            y, nfe = denoise(score_fn, sde, y[None], t1[None], c)[0], nfe + 1
        return y, nfe

    x, nfe = jax.vmap(solve_one)(x_T, cond)
    return x, jnp.max(nfe)


# ----------------------------------------------------------------------------- few-step solvers


def _scaled_denoiser(score_fn: ScoreFn, sde: SDE, cond: Cond, projection: str):
    """``D(x_hat, t)``: the x_0 prediction from ``x_hat = x / alpha(t)``, optionally projected."""
    project = PROJECTIONS.get(projection)

    def denoiser(x_hat, t):
        vec_t = _full(x_hat, t)
        alpha, _ = alpha_std(sde, vec_t)
        x0 = denoise(score_fn, sde, batch_mul(alpha, x_hat), vec_t, cond)
        return x0 if projection == 'none' else project(x0, cond['lr'].astype(x0.dtype))

    return denoiser


def _scaled_start(sde: SDE, x_T: jax.Array, ts: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(ts, sigma(ts))`` as arrays and the start ``x_T / alpha(T)`` of the scaled variable."""
    ts = jnp.asarray(ts, x_T.dtype)
    alpha, std = alpha_std(sde, ts)
    return ts, std / alpha, x_T / alpha[0]


def _scaled_finish(denoiser, sde, x_hat, t_end, nfe, noise_removal):
    """Back to ``x = alpha x_hat``, or one more denoising step (Tweedie's x_0)."""
    if noise_removal:
        return denoiser(x_hat, t_end), jnp.asarray(nfe + 1, jnp.int32)
    alpha, _ = alpha_std(sde, t_end[None])
    return x_hat * alpha[0], jnp.asarray(nfe, jnp.int32)


@SAMPLERS.register('heun')
def sample_heun(
    keys: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    x_T: jax.Array,
    ts: Any,
    cond: Cond,
    *,
    noise_removal: bool = True,
    projection: str = 'none',
) -> tuple[jax.Array, jax.Array]:
    """EDM's deterministic 2nd-order Heun sampler (Karras et al. 2022, Alg. 1), 2 NFE a step."""
    del keys
    denoiser = _scaled_denoiser(score_fn, sde, cond, projection)
    ts, sigmas, x_hat = _scaled_start(sde, x_T, ts)

    def step(x_hat, inputs):
        t, t_next, s, s_next = inputs
        d = (x_hat - denoiser(x_hat, t)) / s
        x_euler = x_hat + (s_next - s) * d
        d_next = (x_euler - denoiser(x_euler, t_next)) / s_next
        return x_hat + (s_next - s) * 0.5 * (d + d_next), None

    x_hat, _ = lax.scan(step, x_hat, (ts[:-1], ts[1:], sigmas[:-1], sigmas[1:]))
    nfe = 2 * (ts.shape[0] - 1)
    return _scaled_finish(denoiser, sde, x_hat, ts[-1], nfe, noise_removal)


@SAMPLERS.register('dpm2m')
def sample_dpm2m(
    keys: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    x_T: jax.Array,
    ts: Any,
    cond: Cond,
    *,
    noise_removal: bool = True,
    projection: str = 'none',
    eta: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, multistep; 1 NFE a step.

    With ``lambda = -log sigma``, ``h = lambda_next - lambda`` and ``g = eta h``:
    ``x_hat' = (sigma'/sigma) e^-g x_hat - expm1(-h - g) D_2 + sigma' sqrt(-expm1(-2g)) z``,
    ``D_2 = (1 + 1/2r) D_n - (1/2r) D_{n-1}``, ``r = h_{n-1} / h_n``; the first step is first
    order. ``eta = 0`` is the deterministic solver of the probability-flow ODE; ``eta = 1`` is
    SDE-DPM-Solver++(2M) (k-diffusion's ``dpmpp_2m_sde``, midpoint form), a few-step solver of
    the reverse SDE whose injected noise corrects model errors as PC sampling does.
    """
    denoiser = _scaled_denoiser(score_fn, sde, cond, projection)
    ts, sigmas, x_hat = _scaled_start(sde, x_T, ts)

    def step(carry, inputs):
        x_hat, d_prev, h_prev = carry
        n, t, s, s_next = inputs
        d = denoiser(x_hat, t)
        h = jnp.log(s) - jnp.log(s_next)
        g = eta * h
        c = jnp.where(n == 0, 0.0, 0.5 * h / jnp.where(n == 0, 1.0, h_prev))
        d2 = (1.0 + c) * d - c * d_prev
        x_hat = (s_next / s) * jnp.exp(-g) * x_hat - jnp.expm1(-h - g) * d2
        if eta:
            noise = per_sample_normal(fold_keys(keys, n), x_hat)
            x_hat = x_hat + s_next * jnp.sqrt(-jnp.expm1(-2.0 * g)) * noise
        return (x_hat, d, h), None

    steps = ts.shape[0] - 1
    inputs = (jnp.arange(steps), ts[:-1], sigmas[:-1], sigmas[1:])
    init = (x_hat, jnp.zeros_like(x_hat), jnp.ones((), x_hat.dtype))
    (x_hat, _, _), _ = lax.scan(step, init, inputs)
    return _scaled_finish(denoiser, sde, x_hat, ts[-1], steps, noise_removal)


# ----------------------------------------------------------------------------- builders


def get_sampler(name: str) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """The registered ``sample_<name>`` function ('pc', 'ode', 'heun', 'dpm2m')."""
    return SAMPLERS.get(name)


def _check_discrete_predictor(config: Any, sde: SDE, num_steps: int) -> None:
    """reverse_diffusion and ancestral_sampling step along the SDE's own N-level tables."""
    if config.method != 'pc' or config.predictor not in ('reverse_diffusion', 'ancestral_sampling'):
        return
    if num_steps != sde.N or config.schedule != 'uniform':
        raise ValueError(
            f'the {config.predictor} predictor follows the SDE discretisation: it needs '
            f'sampling.num_steps = sde.N ({sde.N}) and sampling.schedule = "uniform"'
        )


def time_steps(config: Any, sde: SDE) -> np.ndarray:
    """The time grid of ``config.method`` from ``config.schedule`` (see the module docstring)."""
    num_steps = config.num_steps or sde.N
    _check_discrete_predictor(config, sde, num_steps)
    intervals = {'pc': num_steps - 1, 'ode': 1}.get(config.method, num_steps)
    if intervals < 1:
        raise ValueError(f'sampling.num_steps={num_steps} is too small for {config.method!r}')
    if config.schedule == 'karras':
        return get_ts_karras(sde, intervals, config.eps, config.rho)
    return SCHEDULES.get(config.schedule)(sde, intervals, config.eps)


def sampler_options(sampler: Callable, config: Any) -> dict[str, Any]:
    """The sampler's keyword-only options, read from the config fields of the same names."""
    params = inspect.signature(sampler).parameters
    names = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    if config.get('projection', 'none') != 'none' and 'projection' not in names:
        raise ValueError(f'sampling.method={config.method!r} has no data-consistency projection')
    return {n: config[n] for n in names if n in config}


def make_sampler(
    config: Any,
    sde: SDE,
    model: nn.Module,
    parametrization: str,
    shape: tuple[int, ...],
    mesh: Mesh | None = None,
    sigma_data: float = 0.5,
) -> SampleFn:
    """The jitted ``sample_fn(params, key, cond, sample_ids) -> (samples, {'nfe': ...})``.

    ``config`` is ``config.sampling``; ``shape`` is one sample's shape (H, W, C); the batch size
    is that of ``sample_ids``. Sample ``i`` depends only on ``(key, sample_ids[i], cond[i])``.
    ``params`` are an argument (compiled once per shape and config); with a ``mesh``, params and
    key are replicated and ``cond``/``sample_ids`` split over its 'data' axis. ``sigma_data``
    is ``config.score.sigma_data`` (used by the 'edm' parametrization).
    """
    sampler = get_sampler(config.method)
    ts, opts = time_steps(config, sde), sampler_options(sampler, config)

    def sample_fn(params, key, cond, sample_ids):
        score_fn = make_score_fn(model, params, sde, parametrization, sigma_data=sigma_data)
        prior_keys, loop_keys = split_keys(per_sample_keys(key, sample_ids))
        x_T = prior_sample(sde, prior_keys, shape)
        x, nfe = sampler(loop_keys, score_fn, sde, x_T, ts, cond, **opts)
        return x, {'nfe': nfe}

    if mesh is None:
        return jax.jit(sample_fn)
    replicated, split = replicated_sharding(mesh), batch_sharding(mesh)
    return jax.jit(
        sample_fn,
        in_shardings=(replicated, replicated, split, split),
        out_shardings=(split, replicated),
    )
