"""Forward SDEs of Song et al. (2021): VE, VP and sub-VP, plus their reverses.

Everything SDE-specific lives here: drift and diffusion, perturbation kernels, priors, the
discrete SMLD/DDPM tables, and the time label that the score network is conditioned on.
``make_sde(config.sde, stats)`` is the only constructor used by the rest of the code.

**Frames.** An SDE may be defined around a condition-dependent mean: ECDP's mean-reverting SDE
``dx = -1/2 beta(t) (x - mu(y)) dt + sigma sqrt(beta(t)) dw`` diffuses only the residual around
the upsampled LR image ``mu(y)``. Every SDE therefore owns an affine *frame*,
``u = (x - offset(cond)) / scale`` (offset 0 and scale 1 for VE, VP and sub-VP), and every other
method here (drift, marginals, prior, discretisations, reverse) describes the process ``u``.
Samplers, losses and parametrizations work on ``u`` and map to data coordinates only at their
edges with :meth:`SDE.to_state` / :meth:`SDE.from_state`, so one implementation of each serves
every SDE (ECDP's ``u`` is the standard VP SDE of the normalised residual).

Times ``t`` are arrays of shape ``[B]``; states ``x`` are ``[B, ...]``.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from utils.registry import Registry

ScoreFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
SDES = Registry('sde')


def batch_mul(v: jax.Array, x: jax.Array) -> jax.Array:
    """Multiplies a per-example ``[B]`` array into ``[B, ...]`` by broadcasting."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) * x


def _sum_except_batch(x: jax.Array) -> jax.Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def standard_normal_logp(z: jax.Array, std: float = 1.0) -> jax.Array:
    """Log-density of an isotropic ``N(0, std^2 I)`` per example of ``z``."""
    dim = math.prod(z.shape[1:])
    return -dim / 2.0 * jnp.log(2 * jnp.pi * std**2) - _sum_except_batch(z**2) / (2.0 * std**2)


class SDE(abc.ABC):
    """``du = f(u, t) dt + g(t) dw`` on ``t in [0, T]``, with ``N`` discretisation steps, for the
    state ``u = (x - offset(cond)) / scale`` of data ``x`` (see the module docstring)."""

    N: int

    @property
    def T(self) -> float:  # noqa: N802 (the paper's name)
        return 1.0

    @property
    def scale(self) -> float:
        """Scale of the frame: data units per state unit."""
        return 1.0

    def offset(self, cond: Any) -> jax.Array | float:
        """Condition-dependent mean the process reverts to, in data coordinates (0 here)."""
        del cond
        return 0.0

    def to_state(self, x: jax.Array, cond: Any) -> jax.Array:
        """Data ``x`` -> state ``u = (x - offset(cond)) / scale``."""
        return (x - self.offset(cond)) / self.scale

    def from_state(self, u: jax.Array, cond: Any) -> jax.Array:
        """State ``u`` -> data ``x = offset(cond) + scale u``."""
        return self.offset(cond) + self.scale * u

    def data_sde(self, x: jax.Array, t: jax.Array, cond: Any) -> tuple[jax.Array, jax.Array]:
        """Drift and diffusion of the same SDE in data coordinates (``dx = scale du``)."""
        drift, diffusion = self.sde(self.to_state(x, cond), t)
        return self.scale * drift, self.scale * diffusion

    def ve_equivalent(self, u: jax.Array, t: jax.Array, cond: Any) -> tuple[jax.Array, jax.Array]:
        """The state ``u`` at time ``t`` as a VE perturbation in data coordinates.

        With ``u = alpha(t) u0 + std(t) z`` and ``x0 = offset + scale u0``, the image
        ``x_ve = offset + scale u / alpha`` is ``x0 + sigma_ve z`` with
        ``sigma_ve = scale std / alpha`` (shape [B]): what a noise-aware classifier trained on VE
        perturbations of the data (SRDG) sees. It equals
        ``(x_t - (1 - alpha) offset) / alpha`` for the data-space state ``x_t``.
        """
        alpha, std = self.mean_coeff(t), self.marginal_std(t)
        x_ve = self.offset(cond) + self.scale * batch_mul(1.0 / alpha, u)
        return x_ve, self.scale * std / alpha

    def ancestral_step(
        self, x: jax.Array, t: jax.Array, score: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Mean and std [B] of one ancestral (SMLD / DDPM) step down from level ``t``."""
        raise ValueError(
            f'{type(self).__name__} has no ancestral step (SMLD sigmas or DDPM betas): '
            'use the reverse_diffusion or euler_maruyama predictor'
        )

    def langevin_factor(self, t: jax.Array) -> jax.Array:
        """score_sde's Langevin step-size factor: ``1 - beta_i`` for DDPM chains, else 1."""
        return jnp.ones_like(t)

    @abc.abstractmethod
    def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Drift ``f(x, t)`` (shape of x) and diffusion ``g(t)`` (shape [B])."""

    @abc.abstractmethod
    def marginal_prob(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean (shape of x) and std (shape [B]) of ``p_t(x(t) | x(0) = x)``."""

    @abc.abstractmethod
    def prior_sampling(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """A sample of the prior ``p_T``."""

    @abc.abstractmethod
    def prior_logp(self, z: jax.Array) -> jax.Array:
        """Log-density of the prior per example of ``z``."""

    @abc.abstractmethod
    def time_label(self, t: jax.Array) -> jax.Array:
        """What the score network is conditioned on at time ``t`` (sigma for VE, 999 t for VP)."""

    def marginal_std(self, t: jax.Array) -> jax.Array:
        """Std of the perturbation kernel at ``t``; independent of x for these SDEs."""
        return self.marginal_prob(jnp.zeros((jnp.shape(t)[0], 1)), t)[1]

    def mean_coeff(self, t: jax.Array) -> jax.Array:
        """``alpha(t)`` with ``mean = alpha(t) x(0)``; shape [B]."""
        return self.marginal_prob(jnp.ones((jnp.shape(t)[0], 1)), t)[0][:, 0]

    def discrete_index(self, t: jax.Array) -> jax.Array:
        """The index in ``0..N-1`` of the discrete noise level nearest below ``t``."""
        return (t * (self.N - 1) / self.T).astype(jnp.int32)

    def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Euler-Maruyama ``x_{i+1} = x_i + f_i + G_i z_i`` with ``dt = T / N``."""
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * jnp.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or its probability-flow ODE) driven by ``score_fn``."""
        return ReverseSDE(self, score_fn, probability_flow)


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """Reverse of ``forward`` given ``score_fn(x, t, cond)``; time still runs in ``[0, T]``."""

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    def _weight(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def sde(self, x: jax.Array, t: jax.Array, cond: Any) -> tuple[jax.Array, jax.Array]:
        drift, diffusion = self.forward.sde(x, t)
        score = self.score_fn(x, t, cond)
        drift = drift - batch_mul(diffusion**2 * self._weight(), score)
        return drift, jnp.zeros_like(diffusion) if self.probability_flow else diffusion

    def discretize(self, x: jax.Array, t: jax.Array, cond: Any) -> tuple[jax.Array, jax.Array]:
        f, G = self.forward.discretize(x, t)
        rev_f = f - batch_mul(G**2 * self._weight(), self.score_fn(x, t, cond))
        return rev_f, jnp.zeros_like(G) if self.probability_flow else G


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
    """Variance exploding SDE: ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000

    def sigma(self, t: jax.Array) -> jax.Array:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    @property
    def discrete_sigmas(self) -> jax.Array:
        return jnp.exp(jnp.linspace(np.log(self.sigma_min), np.log(self.sigma_max), self.N))

    def sde(self, x, t):
        diffusion = self.sigma(t) * np.sqrt(2 * (np.log(self.sigma_max) - np.log(self.sigma_min)))
        return jnp.zeros_like(x), diffusion

    def marginal_prob(self, x, t):
        return x, self.sigma(t)

    def prior_sampling(self, key, shape):
        return jax.random.normal(key, shape) * self.sigma_max

    def prior_logp(self, z):
        return standard_normal_logp(z, self.sigma_max)

    def time_label(self, t):
        return self.sigma(t)

    def ancestral_step(self, x, t, score):
        """SMLD's ancestral step from sigma_i to sigma_{i-1}."""
        idx = self.discrete_index(t)
        sigma = self.discrete_sigmas[idx]
        adjacent = jnp.where(idx == 0, 0.0, self.discrete_sigmas[jnp.maximum(idx - 1, 0)])
        x_mean = x + batch_mul(sigma**2 - adjacent**2, score)
        return x_mean, jnp.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)

    def discretize(self, x, t):
        """SMLD: ``x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z``."""
        timestep = self.discrete_index(t)
        sigmas = self.discrete_sigmas
        sigma = sigmas[timestep]
        adjacent = jnp.where(timestep == 0, 0.0, sigmas[jnp.maximum(timestep - 1, 0)])
        return jnp.zeros_like(x), jnp.sqrt(sigma**2 - adjacent**2)


@dataclasses.dataclass(frozen=True)
class VPSDE(SDE):
    """Variance preserving SDE (continuous DDPM), ``beta(t)`` linear in t."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def beta(self, t: jax.Array) -> jax.Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: jax.Array) -> jax.Array:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    @property
    def discrete_betas(self) -> jax.Array:
        return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @property
    def alphas_cumprod(self) -> jax.Array:
        return jnp.cumprod(1.0 - self.discrete_betas)

    def sde(self, x, t):
        beta = self.beta(t)
        return batch_mul(-0.5 * beta, x), jnp.sqrt(beta)

    def marginal_prob(self, x, t):
        lmc = self.log_mean_coeff(t)
        return batch_mul(jnp.exp(lmc), x), jnp.sqrt(1.0 - jnp.exp(2.0 * lmc))

    def prior_sampling(self, key, shape):
        return jax.random.normal(key, shape)

    def prior_logp(self, z):
        return standard_normal_logp(z)

    def time_label(self, t):
        return t * 999.0

    def discretize(self, x, t):
        """DDPM: ``x_{i+1} = sqrt(1 - beta_{i+1}) x_i + sqrt(beta_{i+1}) z``."""
        beta = self.discrete_betas[self.discrete_index(t)]
        return batch_mul(jnp.sqrt(1.0 - beta), x) - x, jnp.sqrt(beta)

    def ancestral_step(self, x, t, score):
        """DDPM's ancestral step: ``(x + beta_i score) / sqrt(1 - beta_i)``, std sqrt(beta_i)."""
        beta = self.discrete_betas[self.discrete_index(t)]
        return batch_mul(1.0 / jnp.sqrt(1.0 - beta), x + batch_mul(beta, score)), jnp.sqrt(beta)

    def langevin_factor(self, t):
        return 1.0 - self.discrete_betas[self.discrete_index(t)]


@dataclasses.dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """Sub-VP SDE: the VP drift with diffusion ``beta(t) (1 - exp(-2 int beta))``."""

    def sde(self, x, t):
        beta = self.beta(t)
        discount = 1.0 - jnp.exp(-2.0 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
        return batch_mul(-0.5 * beta, x), jnp.sqrt(beta * discount)

    def marginal_prob(self, x, t):
        lmc = self.log_mean_coeff(t)
        return batch_mul(jnp.exp(lmc), x), 1.0 - jnp.exp(2.0 * lmc)

    def discretize(self, x, t):
        return SDE.discretize(self, x, t)

    def ancestral_step(self, x, t, score):
        """Sub-VP's marginals are not the DDPM chain's (alpha^2 + std^2 != 1)."""
        return SDE.ancestral_step(self, x, t, score)


@dataclasses.dataclass(frozen=True)
class MeanRevertingSDE(VPSDE):
    """ECDP (Yuan & Yuan, AAAI 2024): ``dx = -1/2 beta(t) (x - mu(y)) dt + sigma sqrt(beta(t)) dw``.

    ``mu(y) = cond[mean_key]`` (the upsampled LR image, or a learned regression: ``lr_mu``)
    and ``sigma^2`` the variance of ``x - mu(y)`` over the training set (``--mode stats``).
    Marginals: mean ``sqrt(abar)(x0 - mu) + mu``, variance ``(1 - abar) sigma^2``,
    ``abar = exp(-int beta)``; prior ``N(mu(y), sigma^2 I)``. In the frame
    ``u = (x - mu(y)) / sigma`` it is exactly the VP SDE (inherited), so if ``x0 - mu`` has
    mean 0 and variance ``sigma^2`` every marginal has mean ``mu(y)`` and variance ``sigma^2``
    (the paper's Proposition 1).
    """

    sigma: float = 1.0
    mean_key: str = 'lr_up'

    @property
    def scale(self) -> float:
        return self.sigma

    def offset(self, cond):
        return cond[self.mean_key]


# A factory sees the config and ``stats()``, which returns the training-set statistics stored
# with the run (``runs.Run.read_stats``) or raises naming the missing file.
Stats = Callable[[], Mapping[str, float]]


@SDES.register('vesde')
def _make_vesde(cfg: Any, stats: Stats) -> VESDE:
    return VESDE(sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, N=cfg.num_scales)


@SDES.register('vpsde')
def _make_vpsde(cfg: Any, stats: Stats) -> VPSDE:
    return VPSDE(beta_min=cfg.beta_min, beta_max=cfg.beta_max, N=cfg.num_scales)


@SDES.register('subvpsde')
def _make_subvpsde(cfg: Any, stats: Stats) -> SubVPSDE:
    return SubVPSDE(beta_min=cfg.beta_min, beta_max=cfg.beta_max, N=cfg.num_scales)


@SDES.register('ecdp')
def _make_ecdp(cfg: Any, stats: Stats) -> MeanRevertingSDE:
    sigma = math.sqrt(stats()['residual_var'])
    # A learned mu(y) (``mean_model.py``) arrives as cond['lr_mu']; bicubic as cond['lr_up'].
    mean_key = 'lr_mu' if cfg.get('mean_model', '') else 'lr_up'
    return MeanRevertingSDE(
        beta_min=cfg.beta_min,
        beta_max=cfg.beta_max,
        N=cfg.num_scales,
        sigma=sigma,
        mean_key=mean_key,
    )


def _no_stats() -> Mapping[str, float]:
    raise ValueError('this SDE needs the training-set statistics of the run (--mode stats)')


def make_sde(sde_config: Any, stats: Stats = _no_stats) -> SDE:
    """Builds the SDE named by ``sde_config.name`` ('vesde', 'vpsde', 'subvpsde', 'ecdp').

    ``stats()`` is called only by SDEs that need the training-set statistics (ECDP's sigma).
    """
    return SDES.get(sde_config.name)(sde_config, stats)
