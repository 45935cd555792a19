"""Denoising score matching losses and the data-parallel train step.

Losses are registered by name (``config.training.loss``): ``dsm`` is the continuous-time
objective of Song et al. (2021) (``reduce_mean`` and ``likelihood_weighting`` options), ``smld``
and ``ddpm`` the discrete objectives of NCSN and DDPM, ``heads`` ECDP's regression of each
output head (eps, x0) to its target. A builder sees the network only as
``predict_model(params, dropout_key) -> predict_fn`` (``models.wrappers``: the score and every
head); every loss has the signature ``loss_fn(params, batch, key) -> loss`` with
``batch['hr']`` and ``batch['lr_up']`` already in the model's value range. Losses perturb the
SDE's state ``u = sde.to_state(hr, cond)`` (``sde_lib``'s frame), so one loss serves SDEs with
and without a condition-dependent mean.

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

import datasets
import distillation
import ode
import sampling
from models.wrappers import PredictFn, make_predict_fn, make_regress_fn, make_score_fn
from sde_lib import SDE, batch_mul
from utils.registry import Registry

Batch = Mapping[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array], jax.Array]
# ``predict_model(params, dropout_key) -> predict_fn``: the network wrapped for one set of params.
PredictModel = Callable[[Any, jax.Array], PredictFn]
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


def _cond(batch: Batch) -> dict[str, jax.Array]:
    """Everything in the batch but the target: the conditioning images (``lr_up``, ``lr``, a
    learned mean ``lr_mu``)."""
    return {k: v for k, v in batch.items() if k != 'hr'}


def _score_at(predict_model: PredictModel, params, key, x, t, batch):
    return predict_model(params, key)(x, t, _cond(batch))['score']


def _perturb(sde: SDE, batch: Batch, key: jax.Array, t_eps: float):
    """``(u0, t, z, u_t)``: the clean state, a uniform time in ``[t_eps, T]``, noise, and
    ``u_t = alpha(t) u0 + std(t) z``."""
    u0 = sde.to_state(batch['hr'], _cond(batch))
    t_key, z_key = jax.random.split(key)
    t = jax.random.uniform(t_key, (u0.shape[0],), minval=t_eps, maxval=sde.T)
    z = jax.random.normal(z_key, u0.shape)
    mean, std = sde.marginal_prob(u0, t)
    return u0, t, z, mean + batch_mul(std, z)


@LOSSES.register('dsm')
def get_dsm_loss_fn(sde: SDE, predict_model: PredictModel, tcfg: Any) -> LossFn:
    """Continuous DSM: ``E_t E_z || std(t) s(u_t, t) + z ||^2`` (or likelihood weighting)."""
    reduce = _reduce_fn(tcfg.reduce_mean)

    def loss_fn(params, batch, key):
        noise_key, drop_key = jax.random.split(key)
        x, t, z, perturbed = _perturb(sde, batch, noise_key, tcfg.eps)
        std = sde.marginal_std(t)
        score = _score_at(predict_model, params, drop_key, perturbed, t, batch)
        if tcfg.likelihood_weighting:
            g2 = sde.sde(jnp.zeros_like(perturbed), t)[1] ** 2
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
def get_smld_loss_fn(sde: SDE, predict_model: PredictModel, tcfg: Any) -> LossFn:
    """NCSN: ``sigma_i^2 || s(x + sigma_i z, sigma_i) + z / sigma_i ||^2`` over discrete sigmas."""
    if not hasattr(sde, 'discrete_sigmas'):
        raise ValueError('the smld loss needs discrete sigmas: config.sde.name="vesde"')
    reduce = _reduce_fn(tcfg.reduce_mean)

    def loss_fn(params, batch, key):
        x = sde.to_state(batch['hr'], _cond(batch))
        t_key, z_key, drop_key = jax.random.split(key, 3)
        idx, t = _discrete_t(sde, t_key, x.shape[0])
        sigma = sde.discrete_sigmas[idx]
        z = jax.random.normal(z_key, x.shape)
        score = _score_at(predict_model, params, drop_key, x + batch_mul(sigma, z), t, batch)
        return jnp.mean(reduce(jnp.square(batch_mul(sigma, score) + z)))

    return loss_fn


@LOSSES.register('ddpm')
def get_ddpm_loss_fn(sde: SDE, predict_model: PredictModel, tcfg: Any) -> LossFn:
    """DDPM: ``|| eps_hat - z ||^2`` with ``eps_hat = -sqrt(1 - alphabar_i) s(x_i, t_i)``."""
    if not hasattr(sde, 'alphas_cumprod'):
        raise ValueError('the ddpm loss needs a VP-type SDE (config.sde.name="vpsde"/"subvpsde")')
    reduce = _reduce_fn(tcfg.reduce_mean)

    def loss_fn(params, batch, key):
        x = sde.to_state(batch['hr'], _cond(batch))
        t_key, z_key, drop_key = jax.random.split(key, 3)
        idx, t = _discrete_t(sde, t_key, x.shape[0])
        alphabar = sde.alphas_cumprod[idx]
        z = jax.random.normal(z_key, x.shape)
        perturbed = batch_mul(jnp.sqrt(alphabar), x) + batch_mul(jnp.sqrt(1.0 - alphabar), z)
        score = _score_at(predict_model, params, drop_key, perturbed, t, batch)
        return jnp.mean(reduce(jnp.square(batch_mul(jnp.sqrt(1.0 - alphabar), score) + z)))

    return loss_fn


@LOSSES.register('heads')
def get_heads_loss_fn(sde: SDE, predict_model: PredictModel, tcfg: Any) -> LossFn:
    """ECDP: ``|| eps_hat - z ||^2 + || x0_hat - u0 ||^2`` over the heads the parametrization
    has (both for 'hybrid', one for the 'eps' and 'x0' ablations), equally weighted."""
    reduce = _reduce_fn(tcfg.reduce_mean)

    def loss_fn(params, batch, key):
        noise_key, drop_key = jax.random.split(key)
        u0, t, z, perturbed = _perturb(sde, batch, noise_key, tcfg.eps)
        heads = predict_model(params, drop_key)(perturbed, t, _cond(batch))
        targets = {name: target for name, target in (('eps', z), ('x0', u0)) if name in heads}
        if not targets:
            raise ValueError(
                'training.loss="heads" needs a parametrization with eps or x0 heads '
                '(config.score.parametrization = "hybrid", "eps" or "x0")'
            )
        losses = sum(reduce(jnp.square(heads[k] - v)) for k, v in targets.items())
        return jnp.mean(losses)

    return loss_fn


def generate(
    sde: SDE,
    score_model: Callable[[Any], Any],
    params: Any,
    cond: Mapping[str, jax.Array],
    key: jax.Array,
    opts: ode.ODEOptions,
    t_end: float,
) -> tuple[jax.Array, jax.Array]:
    """SR images (data coordinates) from the prior by the probability-flow ODE, per sample (each
    adaptive solve takes its own steps), and whether each solve finished.
    ``score_model(params) -> score_fn``; gradients reach ``params`` with every adjoint (they are
    the solver's explicit arguments)."""
    shape = cond['lr_up'].shape
    keys = jax.random.split(key, shape[0])
    u_T = jax.vmap(lambda k: sde.prior_sampling(k, shape[1:]))(keys)
    if opts.fixed_steps > 0:
        # Equal steps do not depend on the state: the batch is solved as one state (one batched
        # network call per evaluation, what ``ode.ODEOptions.unroll`` writes out), and every
        # sample still gets exactly the steps of its own solve.
        def batch_field(t, u, args):
            p, c = args
            rsde = sde.reverse(score_model(p), probability_flow=True)
            return rsde.sde(u, jnp.full(u.shape[:1], t, u.dtype), c)[0]

        u0, _, done = ode.solve(batch_field, u_T, sde.T, t_end, opts, (params, dict(cond)))
        return sde.from_state(u0, cond), jnp.broadcast_to(done, shape[:1])

    def field(t, u, args):
        p, c = args
        return sampling.probability_flow(score_model(p), sde)(t, u, c)

    def solve_one(u, c):
        c = jax.tree.map(lambda v: v[None], c)
        y, _, finished = ode.solve(field, u, sde.T, t_end, opts, (params, c))
        return y, finished

    u0, finished = jax.vmap(solve_one)(u_T, dict(cond))
    return sde.from_state(u0, cond), finished


def quality_ode_options(tcfg: Any) -> ode.ODEOptions:
    """The ODE options of the image-quality loss (``training.quality_*``)."""
    return ode.ODEOptions(
        solver=tcfg.quality_solver,
        rtol=tcfg.quality_tol,
        atol=tcfg.quality_tol,
        max_steps=tcfg.quality_max_steps,
        fixed_steps=tcfg.quality_fixed_steps,
        adjoint=tcfg.quality_adjoint,
        checkpoints=tcfg.quality_checkpoints,
        unroll=tcfg.quality_unroll,
    )


# Metrics of the image-quality loss (training.quality_weight > 0), logged with the loss.
QUALITY_UNFINISHED = 'quality_unfinished'  # Solves of the step that reached the step bound.
QUALITY_UNFINISHED_FRACTION = 'quality_unfinished_fraction'  # Of the step's solves.

# ``loss_and_metrics(params, batch, key) -> (loss, {name: scalar})``.
LossAndMetricsFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


# Losses on generated images, by name: ``per_image(images, hr) -> [B]``, both on [0, 1]. A term
# that makes an image (the ODE's sample, the regression estimate) applies each of its
# ``ImageLosses`` ``{name: (weight, per_image)}`` to it.
PerImageLoss = Callable[[jax.Array, jax.Array], jax.Array]
ImageLosses = Mapping[str, tuple[float, PerImageLoss]]


def feature_l1(features: Callable[[jax.Array], jax.Array]) -> PerImageLoss:
    """``mean |F(images) - F(hr)|`` per image (ECDP's image-quality loss with VGG16 as F)."""

    def per_image(images, hr):
        diff = jnp.abs(features(images) - features(hr))
        return jnp.mean(diff.reshape(diff.shape[0], -1), axis=-1)

    return per_image


def identity_distance(embed: Callable[[jax.Array], jax.Array]) -> PerImageLoss:
    """``1 - cos(f(images), f(hr))`` per image, ``f`` a frozen recogniser of unit embeddings:
    0 for the same face, near 1 for unrelated faces."""

    def per_image(images, hr):
        return 1.0 - jnp.sum(embed(images) * embed(hr), axis=-1)

    return per_image


def weighted_image_losses(
    losses: ImageLosses,
    images: jax.Array,
    hr: jax.Array,
    keep: jax.Array | None = None,
    report_one: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``sum_k w_k mean_k`` over the images ``keep`` marks (all if None; 0 if none), and each
    mean as a metric ``<name>_loss`` when there are several (or ``report_one``: a term with
    another loss of its own)."""
    terms, means = [], {}
    for name, (weight, per_image) in losses.items():
        values = per_image(images, hr)
        if keep is None:
            mean = jnp.mean(values)
        else:
            mean = jnp.sum(jnp.where(keep, values, 0.0)) / jnp.maximum(jnp.sum(keep), 1)
        means[f'{name}_loss'] = mean
        terms.append(weight * mean)
    return sum(terms[1:], terms[0]), (means if len(means) > 1 or report_one else {})


def get_quality_loss_and_metrics_fn(
    sde: SDE,
    predict_model: PredictModel,
    tcfg: Any,
    image_losses: ImageLosses,
    inverse_scaler: Callable[[jax.Array], jax.Array],
) -> LossAndMetricsFn:
    """Losses on ``SR_theta(y)`` generated through the probability-flow ODE from the prior
    (ECDP's image-quality loss ``|| F(SR) - F(x) ||_1``; the identity loss), weighted as
    ``image_losses`` says, with gradients through the solver (``training.quality_adjoint``:
    memory bounded by checkpoints, or the continuous adjoint), and how many solves reached
    ``quality_max_steps``.

    An unfinished solve's state is not a sample, so each loss is the mean over the finished
    solves only (0, without gradient, if none finished): counting it as 0 would lower the loss
    as solves fail. Inside the jitted step nothing can raise, so the count is returned as the
    metrics :data:`QUALITY_UNFINISHED` and :data:`QUALITY_UNFINISHED_FRACTION`; the training
    driver logs them and stops above ``training.quality_max_unfinished``."""
    opts = quality_ode_options(tcfg)

    def loss_fn(params, batch, key):
        noise_key, drop_key = jax.random.split(key)
        score_model = lambda p: lambda u, t, c: predict_model(p, drop_key)(u, t, c)['score']
        sr, finished = generate(
            sde, score_model, params, _cond(batch), noise_key, opts, tcfg.quality_t_end
        )
        to_images = lambda x: jnp.clip(inverse_scaler(x), 0.0, 1.0)
        images, hr = to_images(sr), to_images(batch['hr'])
        loss, metrics = weighted_image_losses(image_losses, images, hr, finished)
        unfinished = (finished.shape[0] - jnp.sum(finished)).astype(jnp.float32)
        return loss, {
            **metrics,
            QUALITY_UNFINISHED: unfinished,
            QUALITY_UNFINISHED_FRACTION: unfinished / finished.shape[0],
        }

    return loss_fn


def get_quality_loss_fn(
    sde: SDE,
    predict_model: PredictModel,
    tcfg: Any,
    features: Callable[[jax.Array], jax.Array],
    inverse_scaler: Callable[[jax.Array], jax.Array],
) -> LossFn:
    """ECDP's image-quality loss alone, ``|| F(SR) - F(x) ||_1`` (weight 1; benchmarks,
    tests): :func:`get_quality_loss_and_metrics_fn` without its metrics."""
    loss_and_metrics = get_quality_loss_and_metrics_fn(
        sde, predict_model, tcfg, {'quality': (1.0, feature_l1(features))}, inverse_scaler
    )
    return lambda params, batch, key: loss_and_metrics(params, batch, key)[0]


def check_quality_solves(metrics: Mapping[str, Any], step: int, tcfg: Any) -> None:
    """Raises, naming the step, when more of its quality-loss solves than the fraction
    ``training.quality_max_unfinished`` reached the step bound: the loss then describes only
    the easy faces (or none), and training on would look like progress while it is not."""
    fraction = float(metrics.get(QUALITY_UNFINISHED_FRACTION, 0.0))
    if fraction > tcfg.quality_max_unfinished:
        raise RuntimeError(
            f'step {step}: {int(metrics[QUALITY_UNFINISHED])} quality-loss solves '
            f'({fraction:.0%}) reached training.quality_max_steps={tcfg.quality_max_steps} '
            f'before t = {tcfg.quality_t_end}, more than training.quality_max_unfinished='
            f'{tcfg.quality_max_unfinished}: raise quality_max_steps or quality_tol, or use '
            'quality_fixed_steps'
        )


def make_predict_model(config: Any, sde: SDE, model: nn.Module, train: bool) -> PredictModel:
    """``predict_model(params, dropout_key) -> predict_fn`` for ``config.score``."""

    def predict_model(params: Any, key: jax.Array) -> PredictFn:
        return make_predict_fn(model, params, sde, config.score, train=train, dropout_key=key)

    return predict_model


def get_regression_loss_fn(
    model: nn.Module,
    weight: float = 1.0,
    image_losses: ImageLosses | None = None,
    inverse_scaler: Callable[[jax.Array], jax.Array] = lambda x: x,
) -> LossAndMetricsFn:
    """``weight`` x the mean absolute error of the LR encoder's regression estimate against the
    HR image (model range): ECDP's L1 pre-training of the encoder; plus ``image_losses`` on
    the estimate (the identity loss: a "regression + identity" mu(y)). Only the encoder and
    its head are computed (``make_regress_fn``)."""

    def loss_fn(params, batch, key):
        del key
        estimate = make_regress_fn(model, params)(_cond(batch))
        loss = weight * jnp.mean(jnp.abs(estimate - batch['hr']))
        if not image_losses:
            return loss, {}
        to_images = lambda x: jnp.clip(inverse_scaler(x), 0.0, 1.0)
        extra, metrics = weighted_image_losses(
            image_losses, to_images(estimate), to_images(batch['hr']), report_one=True
        )
        return loss + extra, {**metrics, 'regression_l1': loss / weight}

    return loss_fn


def _image_losses(config: Any, base: dict[str, tuple[float, PerImageLoss]]) -> ImageLosses:
    """``base`` and, with ``training.identity_weight > 0``, the identity loss through the JAX
    SFace (``models.sface``; frozen: its weights are constants of the step)."""
    weight = config.training.identity_weight
    if weight == 0:
        return base
    from models import sface

    params = sface.load_sface_params()
    embed = lambda images: sface.identity_embed(params, images)
    return {**base, 'identity': (weight, identity_distance(embed))}


def _vgg_loss(weight: float) -> dict[str, tuple[float, PerImageLoss]]:
    """``{'quality': (weight, VGG16 feature L1)}`` (ECDP's image-quality loss); {} at 0."""
    if weight == 0:
        return {}
    from evaluation.lpips import make_vgg_features

    vgg, vgg_params = make_vgg_features()
    return {'quality': (weight, feature_l1(lambda images: vgg(vgg_params, images)))}


def _quality_loss(config: Any, sde: SDE, predict_model: PredictModel) -> LossAndMetricsFn:
    return get_quality_loss_and_metrics_fn(
        sde,
        predict_model,
        config.training,
        _image_losses(config, _vgg_loss(config.training.quality_weight)),
        datasets.get_data_inverse_scaler(config.data.centered),
    )


def _distill_loss(
    config: Any, sde: SDE, model: nn.Module, predict_model: PredictModel, teacher_params: Any
) -> LossAndMetricsFn:
    """The student's terms (``distillation.make_loss_fn``) against the frozen teacher."""
    if teacher_params is None:
        raise ValueError("config.training.distill_weight > 0 needs the teacher's parameters")
    inverse = datasets.get_data_inverse_scaler(config.data.centered)
    return distillation.make_loss_fn(
        sde,
        lambda p, key: lambda u, t, c: predict_model(p, key)(u, t, c)['score'],
        make_score_fn(model, teacher_params, sde, config.score),
        config,
        _image_losses(config, _vgg_loss(config.training.distill_quality_weight)),
        weighted_image_losses,
        lambda x: jnp.clip(inverse(x), 0.0, 1.0),
    )


def _regression_loss(config: Any, model: nn.Module) -> LossAndMetricsFn:
    identity = _image_losses(config, {})
    return get_regression_loss_fn(
        model,
        config.training.regression_weight,
        identity,
        datasets.get_data_inverse_scaler(config.data.centered),
    )


def _without_metrics(loss_fn: LossFn) -> LossAndMetricsFn:
    return lambda params, batch, key: (loss_fn(params, batch, key), {})


def make_loss_fn(
    config: Any,
    sde: SDE,
    model: nn.Module,
    train: bool = True,
    with_metrics: bool = False,
    teacher_params: Any = None,
) -> LossFn | LossAndMetricsFn:
    """The weighted sum of the terms whose weight is not 0: ``diffusion_weight`` x the loss
    named by ``config.training.loss``, ``quality_weight`` x ECDP's image-quality loss through
    the ODE, ``regression_weight`` x the L1 of the LR encoder's regression, ``distill_weight``
    x a student's distillation from the frozen ``teacher_params`` (``distillation.py``);
    ``identity_weight`` x ``1 - cos(f(image), f(HR))`` on the image each of the last three
    makes (the ODE's sample, the regression estimate, the student's one-step sample; the terms
    weigh their own losses).

    ``with_metrics``: ``(loss, metrics)``, the terms' own metrics (the quality loss's
    unfinished solves), for :func:`make_train_step` with ``has_aux``."""
    tcfg = config.training
    predict_model = make_predict_model(config, sde, model, train)
    builders = {  # name: (weight applied here, term); image terms weigh their own losses.
        'diffusion': lambda: (
            tcfg.diffusion_weight,
            _without_metrics(LOSSES.get(tcfg.loss)(sde, predict_model, tcfg)),
        ),
        'quality': lambda: (1.0, _quality_loss(config, sde, predict_model)),
        'regression': lambda: (1.0, _regression_loss(config, model)),
        'distill': lambda: (1.0, _distill_loss(config, sde, model, predict_model, teacher_params)),
    }
    terms = {name: build() for name, build in builders.items() if tcfg[f'{name}_weight'] != 0}
    if not terms:
        raise ValueError(
            'config.training: diffusion_weight, quality_weight, regression_weight and '
            'distill_weight are all 0'
        )
    if tcfg.identity_weight != 0 and not {'quality', 'regression', 'distill'} & terms.keys():
        raise ValueError(
            'config.training.identity_weight > 0 needs a term that makes an image to judge: '
            'quality_weight > 0 (the ODE sample), regression_weight > 0 (mu(y)) or '
            'distill_weight > 0 (a student)'
        )

    def loss_and_metrics(params, batch, key):
        if len(terms) == 1:  # A single term sees the step's key itself.
            keys = dict.fromkeys(terms, key)
        else:
            keys = dict(zip(builders, jax.random.split(key, len(builders)), strict=True))
        total, metrics = 0.0, {}
        for name, (weight, term) in terms.items():
            value, term_metrics = term(params, batch, keys[name])
            total = total + (value if weight == 1 else weight * value)
            metrics.update(term_metrics)
        return total, metrics

    if with_metrics:
        return loss_and_metrics
    return lambda params, batch, key: loss_and_metrics(params, batch, key)[0]


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
    has_aux: bool = False,
):
    """A pure ``train_step(state, batch, key) -> (state, metrics)``; key folded with step.

    ``has_aux``: ``loss_fn`` returns ``(loss, metrics)`` (``make_loss_fn(with_metrics=True)``),
    and those metrics join the step's."""
    loss_and_metrics = loss_fn if has_aux else _without_metrics(loss_fn)

    def train_step(state: TrainState, batch: Batch, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        scaled = {k: data_scaler(v) for k, v in batch.items()}  # Every entry is an image.
        (loss, term_metrics), grads = jax.value_and_grad(loss_and_metrics, has_aux=True)(
            state.params, scaled, key
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(
            lambda e, p: ema_rate * e + (1.0 - ema_rate) * p, state.ema_params, params
        )
        metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), 'lr': schedule(state.step)}
        metrics.update(term_metrics)
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
