"""The one place a raw network becomes ``score_fn(x, t, cond)``.

The wrapper owns low-resolution conditioning (the noisy HR image and the LR image upsampled to
HR size are concatenated on channels), the time label the network sees (``sde.time_label``)
and the output parametrization. Samplers, losses and guidance only ever see ``score_fn``.

``cond`` is a mapping; ``cond['lr_up']`` is the upsampled LR image in the model's value range.
Further keys (attributes for guidance, ...) pass through untouched, so adding a conditioning
signal never changes a sampler's signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_lib import SDE, ScoreFn, batch_mul
from utils.registry import Registry

# A parametrization maps (network output, std(t)) to the score.
PARAMETRIZATIONS = Registry('score parametrization')


@PARAMETRIZATIONS.register('score')
def _score(output: jax.Array, std: jax.Array) -> jax.Array:
    """The network predicts the score itself."""
    del std
    return output


@PARAMETRIZATIONS.register('scaled_score')
def _scaled_score(output: jax.Array, std: jax.Array) -> jax.Array:
    """NCSN++ ``scale_by_sigma``: the network predicts ``sigma * score``."""
    return batch_mul(1.0 / std, output)


@PARAMETRIZATIONS.register('eps')
def _eps(output: jax.Array, std: jax.Array) -> jax.Array:
    """DDPM: the network predicts the noise, ``score = -eps / std``."""
    return batch_mul(-1.0 / std, output)


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
) -> ScoreFn:
    """Wraps ``model`` with ``params`` into ``score_fn(x, t, cond)``.

    With ``train=True`` dropout is active and needs ``dropout_key``.
    """
    to_score = PARAMETRIZATIONS.get(parametrization)
    rngs = {'dropout': dropout_key} if train else {}
    if train and dropout_key is None:
        raise ValueError('make_score_fn(train=True) needs a dropout_key')

    def score_fn(x: jax.Array, t: jax.Array, cond: Mapping[str, jax.Array]) -> jax.Array:
        output = model.apply(
            {'params': params}, network_input(x, cond), sde.time_label(t), train=train, rngs=rngs
        )
        return to_score(output, sde.marginal_std(t))

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
