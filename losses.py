"""Denoising score matching losses and the data-parallel train step.

Losses are registered by name (``config.training.loss``): ``dsm`` is the continuous-time
objective of Song et al. (2021) (``reduce_mean`` and ``likelihood_weighting`` options), ``smld``
and ``ddpm`` the discrete objectives of NCSN and DDPM. A builder sees the network only as
``score_model(params, dropout_key) -> score_fn``; every loss has the signature
``loss_fn(params, batch, key) -> loss`` with ``batch['hr']`` and ``batch['lr_up']`` already in
the model's value range.

The train step is pure, ``train_step(state, batch, key) -> (state, metrics)``, and is made
data-parallel only at the edge, by :func:`jit_train_step`: the state is replicated, the batch is
split over the ``data`` axis of a device mesh, and since the loss is a mean over the *global*
batch, XLA's all-reduce averages gradients across devices (and hosts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from models.wrappers import make_score_fn
from sde_lib import SDE, ScoreFn, batch_mul
from utils.registry import Registry

Batch = Mapping[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array], jax.Array]
# ``score_model(params, dropout_key) -> score_fn``: the network wrapped for one set of params.
ScoreModel = Callable[[Any, jax.Array], ScoreFn]
LOSSES = Registry('loss')


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def _reduce_fn(reduce_mean: bool) -> Callable[[jax.Array], jax.Array]:
    """Per-example reduction: mean over pixels, or score_sde's half-sum."""
    if reduce_mean:
        return lambda x: jnp.mean(x.reshape(x.shape[0], -1), axis=-1)
    return lambda x: 0.5 * jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def _score_at(score_model: ScoreModel, params, key, x, t, batch):
    return score_model(params, key)(x, t, {'lr_up': batch['lr_up']})


@LOSSES.register('dsm')
def get_dsm_loss_fn(sde: SDE, score_model: ScoreModel, tcfg: Any) -> LossFn:
    """Continuous DSM: ``E_t E_z || std(t) s(x_t, t) + z ||^2`` (or likelihood weighting)."""
    reduce = _reduce_fn(tcfg.reduce_mean)

    def loss_fn(params, batch, key):
        x = batch['hr']
        t_key, z_key, drop_key = jax.random.split(key, 3)
        t = jax.random.uniform(t_key, (x.shape[0],), minval=tcfg.eps, maxval=sde.T)
        z = jax.random.normal(z_key, x.shape)
        mean, std = sde.marginal_prob(x, t)
        perturbed = mean + batch_mul(std, z)
        score = _score_at(score_model, params, drop_key, perturbed, t, batch)
        if tcfg.likelihood_weighting:
            g2 = sde.sde(jnp.zeros_like(x), t)[1] ** 2
            losses = reduce(jnp.square(score + batch_mul(1.0 / std, z))) * g2
        else:
            losses = reduce(jnp.square(batch_mul(std, score) + z))
        return jnp.mean(losses)

    return loss_fn


def _discrete_t(sde: SDE, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """A random discrete level ``i`` and its time ``t_i = i / (N - 1) T``."""
    idx = jax.random.randint(key, (batch_size,), 0, sde.N)
    return idx, idx / (sde.N - 1) * sde.T


@LOSSES.register('smld')
def get_smld_loss_fn(sde: SDE, score_model: ScoreModel, tcfg: Any) -> LossFn:
    """NCSN: ``sigma_i^2 || s(x + sigma_i z, sigma_i) + z / sigma_i ||^2`` over discrete sigmas."""
    if not hasattr(sde, 'discrete_sigmas'):
        raise ValueError('the smld loss needs discrete sigmas: config.sde.name="vesde"')
    reduce = _reduce_fn(tcfg.reduce_mean)

    def loss_fn(params, batch, key):
        x = batch['hr']
        t_key, z_key, drop_key = jax.random.split(key, 3)
        idx, t = _discrete_t(sde, t_key, x.shape[0])
        sigma = sde.discrete_sigmas[idx]
        z = jax.random.normal(z_key, x.shape)
        score = _score_at(score_model, params, drop_key, x + batch_mul(sigma, z), t, batch)
        return jnp.mean(reduce(jnp.square(batch_mul(sigma, score) + z)))

    return loss_fn


@LOSSES.register('ddpm')
def get_ddpm_loss_fn(sde: SDE, score_model: ScoreModel, tcfg: Any) -> LossFn:
    """DDPM: ``|| eps_hat - z ||^2`` with ``eps_hat = -sqrt(1 - alphabar_i) s(x_i, t_i)``."""
    if not hasattr(sde, 'alphas_cumprod'):
        raise ValueError('the ddpm loss needs a VP-type SDE (config.sde.name="vpsde"/"subvpsde")')
    reduce = _reduce_fn(tcfg.reduce_mean)

    def loss_fn(params, batch, key):
        x = batch['hr']
        t_key, z_key, drop_key = jax.random.split(key, 3)
        idx, t = _discrete_t(sde, t_key, x.shape[0])
        alphabar = sde.alphas_cumprod[idx]
        z = jax.random.normal(z_key, x.shape)
        perturbed = batch_mul(jnp.sqrt(alphabar), x) + batch_mul(jnp.sqrt(1.0 - alphabar), z)
        score = _score_at(score_model, params, drop_key, perturbed, t, batch)
        return jnp.mean(reduce(jnp.square(batch_mul(jnp.sqrt(1.0 - alphabar), score) + z)))

    return loss_fn


def make_loss_fn(config: Any, sde: SDE, model: nn.Module, train: bool = True) -> LossFn:
    """The loss named by ``config.training.loss``."""
    build = LOSSES.get(config.training.loss)

    def score_model(params: Any, key: jax.Array) -> ScoreFn:
        return make_score_fn(
            model,
            params,
            sde,
            config.score.parametrization,
            train=train,
            dropout_key=key,
            sigma_data=config.score.sigma_data,
        )

    return build(sde, score_model, config.training)


def learning_rate_schedule(optim: Any) -> optax.Schedule:
    """Linear warm-up from 0 to ``optim.lr`` over ``optim.warmup`` steps, then constant."""
    if optim.warmup <= 0:
        return optax.constant_schedule(optim.lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim.lr, optim.warmup), optax.constant_schedule(optim.lr)],
        [optim.warmup],
    )


def make_optimizer(optim: Any) -> optax.GradientTransformation:
    """Adam(W) after global-norm clipping (``grad_clip`` <= 0 turns clipping off)."""
    schedule = learning_rate_schedule(optim)
    if optim.optimizer != 'adam':
        raise ValueError(f'config.optim.optimizer={optim.optimizer!r}: only "adam" is supported')
    adam = optax.adamw(
        schedule, b1=optim.beta1, b2=optim.beta2, eps=optim.eps, weight_decay=optim.weight_decay
    )
    clip = optax.clip_by_global_norm(optim.grad_clip) if optim.grad_clip > 0 else optax.identity()
    return optax.chain(clip, adam)


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=optimizer.init(params),
    )


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    ema_rate: float,
    schedule: optax.Schedule,
    data_scaler: Callable[[jax.Array], jax.Array] = lambda x: x,
):
    """A pure ``train_step(state, batch, key) -> (state, metrics)``; key folded with step."""

    def train_step(state: TrainState, batch: Batch, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        scaled = {'hr': data_scaler(batch['hr']), 'lr_up': data_scaler(batch['lr_up'])}
        loss, grads = jax.value_and_grad(loss_fn)(state.params, scaled, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(
            lambda e, p: ema_rate * e + (1.0 - ema_rate) * p, state.ema_params, params
        )
        metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), 'lr': schedule(state.step)}
        return TrainState(state.step + 1, params, ema, opt_state), metrics

    return train_step


def jit_train_step(train_step: Callable, mesh: Mesh, data_axis: str = 'data') -> Callable:
    """Jits ``train_step`` with a replicated state and a batch split over ``data_axis``."""
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(data_axis))
    return jax.jit(
        train_step,
        in_shardings=(replicated, batch_sharding, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
