"""The one place a raw network becomes ``score_fn(x, t, cond)``.

The wrapper owns low-resolution conditioning (the noisy HR image and the LR image upsampled to
HR size are concatenated on channels), the time label the network sees (``sde.time_label``)
and the output parametrization. Samplers, losses and guidance only ever see ``score_fn``.

``cond`` is a mapping; ``cond['lr_up']`` is the upsampled LR image in the model's value range.
Further keys (attributes for guidance, ...) pass through untouched, so adding a conditioning
signal never changes a sampler's signature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_lib import SDE, ScoreFn, batch_mul
from utils.registry import Registry

ScoreMap = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, float], jax.Array]
InputScale = Callable[[jax.Array, jax.Array, float], jax.Array]


def _unit_scale(alpha: jax.Array, std: jax.Array, sigma_data: float) -> jax.Array:
    del alpha, sigma_data
    return jnp.ones_like(std)


@dataclasses.dataclass(frozen=True)
class Parametrization:
    """How the network's input is scaled and its output becomes the score.

    Both functions see the SDE's perturbation ``x = alpha x0 + std z`` at time t through
    ``alpha`` and ``std`` (shape [B]); ``to_score(output, x, alpha, std, sigma_data)``.
    """

    to_score: ScoreMap
    input_scale: InputScale = _unit_scale


PARAMETRIZATIONS = Registry('score parametrization')
PARAMETRIZATIONS.register('score')(Parametrization(lambda out, x, a, std, sd: out))
# NCSN++ ``scale_by_sigma``: the network predicts ``std * score``.
PARAMETRIZATIONS.register('scaled_score')(
    Parametrization(lambda out, x, a, std, sd: batch_mul(1.0 / std, out))
)
# DDPM: the network predicts the noise, ``score = -eps / std``.
PARAMETRIZATIONS.register('eps')(
    Parametrization(lambda out, x, a, std, sd: batch_mul(-1.0 / std, out))
)


def _edm_sigma(alpha: jax.Array, std: jax.Array) -> jax.Array:
    return std / alpha  # Noise level of x / alpha = x0 + sigma z.


def _edm_input_scale(alpha: jax.Array, std: jax.Array, sigma_data: float) -> jax.Array:
    return 1.0 / (alpha * jnp.sqrt(_edm_sigma(alpha, std) ** 2 + sigma_data**2))


def _edm_to_score(out, x, alpha, std, sigma_data):
    """Karras et al. (2022) preconditioning: ``D = c_skip x/alpha + c_out F`` estimates x0,
    so an imperfect network gives bounded x0 errors at every noise level."""
    sigma = _edm_sigma(alpha, std)
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / jnp.sqrt(sigma**2 + sigma_data**2)
    denoised = batch_mul(c_skip / alpha, x) + batch_mul(c_out, out)
    return batch_mul(1.0 / std**2, batch_mul(alpha, denoised) - x)


PARAMETRIZATIONS.register('edm')(Parametrization(_edm_to_score, _edm_input_scale))


def network_input(x: jax.Array, cond: Mapping[str, jax.Array]) -> jax.Array:
    """Channel-concatenates the noisy HR image with the upsampled LR image (3 + 3 channels)."""
    return jnp.concatenate([x, cond['lr_up'].astype(x.dtype)], axis=-1)


def make_score_fn(
    model: nn.Module,
    params: Any,
    sde: SDE,
    parametrization: str,
    train: bool = False,
    dropout_key: jax.Array | None = None,
    sigma_data: float = 0.5,
) -> ScoreFn:
    """Wraps ``model`` with ``params`` into ``score_fn(x, t, cond)``.

    With ``train=True`` dropout is active and needs ``dropout_key``. ``sigma_data`` is the
    data std assumed by the 'edm' parametrization.
    """
    param = PARAMETRIZATIONS.get(parametrization)
    rngs = {'dropout': dropout_key} if train else {}
    if train and dropout_key is None:
        raise ValueError('make_score_fn(train=True) needs a dropout_key')

    def score_fn(x: jax.Array, t: jax.Array, cond: Mapping[str, jax.Array]) -> jax.Array:
        alpha, std = sde.mean_coeff(t), sde.marginal_std(t)
        scaled = batch_mul(param.input_scale(alpha, std, sigma_data), x)
        output = model.apply(
            {'params': params},
            network_input(scaled, cond),
            sde.time_label(t),
            train=train,
            rngs=rngs,
        )
        return param.to_score(output, x, alpha, std, sigma_data)

    return score_fn


def init_params(
    model: nn.Module, key: jax.Array, image_shape: tuple[int, ...], batch_size: int = 1
) -> Any:
    """Initial parameters for HR images of ``image_shape`` = (H, W, C)."""
    x = jnp.zeros((batch_size, *image_shape))
    cond = {'lr_up': x}
    t = jnp.ones((batch_size,))
    return model.init({'params': key, 'dropout': key}, network_input(x, cond), t, train=False)[
        'params'
    ]
