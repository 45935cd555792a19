"""NCSN++ / DDPM++ layers (port of score_sde's ``models/layerspp.py``, Flax version)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import up_or_down_sampling as updown
from models.conv import ConvFn
from models.layers import NIN, conv1x1, conv3x3, default_init, group_norm

_SQRT2 = math.sqrt(2.0)  # a Python float keeps the operands' dtype


def residual(x: jax.Array, h: jax.Array, skip_rescale: bool) -> jax.Array:
    """``x + h``, divided by sqrt(2) when ``skip_rescale``."""
    return (x + h) / _SQRT2 if skip_rescale else x + h


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a [B] input: W ~ N(0, scale^2), stored as a param but frozen."""

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        W = self.param('W', nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        W = jax.lax.stop_gradient(W)
        x_proj = x.astype(jnp.float32)[:, None] * W[None, :] * 2 * jnp.pi
        return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class Combine(nn.Module):
    """Combine an input-pyramid level ``x`` with features ``y`` ('cat' or 'sum')."""

    method: str = 'cat'
    dtype: Any = jnp.float32
    conv: ConvFn = jax.lax.conv_general_dilated  # Gradient form: models.conv.GRADIENTS.

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        h = conv1x1(x, y.shape[-1], dtype=self.dtype, conv=self.conv)
        if self.method == 'cat':
            return jnp.concatenate([h, y.astype(h.dtype)], axis=-1)
        if self.method == 'sum':
            return h + y
        raise ValueError(f'combine method {self.method!r} unknown; options: cat, sum')


class AttnBlockpp(nn.Module):
    """Single-head self-attention over all spatial positions, with residual connection."""

    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        B, H, W, C = x.shape
        h = group_norm(x, self.dtype)
        q = NIN(C, dtype=self.dtype)(h)
        k = NIN(C, dtype=self.dtype)(h)
        v = NIN(C, dtype=self.dtype)(h)
        w = jnp.einsum('bhwc,bHWc->bhwHW', q, k) * (int(C) ** (-0.5))
        w = jax.nn.softmax(w.reshape(B, H, W, H * W).astype(jnp.float32), axis=-1)
        w = w.reshape(B, H, W, H, W).astype(v.dtype)
        h = jnp.einsum('bhwHW,bHWc->bhwc', w, v)
        h = NIN(C, init_scale=self.init_scale, dtype=self.dtype)(h)
        return residual(x.astype(h.dtype), h, self.skip_rescale)


class _Resample(nn.Module):
    """Fields shared by :class:`Upsample` and :class:`Downsample`."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = updown.DEFAULT_FIR_KERNEL
    dtype: Any = jnp.float32
    conv: ConvFn = jax.lax.conv_general_dilated  # Gradient form: models.conv.GRADIENTS.

    def _fir_conv(self, out_ch: int, up: bool, x: jax.Array) -> jax.Array:
        return updown.Conv2d(
            out_ch,
            kernel=3,
            up=up,
            down=not up,
            resample_kernel=self.fir_kernel,
            kernel_init=default_init(),
            dtype=self.dtype,
        )(x)


class Upsample(_Resample):
    """2x upsampling: nearest (+3x3 conv) or FIR (+fused 3x3 conv)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        B, H, W, C = x.shape
        out_ch = self.out_ch if self.out_ch else C
        if not self.fir:
            h = updown.naive_upsample_2d(x, factor=2)
            if self.with_conv:
                h = conv3x3(h, out_ch, dtype=self.dtype, conv=self.conv)
        elif not self.with_conv:
            h = updown.upsample_2d(x, self.fir_kernel, factor=2)
        else:
            h = self._fir_conv(out_ch, True, x)
        assert h.shape == (B, 2 * H, 2 * W, out_ch), h.shape
        return h


class Downsample(_Resample):
    """2x downsampling: avg-pool / strided 3x3 conv, or FIR (+fused 3x3 conv)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        B, H, W, C = x.shape
        out_ch = self.out_ch if self.out_ch else C
        if not self.fir:
            if self.with_conv:
                x = conv3x3(x, out_ch, stride=2, dtype=self.dtype, conv=self.conv)
            else:
                x = updown.naive_downsample_2d(x, factor=2)
        elif not self.with_conv:
            x = updown.downsample_2d(x, self.fir_kernel, factor=2)
        else:
            x = self._fir_conv(out_ch, False, x)
        assert x.shape == (B, H // 2, W // 2, out_ch), x.shape
        return x


def _add_temb(h: jax.Array, temb: jax.Array | None, act: Callable, dtype: Any) -> jax.Array:
    """Adds a dense projection of the time embedding as a per-channel bias."""
    if temb is None:
        return h
    proj = nn.Dense(h.shape[-1], kernel_init=default_init(), dtype=dtype)(act(temb))
    return h + proj[:, None, None, :]


class ResnetBlockDDPMpp(nn.Module):
    """DDPM residual block (GroupNorm, act, conv, +temb, GroupNorm, act, dropout, conv)."""

    act: Callable[[jax.Array], jax.Array] = nn.swish
    out_ch: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Any = jnp.float32
    conv: ConvFn = jax.lax.conv_general_dilated  # Gradient form: models.conv.GRADIENTS.

    @nn.compact
    def __call__(
        self, x: jax.Array, temb: jax.Array | None = None, train: bool = True
    ) -> jax.Array:
        C = x.shape[-1]
        out_ch = self.out_ch if self.out_ch else C
        x = x.astype(self.dtype)
        h = self.act(group_norm(x, self.dtype))
        h = conv3x3(h, out_ch, dtype=self.dtype, conv=self.conv)
        h = _add_temb(h, temb, self.act, self.dtype)
        h = self.act(group_norm(h, self.dtype))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(h, out_ch, init_scale=self.init_scale, dtype=self.dtype, conv=self.conv)
        if C != out_ch:
            if self.conv_shortcut:
                x = conv3x3(x, out_ch, dtype=self.dtype, conv=self.conv)
            else:
                x = NIN(out_ch, dtype=self.dtype)(x)
        return residual(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN residual block with optional up/downsampling inside (FIR or naive)."""

    act: Callable[[jax.Array], jax.Array] = nn.swish
    up: bool = False
    down: bool = False
    out_ch: int | None = None
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Sequence[int] = updown.DEFAULT_FIR_KERNEL
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: Any = jnp.float32
    conv: ConvFn = jax.lax.conv_general_dilated  # Gradient form: models.conv.GRADIENTS.

    def _resample(self, x: jax.Array) -> jax.Array:
        if self.up:
            if self.fir:
                return updown.upsample_2d(x, self.fir_kernel, factor=2)
            return updown.naive_upsample_2d(x, factor=2)
        if self.down:
            if self.fir:
                return updown.downsample_2d(x, self.fir_kernel, factor=2)
            return updown.naive_downsample_2d(x, factor=2)
        return x

    @nn.compact
    def __call__(
        self, x: jax.Array, temb: jax.Array | None = None, train: bool = True
    ) -> jax.Array:
        C = x.shape[-1]
        out_ch = self.out_ch if self.out_ch else C
        x = x.astype(self.dtype)
        h = self.act(group_norm(x, self.dtype))
        h = self._resample(h)
        x = self._resample(x)
        h = conv3x3(h, out_ch, dtype=self.dtype, conv=self.conv)
        h = _add_temb(h, temb, self.act, self.dtype)
        h = self.act(group_norm(h, self.dtype))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(h, out_ch, init_scale=self.init_scale, dtype=self.dtype, conv=self.conv)
        if C != out_ch or self.up or self.down:
            x = conv1x1(x, out_ch, dtype=self.dtype, conv=self.conv)
        return residual(x, h, self.skip_rescale)
