"""A 2-D convolution whose gradients stay fast inside XLA CPU loops (``lax.scan``/``while``).

Why: on XLA CPU the backward pass of a convolution inside a loop body runs 10-30x slower than
the same code outside a loop (measured: ``bench/conv_loop.py``). Autodiff writes both gradients
as convolutions with permuted dimension labels (the input gradient with an ``oi`` kernel, the
kernel gradient with batch and feature swapped). Outside loops, layout assignment turns those
into physical transposes and XLA's fast (Eigen) convolution runs; in a loop body the operands'
layouts are fixed by the loop state, and XLA falls back to a generic loop nest. That slowed
every gradient taken inside a sampler or solver loop: SRDG's classifier guidance (1.6-1.7 NFE
per guided step instead of about 1.2) and ECDP's quality loss through the ODE (which is why
``ode.ODEOptions.unroll`` exists).

``conv_general_dilated`` here is a drop-in for ``lax.conv_general_dilated`` (flax's
``nn.Conv(conv_general_dilated=...)``): the forward pass is the same call, and for stride-1,
undilated, ungrouped NHWC/HWIO convolutions (every 3x3 and 1x1 conv of our networks) both
gradients are written as convolutions in the canonical NHWC/HWIO layout on explicitly
transposed operands, which XLA runs on its fast path everywhere. Any other convolution uses
lax's own gradient. Forward-mode differentiation (``jax.jvp``) is not defined for it (a
``custom_vjp``); nothing in this library uses it.

Who uses it: the classifiers (``loop_grads``, input gradients: guidance), and the score
networks when ``config.compute.conv_grads`` says so (:data:`GRADIENTS`; NCSN++'s
``conv_grads`` field, threaded to every stride-1 convolution of its blocks and LR encoder).
FIR up/down-sampling convolutions are strided or grouped and keep lax's gradient.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ('NHWC', 'HWIO', 'NHWC')
#: A ``lax.conv_general_dilated``-compatible function (flax's ``nn.Conv(conv_general_dilated=)``).
ConvFn = Callable[..., jax.Array]


def _pads(padding: Any, kernel: Sequence[int], shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Explicit (low, high) spatial padding of a stride-1 convolution."""
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(tuple(shape), tuple(kernel), (1, 1), padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _canonical(args: dict[str, Any], lhs: jax.Array, rhs: jax.Array) -> bool:
    """Whether the fast gradients apply: stride 1, no dilation, no groups, NHWC/HWIO (given as
    strings or as flax's ``ConvDimensionNumbers``)."""
    ones = lambda v: v is None or all(int(s) == 1 for s in v)
    dims = args['dimension_numbers']
    spec = lambda d: lax.conv_dimension_numbers(lhs.shape, rhs.shape, d)
    named = dims is not None and lhs.ndim == 4 and spec(dims) == spec(NHWC)
    return (
        named
        and ones(args['window_strides'])
        and ones(args['lhs_dilation'])
        and ones(args['rhs_dilation'])
        and args['feature_group_count'] == 1
        and args['batch_group_count'] == 1
    )


def _input_grad(g: jax.Array, rhs: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """d lhs: the cotangent correlated with the flipped kernel, input and output swapped."""
    kh, kw = rhs.shape[:2]
    kernel = jnp.transpose(jnp.flip(rhs, (0, 1)), (0, 1, 3, 2))
    back = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), pads, strict=True)]
    return lax.conv_general_dilated(g, kernel, (1, 1), back, dimension_numbers=NHWC)


def _kernel_grad(
    lhs: jax.Array, g: jax.Array, pads: Sequence[tuple[int, int]], kernel: Sequence[int]
) -> jax.Array:
    """d rhs[kh, kw, i, o] = sum_{b, y, x} lhs_pad[b, y + kh, x + kw, i] g[b, y, x, o]: a
    correlation with the input channels as batch and the batch as input channels."""
    padded = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
    images = jnp.transpose(padded, (3, 1, 2, 0))  # [i, H, W, b]
    filters = jnp.transpose(g, (1, 2, 0, 3))  # [y, x, b, o]
    out = lax.conv_general_dilated(images, filters, (1, 1), 'VALID', dimension_numbers=NHWC)
    return jnp.transpose(out[:, : kernel[0], : kernel[1]], (1, 2, 0, 3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(lhs: jax.Array, rhs: jax.Array, args: tuple) -> jax.Array:
    kwargs = dict(args)
    del kwargs['kernel_in_loops']
    return lax.conv_general_dilated(lhs, rhs, **kwargs)


def _conv_fwd(lhs: jax.Array, rhs: jax.Array, args: tuple) -> tuple[jax.Array, tuple]:
    return _conv(lhs, rhs, args), (lhs, rhs)


def _conv_bwd(args: tuple, residuals: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    lhs, rhs = residuals
    kwargs = dict(args)
    kernel_in_loops = kwargs.pop('kernel_in_loops')
    if not _canonical(kwargs, lhs, rhs):
        _, vjp = jax.vjp(lambda a, b: lax.conv_general_dilated(a, b, **kwargs), lhs, rhs)
        return vjp(g)
    pads = _pads(kwargs['padding'], rhs.shape[:2], lhs.shape[1:3])
    g = g.astype(lhs.dtype)
    d_lhs = _input_grad(g, rhs.astype(lhs.dtype), pads)
    if kernel_in_loops:
        d_rhs = _kernel_grad(lhs, g, pads, rhs.shape[:2])
    else:
        _, vjp = jax.vjp(lambda b: lax.conv_general_dilated(lhs, b, **kwargs), rhs)
        (d_rhs,) = vjp(g)
    return d_lhs.astype(lhs.dtype), d_rhs.astype(rhs.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _hashable(value: Any) -> Any:
    """Lists (e.g. flax's padding) as tuples, so the settings can be a static argument;
    named tuples (``ConvDimensionNumbers``) are kept as they are."""
    if isinstance(value, list) or type(value) is tuple:
        return tuple(_hashable(v) for v in value)
    return value


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    kernel_in_loops: bool = False,
) -> jax.Array:
    """``lax.conv_general_dilated`` with loop-friendly gradients (module doc)."""
    args = dict(
        kernel_in_loops=kernel_in_loops,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return _conv(lhs, rhs, tuple((k, _hashable(v)) for k, v in args.items()))


#: How a network's convolution gradients are written (``config.compute.conv_grads``; the
#: forward pass is the same for all): 'lax' (autodiff's), 'input' (the input gradient
#: canonical: free outside loops, fast inside them, which is what gradients with respect to
#: the image need, e.g. guidance) and 'loops' (both gradients canonical: parameter gradients
#: through a solver loop, e.g. ECDP's quality loss, at a slower train step outside loops).
GRADIENTS: Mapping[str, ConvFn] = types.MappingProxyType(
    {
        'lax': lax.conv_general_dilated,
        'input': conv_general_dilated,
        'loops': functools.partial(conv_general_dilated, kernel_in_loops=True),
    }
)


def gradients(name: str) -> ConvFn:
    """The convolution of :data:`GRADIENTS` named ``name``; unknown names are refused."""
    if name not in GRADIENTS:
        raise ValueError(f'config.compute.conv_grads={name!r}: give one of {sorted(GRADIENTS)}')
    return GRADIENTS[name]
