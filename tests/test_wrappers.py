"""The score wrapper: parametrizations and input scaling against hand-computed values."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from models.utils import ScoreNetwork
from models.wrappers import make_score_fn, score_options

SDES = {'vesde': sde_lib.VESDE(0.01, 50.0, N=100), 'vpsde': sde_lib.VPSDE(0.1, 20.0, N=100)}


class RecordingNet(ScoreNetwork):
    """Returns 0.3 everywhere."""

    @nn.compact
    def __call__(self, x, label, train=False, lr=None):
        return jnp.full(x.shape[:-1] + (3,), 0.3) + 0 * self.param('b', nn.initializers.zeros, ())


@pytest.mark.parametrize('name', sorted(SDES))
def test_edm_preconditioning_matches_hand_computation(name):
    sde = SDES[name]
    t = jnp.array([0.05, 0.5, 0.95])
    x = jnp.linspace(-2.0, 2.0, 3 * 4 * 4 * 3).reshape(3, 4, 4, 3)
    cond = {'lr_up': jnp.ones_like(x)}
    sigma_data = 0.5
    score = make_score_fn(
        RecordingNet(), {'b': jnp.zeros(())}, sde, score_options('edm', sigma_data)
    )(x, t, cond)
    alpha = np.asarray(sde.mean_coeff(t))[:, None, None, None]
    std = np.asarray(sde.marginal_std(t))[:, None, None, None]
    sigma = std / alpha
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / np.sqrt(sigma**2 + sigma_data**2)
    denoised = c_skip * np.asarray(x) / alpha + c_out * 0.3
    np.testing.assert_allclose(score, (alpha * denoised - np.asarray(x)) / std**2, rtol=1e-4)


def test_edm_network_input_has_unit_scale():
    sde = SDES['vesde']
    t = jnp.array([0.9])
    x = jnp.full((1, 4, 4, 3), 40.0)
    sigma = float(sde.marginal_std(t)[0])
    seen = {}

    class Spy(RecordingNet):
        def __call__(self, inp, label, train=False, lr=None):
            seen['input'] = inp
            return super().__call__(inp, label, train)

    make_score_fn(Spy(), {'b': jnp.zeros(())}, sde, score_options('edm'))(
        x, t, {'lr_up': jnp.zeros_like(x)}
    )
    np.testing.assert_allclose(seen['input'][..., :3], 40.0 / np.sqrt(sigma**2 + 0.25), rtol=1e-5)
    np.testing.assert_allclose(seen['input'][..., 3:], 0.0)
