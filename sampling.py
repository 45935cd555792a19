"""Samplers: predictor-corrector, the probability-flow ODE (adaptive, diffrax) and few-step
solvers.

Every sampler is a small pure function registered in ``SAMPLERS``::

    sample_<name>(keys, score_fn, sde, u_T, ts, cond, **opts) -> (u_0, stats)

It runs on the SDE's state ``u`` (``sde_lib``'s frame: the data for VE/VP/sub-VP, the
normalised residual around the upsampled LR for ECDP); ``make_sampler`` draws ``u_T`` from the
prior and maps ``u_0`` back to data at the edge, so no sampler knows about condition-dependent
means. It scales ``u_T`` by ``config.temperature``, which only the deterministic samplers carry
to the sample; one that injects noise at every step refuses it (``check_temperature``).
``stats`` holds 'nfe' and 'unfinished' (``check_finished``).

``keys`` holds one PRNG key per sample, derived from ``fold_in(key, sample_id)``; the noise
that sample ``i`` receives at step ``n`` is drawn (vmapped over the batch) from
``fold_in(fold_in(keys[i], n), stream)``, so a sample never depends on the batch size, on the
other samples or on the device count. Adaptive and step-size decisions are also made per
sample (the Langevin step size uses per-sample norms, the ODE runs per sample under ``vmap``).

``ts`` is the time grid from a ``get_ts_*`` schedule (decreasing, ``T`` first):

* ``pc``: the N noise levels the predictor and corrector are evaluated at (score_sde's
  ``linspace(T, eps, N)``); step ``n`` has ``dt = t_{n+1} - t_n`` and the last step continues
  the grid below ``eps`` (score_sde's fixed ``dt = -1/N``).
* ``heun``/``dpm2m`` (``eta`` > 0: its SDE variant): K + 1 points, K steps from ``ts[0]`` to
  ``ts[-1] = eps``.
* ``ode``: only the ends are used; the adaptive solver chooses its own steps.
* ``student``: K + 1 points; the student is evaluated at the K levels ``ts[:-1]`` (one step:
  at ``T`` only). Uniform schedules of K and 2K steps are nested, so the levels of a 1-, 2- and
  4-step student are points of the grid its teacher was distilled on (``distillation.py``).

The few-step solvers work in the scaled variable ``u_hat = u / alpha(t)`` against
``sigma(t) = std(t) / alpha(t)`` (EDM), where ``mean = alpha(t) u_0`` and ``std(t)`` come from
the SDE; in that form the probability-flow ODE of every SDE here is
``d u_hat / d sigma = (u_hat - D(u_hat, sigma)) / sigma`` with the denoiser
``D = (u + std^2 score(u, t)) / alpha`` (Tweedie), so one solver serves them all.

Data consistency (``projection='ilvr'``) needs ``cond['lr']`` (LR size, model value range):
``u <- u - up(down(u)) + up(y)`` with the kernels that made the LR (``config.data``), against
the LR image in the state's frame (``lr_in_state``). The PC sampler projects the noisy state
after each predictor step onto the LR image perturbed to the same noise level,
``y = alpha(t) lr + std(t) z`` (ILVR, Choi et al. 2021; the predictor mean onto
``alpha(t) lr``); the deterministic few-step solvers project their u_0 prediction onto ``lr``
(DDNM-style), which needs no noise and keeps them deterministic. With antialiased kernels
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
import guidance as guidance_lib
import ode
from models.wrappers import make_score_fn
from sde_lib import SDE, ScoreFn, batch_mul
from utils.parallel import batch_sharding, replicated_sharding
from utils.registry import Registry

Cond = Mapping[str, jax.Array]
# What a sampler reports besides its samples: 'nfe' (score evaluations) and 'unfinished' (how
# many samples an adaptive solver left unfinished at its step bound; 0 for fixed grids).
Stats = dict[str, jax.Array]
SampleFn = Callable[[Any, jax.Array, Cond, jax.Array], tuple[jax.Array, Stats]]

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
    """``alpha(t)`` (``mean = alpha u_0``) and ``std(t)`` of the perturbation kernel, shape [B]."""
    return sde.mean_coeff(t), sde.marginal_std(t)


def denoise(score_fn: ScoreFn, sde: SDE, x: jax.Array, t: jax.Array, cond: Cond) -> jax.Array:
    """Tweedie's x_0 estimate ``(x + std^2 score) / alpha`` at times ``t`` [B]."""
    alpha, std = alpha_std(sde, t)
    return batch_mul(1.0 / alpha, x + batch_mul(std**2, score_fn(x, t, cond)))


def fixed_stats(nfe: int) -> Stats:
    """The report of a sampler with a fixed number of evaluations."""
    return {'nfe': jnp.asarray(nfe, jnp.int32), 'unfinished': jnp.zeros((), jnp.int32)}


def check_finished(stats: Mapping[str, Any], config: Any) -> None:
    """Raises if an adaptive solver stopped at ``max_steps`` before the end time for any
    sample: its state is not a sample at t = eps, and using it would be a silent failure."""
    unfinished = int(stats['unfinished'])
    if unfinished:
        raise RuntimeError(
            f'{unfinished} sample(s) reached sampling.max_steps={config.max_steps} before '
            f't = {config.eps} (sampling.method={config.method!r}, rtol={config.rtol}, '
            f'atol={config.atol}): raise max_steps or the tolerances'
        )


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
# A projection ``project(u, lr_target) -> u`` acts on the sampler's state; samplers take it as a
# callable (``None``: off) built by ``make_projection`` with the data's LR kernels.
Projection = Callable[[jax.Array, jax.Array], jax.Array]
# The LR target in the state's frame, added to ``cond`` by ``make_sampler`` when projecting.
LR_STATE = 'lr_state'


@PROJECTIONS.register('none')
def _no_projection(kernels: Any) -> None:
    """No data consistency."""
    del kernels


@PROJECTIONS.register('ilvr')
def _ilvr_projection(kernels: Any) -> Projection:
    """ILVR: replaces the low frequencies, ``u - up(down(u)) + up(lr_target)``, with the
    kernels that made the LR images (``data.down_kernel``, ``data.up_kernel``, ``antialias``)."""

    def project(u: jax.Array, lr_target: jax.Array) -> jax.Array:
        factor = u.shape[-3] // lr_target.shape[-3]
        down, up, aa = kernels.down_kernel, kernels.up_kernel, kernels.antialias
        low = degradations.upscale(degradations.downscale(u, factor, down, aa), factor, up, aa)
        target = degradations.upscale(lr_target, factor, up, aa)
        return (u - low + target).astype(u.dtype)

    return project


def make_projection(name: str, data_config: Any) -> Projection | None:
    """The projection ``sampling.projection`` with ``data_config``'s LR kernels."""
    return PROJECTIONS.get(name)(data_config)


def lr_in_state(sde: SDE, cond: Cond, data_config: Any) -> jax.Array:
    """``(lr - down(offset)) / scale``: the LR image of the state ``u`` (``sde_lib``'s frame).

    Projections are affine, so projecting ``x = offset + scale u`` onto ``lr`` is projecting
    ``u`` onto this target; for VE/VP/sub-VP it is ``lr`` itself.
    """
    lr = cond['lr']
    offset = jnp.broadcast_to(sde.offset(cond), cond['lr_up'].shape).astype(lr.dtype)
    factor = offset.shape[-3] // lr.shape[-3]
    down = degradations.downscale(offset, factor, data_config.down_kernel, data_config.antialias)
    return ((lr - down) / sde.scale).astype(lr.dtype)


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
    """The SDE's ancestral step (SMLD for VE, DDPM for VP; ``SDE.ancestral_step``)."""
    x_mean, std = sde.ancestral_step(x, t, score_fn(x, t, cond))
    return x_mean + batch_mul(std, per_sample_normal(keys, x)), x_mean


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
    alpha = sde.langevin_factor(t)

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
    scale = 2.0 * sde.langevin_factor(t) * (snr * sde.marginal_std(t)) ** 2
    return _langevin_loop(keys, score_fn, x, t, cond, n_steps, lambda grad, noise: scale)


# ----------------------------------------------------------------------------- PC sampler


def _project_noisy(project, keys, sde, x, x_mean, t, cond):
    """ILVR at time ``t``: ``x`` onto ``alpha lr + std z``, the predictor mean onto ``alpha lr``."""
    alpha, std = alpha_std(sde, t)
    lr = cond[LR_STATE].astype(x.dtype)
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
    projection: Projection | None = None,
) -> tuple[jax.Array, Stats]:
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
        if projection is not None:
            projection_keys = fold_keys(step_keys, _PROJECTION_STREAM)
            t_next = jnp.maximum(vec_t + dt, 0.0)
            x, x_mean = _project_noisy(projection, projection_keys, sde, x, x_mean, t_next, cond)
        return (x, x_mean), None

    (x, x_mean), _ = lax.scan(step, (x_T, x_T), (jnp.arange(ts.shape[0]), ts, dts))
    per_level = (predictor != 'none') + (corrector != 'none') * n_steps_each
    return (x_mean if noise_removal else x), fixed_stats(ts.shape[0] * per_level)


# ----------------------------------------------------------------------------- probability flow


@SAMPLERS.register('ode')
def sample_ode(
    keys: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    x_T: jax.Array,
    ts: Any,
    cond: Cond,
    *,
    ode_solver: str = 'dopri5',
    rtol: float = 1e-5,
    atol: float = 1e-5,
    noise_removal: bool = True,
    max_steps: int = 4096,
) -> tuple[jax.Array, Stats]:
    """Probability-flow ODE from ``ts[0]`` to ``ts[-1]``, adaptive, per sample (deterministic).

    Solved by ``ode.solve`` (diffrax). The NFE is the number of batched score evaluations run
    (the per-sample maximum); ``unfinished`` counts samples that hit ``max_steps``.
    """
    del keys
    opts = ode.ODEOptions(solver=ode_solver, rtol=rtol, atol=atol, max_steps=max_steps)
    field = probability_flow(score_fn, sde)
    t0, t1 = jnp.asarray(ts, x_T.dtype)[0], jnp.asarray(ts, x_T.dtype)[-1]

    def solve_one(x, c):
        c = jax.tree.map(lambda v: v[None], c)
        y, nfe, finished = ode.solve(field, x, t0, t1, opts, c)
        if noise_removal:
            y, nfe = denoise(score_fn, sde, y[None], t1[None], c)[0], nfe + 1
        return y, nfe, finished

    x, nfe, finished = jax.vmap(solve_one)(x_T, cond)
    return x, {'nfe': jnp.max(nfe), 'unfinished': jnp.sum(~finished).astype(jnp.int32)}


def probability_flow(score_fn: ScoreFn, sde: SDE) -> Callable[[jax.Array, jax.Array, Cond], Any]:
    """``field(t, u, cond)``: the probability-flow drift of one unbatched state ``u`` (``cond``
    with a batch axis of 1)."""
    rsde = sde.reverse(score_fn, probability_flow=True)

    def field(t, u, cond):
        return rsde.sde(u[None], jnp.reshape(t, (1,)), cond)[0][0]

    return field


# ----------------------------------------------------------------------------- few-step solvers


def _scaled_denoiser(score_fn: ScoreFn, sde: SDE, cond: Cond, project: Projection | None):
    """``D(x_hat, t)``: the x_0 prediction from ``x_hat = x / alpha(t)``, optionally projected."""

    def denoiser(x_hat, t):
        vec_t = _full(x_hat, t)
        alpha, _ = alpha_std(sde, vec_t)
        x0 = denoise(score_fn, sde, batch_mul(alpha, x_hat), vec_t, cond)
        return x0 if project is None else project(x0, cond[LR_STATE].astype(x0.dtype))

    return denoiser


def _scaled_start(sde: SDE, x_T: jax.Array, ts: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(ts, sigma(ts))`` as arrays and the start ``x_T / alpha(T)`` of the scaled variable."""
    ts = jnp.asarray(ts, x_T.dtype)
    alpha, std = alpha_std(sde, ts)
    return ts, std / alpha, x_T / alpha[0]


def _scaled_finish(denoiser, sde, x_hat, t_end, nfe, noise_removal):
    """Back to ``x = alpha x_hat``, or one more denoising step (Tweedie's x_0)."""
    if noise_removal:
        return denoiser(x_hat, t_end), fixed_stats(nfe + 1)
    alpha, _ = alpha_std(sde, t_end[None])
    return x_hat * alpha[0], fixed_stats(nfe)


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
    projection: Projection | None = None,
) -> tuple[jax.Array, Stats]:
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


def _dpm2m_scan(denoiser, x_hat, ts, sigmas, eta, keys):
    """The DPM-Solver++(2M) steps over the grid ``ts`` (either direction: on an increasing grid
    the same exponential integrator inverts the ODE, DDIM inversion's second-order form); the
    final ``x_hat`` and the ``x_hat`` after every step [K, B, ...]."""

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
        return (x_hat, d, h), x_hat

    steps = ts.shape[0] - 1
    inputs = (jnp.arange(steps), ts[:-1], sigmas[:-1], sigmas[1:])
    init = (x_hat, jnp.zeros_like(x_hat), jnp.ones((), x_hat.dtype))
    (x_hat, _, _), path = lax.scan(step, init, inputs)
    return x_hat, path


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
    projection: Projection | None = None,
    eta: float = 0.0,
) -> tuple[jax.Array, Stats]:
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
    x_hat, _ = _dpm2m_scan(denoiser, x_hat, ts, sigmas, eta, keys)
    return _scaled_finish(denoiser, sde, x_hat, ts[-1], ts.shape[0] - 1, noise_removal)


def dpm2m_trajectory(
    score_fn: ScoreFn, sde: SDE, u_start: jax.Array, ts: Any, cond: Cond, noise_removal: bool
) -> tuple[jax.Array, jax.Array]:
    """Deterministic DPM-Solver++(2M) from ``u_start`` at ``ts[0]`` along ``ts``: its output
    (as :func:`sample_dpm2m` gives it, with ``noise_removal``) and the state ``u`` at every
    point of ``ts`` [len(ts), B, ...] (``ts[0]``: ``u_start``). On an increasing grid it runs
    the ODE forwards, from data to noise (then use ``noise_removal=False``): the inversion of
    the same solver. What a student is distilled from (``distillation.py``)."""
    denoiser = _scaled_denoiser(score_fn, sde, cond, None)
    ts, sigmas, x_hat = _scaled_start(sde, u_start, ts)
    x_end, path = _dpm2m_scan(denoiser, x_hat, ts, sigmas, 0.0, None)
    alphas = sde.mean_coeff(ts)
    states = jnp.concatenate([u_start[None], path * alphas[1:].reshape(-1, *[1] * x_hat.ndim)])
    u_end, _ = _scaled_finish(denoiser, sde, x_end, ts[-1], 0, noise_removal)
    return u_end, states


@SAMPLERS.register('student')
def sample_student(
    keys: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    x_T: jax.Array,
    ts: Any,
    cond: Cond,
) -> tuple[jax.Array, Stats]:
    """A distilled student (``distillation.py``): its denoiser at ``ts[0] = T`` maps the prior
    draw to the sample in one network evaluation. With K = len(ts) - 1 > 1 steps (the levels
    ``ts[:-1]``), the estimate of step k is re-noised to level k + 1 with fresh noise,
    ``u = alpha x0 + std z`` (consistency models' multistep sampling, Song et al. 2023,
    Alg. 1), and denoised there again; K NFE."""
    ts = jnp.asarray(ts, x_T.dtype)
    x0 = denoise(score_fn, sde, x_T, _full(x_T, ts[0]), cond)

    def step(x0, inputs):
        n, t = inputs
        alpha, std = alpha_std(sde, _full(x0, t))
        noise = per_sample_normal(fold_keys(keys, n), x0)
        u = batch_mul(alpha, x0) + batch_mul(std, noise)
        return denoise(score_fn, sde, u, _full(x0, t), cond), None

    steps = ts.shape[0] - 1
    x0, _ = lax.scan(step, x0, (jnp.arange(1, steps), ts[1:-1]))
    return x0, fixed_stats(steps)


# ----------------------------------------------------------------------------- builders


def get_sampler(name: str) -> Callable[..., tuple[jax.Array, Stats]]:
    """The registered ``sample_<name>`` function ('pc', 'ode', 'heun', 'dpm2m', 'student')."""
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
    num_steps = config.num_steps or (1 if config.method == 'student' else sde.N)
    _check_discrete_predictor(config, sde, num_steps)
    intervals = {'pc': num_steps - 1, 'ode': 1}.get(config.method, num_steps)
    if intervals < 1:
        raise ValueError(f'sampling.num_steps={num_steps} is too small for {config.method!r}')
    if config.schedule == 'karras':
        return get_ts_karras(sde, intervals, config.eps, config.rho)
    return SCHEDULES.get(config.schedule)(sde, intervals, config.eps)


def fresh_noise(config: Any) -> str | None:
    """What makes ``config.method`` draw fresh noise at every step (None: nothing does).

    Such noise replaces the prior draw's: it is what ``config.temperature`` would have to scale,
    and it does not, so ``check_temperature`` refuses a temperature there. PC's predictors and
    correctors other than 'none' all inject noise, and so does its ILVR (the LR target is
    perturbed to each noise level); DPM-Solver++(2M) does when ``eta`` is not 0, and a
    student with more than one step (re-noised between its steps).
    """
    if config.method == 'pc':
        parts = [f'{k}={config[k]!r}' for k in ('predictor', 'corrector') if config[k] != 'none']
        if config.get('projection', 'none') != 'none':
            parts.append(f'projection={config.projection!r}')
        return ', '.join(parts) or None
    if config.method == 'dpm2m' and config.eta != 0:
        return f'eta={config.eta}'
    if config.method == 'student' and (config.num_steps or 1) > 1:
        return f'num_steps={config.num_steps}: re-noised between steps'
    return None


def check_temperature(config: Any) -> None:
    """Refuses a temperature other than 1 where the sampler injects fresh noise at every step.

    The temperature scales only the prior draw; a stochastic sampler replaces that draw's noise
    step by step, so a tempered run would silently sample at temperature 1 (measured: variance
    ratio 1.00 where 0.25 was asked). The deterministic samplers ('ode', 'heun', 'dpm2m' with
    ``eta=0``) map the prior draw to the sample, so there it acts.
    """
    noise = fresh_noise(config)
    if config.temperature != 1 and noise is not None:
        raise ValueError(
            f'config.sampling.temperature={config.temperature} cannot act with '
            f'sampling.method={config.method!r} ({noise}): it injects fresh noise at every '
            'step, which the temperature does not scale; set temperature=1, or use ode, heun '
            'or dpm2m with eta=0'
        )


def sampler_options(sampler: Callable, config: Any, data_config: Any) -> dict[str, Any]:
    """The sampler's keyword-only options, read from the ``config`` fields of the same names.

    A missing field is an error (never the sampler's default, silently); ``projection`` becomes
    the projection callable with ``data_config``'s LR kernels.
    """
    params = inspect.signature(sampler).parameters
    names = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    missing = [n for n in names if n not in config]
    if missing:
        raise ValueError(
            f'sampling.method={config.method!r} needs the config fields '
            f'{", ".join("sampling." + n for n in missing)}'
        )
    if config.get('projection', 'none') != 'none' and 'projection' not in names:
        raise ValueError(f'sampling.method={config.method!r} has no data-consistency projection')
    opts = {n: config[n] for n in names}
    if 'projection' in opts:
        opts['projection'] = make_projection(opts['projection'], data_config)
    return opts


def make_sampler(
    config: Any,
    sde: SDE,
    model: nn.Module,
    score_config: Any,
    data_config: Any,
    shape: tuple[int, ...],
    mesh: Mesh | None = None,
    guidance: guidance_lib.Guidance | None = None,
) -> SampleFn:
    """The jitted ``sample_fn(params, key, cond, sample_ids) -> (samples, stats)``.

    ``config`` is ``config.sampling``, ``score_config`` ``config.score`` and ``data_config``
    ``config.data`` (LR kernels of the projection); ``shape`` is one sample's shape (H, W, C);
    the batch size is that of ``sample_ids``. Sample ``i`` depends only on
    ``(key, sample_ids[i], cond[i])``. ``params`` are an argument (compiled once per shape and
    config); with a ``mesh``, params and key are replicated and ``cond``/``sample_ids`` split
    over its 'data' axis. Samplers run on the SDE's state ``u`` (``sde_lib``'s frame); samples
    are returned in data coordinates. ``stats``: 'nfe', 'unfinished' (see ``check_finished``).
    The prior draw is scaled by ``config.temperature``, which only the deterministic samplers
    propagate: a sampler that injects noise at every step refuses one other than 1, here,
    before anything is compiled (``check_temperature``). With ``guidance``, ``params`` is
    ``guidance.sampler_params(score_params, variables)`` and every sampler runs on the guided
    score (``guidance.py``); ``cond`` needs its targets.
    """
    sampler = get_sampler(config.method)
    ts, opts = time_steps(config, sde), sampler_options(sampler, config, data_config)
    check_temperature(config)
    projecting = opts.get('projection') is not None
    temperature = config.temperature

    def sample_fn(params, key, cond, sample_ids):
        if guidance is None:
            score_fn = make_score_fn(model, params, sde, score_config)
        else:
            score_fn = make_score_fn(model, params['score'], sde, score_config)
            score_fn = guidance_lib.guided_score_fn(score_fn, sde, guidance, params['guidance'])
        prior_keys, loop_keys = split_keys(per_sample_keys(key, sample_ids))
        u_T = temperature * prior_sample(sde, prior_keys, shape)
        if projecting:
            cond = {**cond, LR_STATE: lr_in_state(sde, cond, data_config)}
        u, stats = sampler(loop_keys, score_fn, sde, u_T, ts, cond, **opts)
        return sde.from_state(u, cond), stats

    if mesh is None:
        return jax.jit(sample_fn)
    replicated, split = replicated_sharding(mesh), batch_sharding(mesh)
    return jax.jit(
        sample_fn,
        in_shardings=(replicated, replicated, split, split),
        out_shardings=(split, replicated),
    )
