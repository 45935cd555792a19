"""The identity loss ``training.identity_weight`` (issue 20): ``1 - cos(f(image), f(HR))`` with
the frozen JAX SFace on the images the loss terms make; off, the step is today's program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import datasets
import losses
from configs import default
from models import build_model, sface
from models.wrappers import init_params, make_regress_fn

HR, DOWNSCALE, BATCH = 64, 4, 8


def _config(**training):
    """A small LR-encoder model at the shipped 4x geometry (64x64 from 16x16)."""
    config = default.get_config()
    config.unlock()
    config.model.update(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                        out_channels=6, lr_encoder_nf=16, lr_encoder_blocks=1,
                        lr_encoder_growth=8, progressive_input='none')  # fmt: skip
    config.sde.name, config.score.parametrization = 'vpsde', 'hybrid'
    config.data.update(image_size=HR, downscale=DOWNSCALE, cache_mb=0)
    config.training.update(loss='heads', diffusion_weight=0.0, **training)
    return config


def _model(config):
    return build_model('ncsnpp', **{k: v for k, v in config.model.items() if k != 'name'})


def _params(model):
    lr = (HR // DOWNSCALE, HR // DOWNSCALE, 3)
    return init_params(model, jax.random.key(0), (HR, HR, 3), lr_shape=lr)


def _batch(seed: int = 0) -> dict:
    lr = jax.random.uniform(jax.random.key(seed), (2, HR // DOWNSCALE, HR // DOWNSCALE, 3))
    lr_up = jax.image.resize(lr, (2, HR, HR, 3), 'bicubic')
    return {'lr': 2 * lr - 1, 'lr_up': 2 * lr_up - 1, 'hr': 2 * lr_up - 1}


def test_identity_weight_zero_builds_todays_program(monkeypatch):
    """``identity_weight = 0``: no recogniser is loaded, and the regression loss is the same
    program as before the identity loss existed (so the same step, bit for bit)."""

    def refuse(*args, **kwargs):
        raise AssertionError('the recogniser must not be loaded with identity_weight = 0')

    monkeypatch.setattr(sface, 'load_sface_params', refuse)
    config = _config(regression_weight=2.0, identity_weight=0.0)
    model = _model(config)
    params, batch, key = _params(model), _batch(), jax.random.key(1)
    ours = losses.make_loss_fn(config, None, model)

    def todays(p, b, k):  # The loss as it was written before (losses.py at 8b35bb8).
        del k
        return 0.0 + 2.0 * jnp.mean(jnp.abs(make_regress_fn(model, p)(losses._cond(b)) - b['hr']))

    assert str(jax.make_jaxpr(ours)(params, batch, key)) == str(
        jax.make_jaxpr(todays)(params, batch, key)
    )


def test_identity_weight_needs_an_image_to_judge():
    config = _config(regression_weight=0.0, identity_weight=1.0)
    config.training.diffusion_weight = 1.0
    with pytest.raises(ValueError, match='identity_weight > 0 needs a term that makes an image'):
        losses.make_loss_fn(config, None, _model(config))


def test_identity_loss_trains_down_on_real_faces(celeba_id128):
    """L1 regression + identity on 8 real faces: a few steps lower the identity loss of mu(y)
    (the regression starts at bicubic), and the loss reports both parts."""
    config = _config(regression_weight=1.0, identity_weight=1.0)
    config.data.path = str(celeba_id128)
    config.optim.update(lr=2e-3, warmup=0)
    model = _model(config)
    scaler = datasets.get_data_scaler(config.data.centered)
    raw = next(datasets.get_dataset(config.data, 'train', BATCH, train=False))
    batch = {k: jnp.asarray(raw[k]) for k in ('hr', 'lr', 'lr_up')}
    step = jax.jit(
        losses.make_train_step(
            losses.make_loss_fn(config, None, model, with_metrics=True),
            losses.make_optimizer(config.optim),
            config.optim.ema_rate,
            losses.learning_rate_schedule(config.optim),
            scaler,
            has_aux=True,
        )
    )
    state = losses.init_train_state(_params(model), losses.make_optimizer(config.optim))
    identity = []
    for _ in range(8):
        state, metrics = step(state, batch, jax.random.key(2))
        identity.append(float(metrics['identity_loss']))
        expected = metrics['regression_l1'] + metrics['identity_loss']
        np.testing.assert_allclose(float(metrics['loss']), float(expected), rtol=1e-5)
    assert step._cache_size() == 1  # One compilation for every step.
    assert 0.0 < identity[0] < 1.0 and identity[-1] < identity[0] - 0.02, identity
