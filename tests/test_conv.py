"""models/conv.py: loop-friendly convolution gradients equal lax's own, and the compiled loop
uses only canonical (NHWC/HWIO) convolutions."""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import models
from models import conv

CASES = [  # (kernel, padding, input H x W)
    ((3, 3), 'SAME', (9, 7)),
    ((1, 1), 'SAME', (6, 6)),
    ((3, 3), 'VALID', (8, 9)),
    ((5, 3), ((1, 3), (0, 2)), (7, 8)),  # Asymmetric explicit padding, non-square kernel.
]


def _grads(fn, x, k, g):
    out, vjp = jax.vjp(fn, x, k)
    return out, vjp(g)


@pytest.mark.parametrize('kernel_in_loops', [False, True])
@pytest.mark.parametrize('kernel,padding,size', CASES)
def test_gradients_equal_lax_autodiff(kernel, padding, size, kernel_in_loops):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, *size, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(*kernel, 4, 5)), jnp.float32)
    dims = ('NHWC', 'HWIO', 'NHWC')
    ref = functools.partial(lax.conv_general_dilated, window_strides=(1, 1), padding=padding,
                            dimension_numbers=dims)  # fmt: skip
    ours = functools.partial(conv.conv_general_dilated, window_strides=(1, 1), padding=padding,
                             dimension_numbers=dims, kernel_in_loops=kernel_in_loops)  # fmt: skip
    g = jnp.asarray(rng.normal(size=ref(x, k).shape), jnp.float32)
    out_ref, (dx_ref, dk_ref) = _grads(ref, x, k, g)
    out, (dx, dk) = jax.jit(lambda x, k, g: _grads(ours, x, k, g))(x, k, g)
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk, dk_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    'extra',
    [dict(window_strides=(2, 2)), dict(rhs_dilation=(2, 2)), dict(feature_group_count=2)],
)
def test_other_convolutions_use_lax_gradients(extra):
    """Strided, dilated and grouped convolutions keep lax's own (correct) gradient."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 4 // extra.get('feature_group_count', 1), 4)))
    kwargs = dict(window_strides=(1, 1), padding='SAME', dimension_numbers=conv.NHWC) | extra
    ref = functools.partial(lax.conv_general_dilated, **kwargs)
    ours = functools.partial(conv.conv_general_dilated, **kwargs)
    g = jnp.asarray(rng.normal(size=ref(x, k).shape), jnp.float32)
    _, (dx_ref, dk_ref) = _grads(ref, x, k, g)
    _, (dx, dk) = _grads(ours, x, k, g)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk, dk_ref, rtol=1e-5, atol=1e-5)


class _Net(nn.Module):
    conv_fn: object

    @nn.compact
    def __call__(self, x):
        for _ in range(2):
            x = nn.relu(nn.Conv(8, (3, 3), conv_general_dilated=self.conv_fn)(x))
        return jnp.sum(nn.Conv(2, (1, 1), conv_general_dilated=self.conv_fn)(x))


def _loop_hlo(conv_fn) -> tuple[str, jax.Array]:
    """The compiled HLO of 3 guidance-like steps ``x -= 0.1 grad_x f(x)`` in a ``lax.scan``."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 12, 12, 3)), jnp.float32)
    net = _Net(conv_fn)
    variables = _Net(lax.conv_general_dilated).init(jax.random.key(0), x)
    grad = jax.grad(lambda y, v: net.apply(v, y))

    def loop(v, x):
        return lax.scan(lambda c, _: (c - 0.1 * grad(c, v), None), x, None, length=3)[0]

    compiled = jax.jit(loop).lower(variables, x).compile()
    return compiled.as_text(), compiled(variables, x)


def test_loop_gradient_compiles_to_canonical_convolutions_only():
    """Inside a loop XLA CPU cannot re-layout a kernel: lax's gradient keeps an ``oi`` kernel
    (the slow path; bench/conv_loop.py), ours only ``01io`` kernels. Same result."""
    labels = lambda hlo: set(re.findall(r'dim_labels=([a-z0-9_]+->[a-z0-9]+)', hlo))
    hlo_lax, out_lax = _loop_hlo(lax.conv_general_dilated)
    hlo_ours, out_ours = _loop_hlo(conv.conv_general_dilated)
    assert any('_01oi->' in label for label in labels(hlo_lax)), labels(hlo_lax)
    assert labels(hlo_ours) == {'b01f_01io->b01f'}, labels(hlo_ours)
    np.testing.assert_allclose(out_ours, out_lax, rtol=1e-5, atol=1e-5)


def test_kernel_gradients_in_a_loop_are_canonical_with_kernel_in_loops():
    """The parameter gradient of a loop (ECDP's quality loss through a solver) with
    ``kernel_in_loops``: canonical convolutions only, lax's gradient equal."""
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 10, 10, 3)), jnp.float32)
    variables = _Net(lax.conv_general_dilated).init(jax.random.key(0), x)

    def loss(conv_fn):
        net = _Net(conv_fn)
        step = lambda c, v: c * jnp.tanh(net.apply(v, c) / c.size)
        return lambda v: jnp.sum(lax.scan(lambda c, _: (step(c, v), None), x, None, length=3)[0])

    ours = functools.partial(conv.conv_general_dilated, kernel_in_loops=True)
    labels = lambda hlo: set(re.findall(r'dim_labels=([a-z0-9_]+->[a-z0-9]+)', hlo))
    compiled = jax.jit(jax.grad(loss(ours))).lower(variables).compile()
    assert labels(compiled.as_text()) == {'b01f_01io->b01f'}, labels(compiled.as_text())
    got, want = compiled(variables), jax.grad(loss(lax.conv_general_dilated))(variables)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- score network

#: A tiny NCSN++ with every convolution path: BigGAN blocks, FIR, an input-skip pyramid
#: (Combine), attention and the LR encoder with its regression head.
TINY_NCSNPP = dict(
    nf=8,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
    progressive_input='input_skip',
    lr_encoder_nf=8,
    lr_encoder_blocks=1,
    lr_encoder_growth=4,
    out_channels=3,
)


def _score_loop_grad(conv_grads: str):
    """The parameter gradient of 2 Euler steps of a tiny NCSN++ in a ``lax.scan`` (the shape
    of ECDP's quality loss), jitted, with its compiled HLO."""
    model = models.get_model('ncsnpp')(**TINY_NCSNPP, conv_grads=conv_grads)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 6)), jnp.float32)
    lr = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    params = models.get_model('ncsnpp')(**TINY_NCSNPP).init(jax.random.key(0), x, 1.0, lr=lr)

    def loss(p):
        def step(h, t):
            out = model.apply(p, jnp.concatenate([h, x[..., 3:]], -1), t, lr=lr)
            return h - 0.1 * out[..., :3], None

        return jnp.sum(lax.scan(step, x[..., :3], jnp.array([1.0, 0.5]))[0] ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    return compiled(params), compiled.as_text()


def test_score_network_conv_grads_change_gradients_layout_not_values():
    """``compute.conv_grads`` reaches every stride-1 convolution of NCSN++ and its LR encoder:
    the same parameter gradients through a loop, and with 'loops' no stride-1 convolution
    left with lax's permuted (slow in loops) kernel layout."""
    want, hlo_lax = _score_loop_grad('lax')
    got, hlo_loops = _score_loop_grad('loops')
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)
    slow = lambda hlo: re.findall(r'window=\{size=3x3 pad=1_1x1_1\}[^\n]*_01oi->', hlo)
    assert slow(hlo_lax) and not slow(hlo_loops), (len(slow(hlo_lax)), len(slow(hlo_loops)))
    with pytest.raises(ValueError, match='conv_grads'):
        models.get_model('ncsnpp')(**TINY_NCSNPP, conv_grads='fast')
