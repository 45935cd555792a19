"""The one place a raw network becomes ``predict_fn(u, t, cond)`` and ``score_fn(u, t, cond)``.

The wrapper owns low-resolution conditioning (the noisy state and the LR image upsampled to
HR size are concatenated on channels), the time label the network sees (``sde.time_label``)
and the output parametrization. ``u`` is the SDE's state (``sde_lib``'s frame: the data itself
for VE/VP/sub-VP, the normalised residual around the upsampled LR for ECDP), so the score is
the score of ``u``. Samplers and guidance see ``score_fn``; losses see ``predict_fn``, whose
dictionary holds ``'score'`` and every head of a multi-head parametrization (``'eps'``,
``'x0'``) so that a loss can regress each head to its own target.

``cond`` is a mapping; ``cond['lr_up']`` is the upsampled LR image in the model's value range,
``cond['lr']`` the LR image itself (read by a network with an LR encoder, whose regression
estimate of the HR image is returned as the extra output ``'regression'``: ``model.aux_heads``).
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
import ml_collections

from sde_lib import SDE, ScoreFn, batch_mul
from utils.registry import Registry

Heads = dict[str, jax.Array]
# ``predict_fn(u, t, cond) -> {'score': ..., <head>: ...}``.
PredictFn = Callable[[jax.Array, jax.Array, Any], Heads]
# ``to_score(outputs, u, alpha, std, options) -> {'score': ..., <head>: ...}``.
HeadsMap = Callable[[Heads, jax.Array, jax.Array, jax.Array, Any], Heads]
InputScale = Callable[[jax.Array, jax.Array, Any], jax.Array]


def _unit_scale(alpha: jax.Array, std: jax.Array, options: Any) -> jax.Array:
    del alpha, options
    return jnp.ones_like(std)


@dataclasses.dataclass(frozen=True)
class Parametrization:
    """How the network's input is scaled and its output heads become the score.

    The network outputs ``len(heads)`` images of the data's channel count, concatenated on
    channels; ``to_score`` receives them by name. Both functions see the perturbation
    ``u = alpha u0 + std z`` at time t through ``alpha`` and ``std`` (shape [B]) and
    ``options`` (``config.score``: ``sigma_data``, ``hybrid_c``).
    """

    to_score: HeadsMap
    input_scale: InputScale = _unit_scale
    heads: tuple[str, ...] = ('out',)


def _single(fn: Callable[..., jax.Array]) -> HeadsMap:
    """A one-head parametrization whose score is ``fn(out, u, alpha, std, options)``."""
    return lambda outs, u, a, std, opts: {'score': fn(outs['out'], u, a, std, opts)}


PARAMETRIZATIONS = Registry('score parametrization')
PARAMETRIZATIONS.register('score')(Parametrization(_single(lambda out, u, a, std, o: out)))
# NCSN++ ``scale_by_sigma``: the network predicts ``std * score``.
PARAMETRIZATIONS.register('scaled_score')(
    Parametrization(_single(lambda out, u, a, std, o: batch_mul(1.0 / std, out)))
)


def _eps_score(eps: jax.Array, std: jax.Array) -> jax.Array:
    """``s = -eps / std``: the score implied by a noise estimate."""
    return batch_mul(-1.0 / std, eps)


def _x0_score(x0: jax.Array, u: jax.Array, alpha: jax.Array, std: jax.Array) -> jax.Array:
    """``s = -(u - alpha x0) / std^2``: the score implied by a clean-state estimate."""
    return batch_mul(-1.0 / std**2, u - batch_mul(alpha, x0))


def _hybrid_weight(alpha: jax.Array, options: Any) -> jax.Array:
    """ECDP's ``lambda(t) = abar(t)^c`` with ``abar = alpha^2 = exp(-int beta)`` (c = 1 in the
    paper's code): the eps head dominates at low noise (lambda -> 1 as t -> 0), where an x0
    error is divided by std^2; the x0 head dominates at high noise, where it is well posed."""
    return (alpha**2) ** options.hybrid_c


def _hybrid(outs: Heads, u, alpha, std, options) -> Heads:
    """ECDP: ``s = lambda s_eps + (1 - lambda) s_x0`` from two heads of one network."""
    lam = _hybrid_weight(alpha, options)
    score = batch_mul(lam, _eps_score(outs['eps'], std)) + batch_mul(
        1.0 - lam, _x0_score(outs['x0'], u, alpha, std)
    )
    return {'score': score, 'eps': outs['eps'], 'x0': outs['x0']}


# DDPM: the network predicts the noise, ``score = -eps / std``.
PARAMETRIZATIONS.register('eps')(
    Parametrization(
        lambda outs, u, a, std, o: {'score': _eps_score(outs['eps'], std), 'eps': outs['eps']},
        heads=('eps',),
    )
)
# The network predicts the clean state u0 (ECDP's x0-only ablation).
PARAMETRIZATIONS.register('x0')(
    Parametrization(
        lambda outs, u, a, std, o: {'score': _x0_score(outs['x0'], u, a, std), 'x0': outs['x0']},
        heads=('x0',),
    )
)
PARAMETRIZATIONS.register('hybrid')(Parametrization(_hybrid, heads=('eps', 'x0')))


def _edm_sigma(alpha: jax.Array, std: jax.Array) -> jax.Array:
    return std / alpha  # Noise level of x / alpha = x0 + sigma z.


def _edm_input_scale(alpha: jax.Array, std: jax.Array, options: Any) -> jax.Array:
    return 1.0 / (alpha * jnp.sqrt(_edm_sigma(alpha, std) ** 2 + options.sigma_data**2))


def _edm_to_score(out, u, alpha, std, options):
    """Karras et al. (2022) preconditioning: ``D = c_skip u/alpha + c_out F`` estimates u0,
    so an imperfect network gives bounded u0 errors at every noise level."""
    sigma, sigma_data = _edm_sigma(alpha, std), options.sigma_data
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / jnp.sqrt(sigma**2 + sigma_data**2)
    denoised = batch_mul(c_skip / alpha, u) + batch_mul(c_out, out)
    return _x0_score(denoised, u, alpha, std)


PARAMETRIZATIONS.register('edm')(Parametrization(_single(_edm_to_score), _edm_input_scale))


def score_options(
    parametrization: str, sigma_data: float = 0.5, hybrid_c: float = 1.0
) -> ml_collections.ConfigDict:
    """A ``config.score`` built in code (tests, notebooks); ``configs/default.py`` documents it."""
    return ml_collections.ConfigDict(
        {'parametrization': parametrization, 'sigma_data': sigma_data, 'hybrid_c': hybrid_c}
    )


def get_parametrization(name: str) -> Parametrization:
    """The registered parametrization ``name`` (``config.score.parametrization``)."""
    return PARAMETRIZATIONS.get(name)


def network_input(u: jax.Array, cond: Mapping[str, jax.Array]) -> jax.Array:
    """Channel-concatenates the noisy state with the upsampled LR image (C + C channels)."""
    return jnp.concatenate([u, cond['lr_up'].astype(u.dtype)], axis=-1)


def _split_heads(output: jax.Array, heads: tuple[str, ...]) -> Heads:
    if output.shape[-1] % len(heads):
        raise ValueError(
            f'the network outputs {output.shape[-1]} channels, not a multiple of the '
            f'{len(heads)} heads {heads}: set config.model.out_channels'
        )
    return dict(zip(heads, jnp.split(output, len(heads), axis=-1), strict=True))


def apply_network(
    model: nn.Module, params: Any, x: jax.Array, t_label: jax.Array, cond: Any, **kwargs: Any
) -> jax.Array:
    """The raw network on ``x`` (state and condition, concatenated) at ``t_label``; the LR
    image ``cond['lr']`` goes along when the condition has it (the LR encoder reads it)."""
    return model.apply({'params': params}, x, t_label, lr=cond.get('lr'), **kwargs)


def make_regress_fn(model: nn.Module, params: Any) -> Callable[[Any], jax.Array]:
    """``regress(cond)``: the LR encoder's regression estimate of the HR image (model range),
    ``cond['lr']`` in, the size of ``cond['lr_up']`` out; the U-Net is not evaluated."""
    if 'regression' not in model.aux_heads:
        raise ValueError('the network has no LR regression head: set config.model.lr_encoder_nf')
    return lambda cond: model.regress(params, cond['lr'], cond['lr_up'].shape[1:3])


def make_predict_fn(
    model: nn.Module,
    params: Any,
    sde: SDE,
    score_config: Any,
    train: bool = False,
    dropout_key: jax.Array | None = None,
) -> PredictFn:
    """Wraps ``model`` with ``params`` into ``predict_fn(u, t, cond) -> heads``.

    ``score_config`` is ``config.score`` (``parametrization``, ``sigma_data``, ``hybrid_c``).
    With ``train=True`` dropout is active and needs ``dropout_key``.
    """
    param = get_parametrization(score_config.parametrization)
    rngs = {'dropout': dropout_key} if train else {}
    if train and dropout_key is None:
        raise ValueError('make_predict_fn(train=True) needs a dropout_key')

    def predict_fn(u: jax.Array, t: jax.Array, cond: Mapping[str, jax.Array]) -> Heads:
        alpha, std = sde.mean_coeff(t), sde.marginal_std(t)
        scaled = batch_mul(param.input_scale(alpha, std, score_config), u)
        output = apply_network(
            model,
            params,
            network_input(scaled, cond),
            sde.time_label(t),
            cond,
            train=train,
            rngs=rngs,
        )
        outs = _split_heads(output, param.heads + model.aux_heads)
        aux = {name: outs.pop(name) for name in model.aux_heads}
        return {**param.to_score(outs, u, alpha, std, score_config), **aux}

    return predict_fn


def make_score_fn(
    model: nn.Module,
    params: Any,
    sde: SDE,
    score_config: Any,
    train: bool = False,
    dropout_key: jax.Array | None = None,
) -> ScoreFn:
    """``score_fn(u, t, cond)``: the ``'score'`` of :func:`make_predict_fn`."""
    predict_fn = make_predict_fn(model, params, sde, score_config, train, dropout_key)
    return lambda u, t, cond: predict_fn(u, t, cond)['score']


def init_params(
    model: nn.Module,
    key: jax.Array,
    image_shape: tuple[int, ...],
    batch_size: int = 1,
    lr_shape: tuple[int, ...] | None = None,
) -> Any:
    """Initial parameters for HR images of ``image_shape`` = (H, W, C) (and LR images of
    ``lr_shape``, which a network with an LR encoder needs)."""
    x = jnp.zeros((batch_size, *image_shape))
    cond = {'lr_up': x}
    if lr_shape is not None:
        cond['lr'] = jnp.zeros((batch_size, *lr_shape))
    t = jnp.ones((batch_size,))
    variables = model.init(
        {'params': key, 'dropout': key}, network_input(x, cond), t, train=False, lr=cond.get('lr')
    )
    return variables['params']
