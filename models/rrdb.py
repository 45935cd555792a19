"""An LR encoder of residual-in-residual dense blocks (ESRGAN's RRDB) and its regression head.

ECDP (after SRDiff) conditions the U-Net on features that an RRDB network extracts from the
LR image, and pre-trains that encoder with an L1 loss as a plain regression SR network. Here
the encoder runs at LR resolution (cheap: 8x8 or 16x16 for the demo), the U-Net adds its
features to every resolution level of its downsampling path (``models.ncsnpp``), and the
regression head turns them into an HR image ``bicubic(lr) + residual``: with its last
convolution zero-initialised the head starts as bicubic upsampling, so the L1 stage can only
improve on it. That regression estimate of ``E[x | y]`` can then serve as the ECDP SDE's mean
``mu(y)`` in place of bicubic (``config.sde.mean_model``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.conv import ConvFn

# ESRGAN's residual scaling: each block adds 0.2 x its output, which keeps a deep stack stable
# without normalisation layers.
RESIDUAL_SCALE = 0.2
LEAKY_SLOPE = 0.2


def _conv(features: int, dtype: Any, conv: ConvFn, zero: bool = False) -> nn.Conv:
    init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
    return nn.Conv(
        features, (3, 3), padding='SAME', kernel_init=init, dtype=dtype, conv_general_dilated=conv
    )


def _lrelu(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, LEAKY_SLOPE)


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing the block input and every earlier output."""

    growth: int = 16
    dtype: Any = jnp.float32
    conv: ConvFn = jax.lax.conv_general_dilated  # Gradient form: models.conv.GRADIENTS.

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        feats = [x]
        for _ in range(4):
            feats.append(
                _lrelu(_conv(self.growth, self.dtype, self.conv)(jnp.concatenate(feats, -1)))
            )
        out = _conv(x.shape[-1], self.dtype, self.conv)(jnp.concatenate(feats, -1))
        return x + RESIDUAL_SCALE * out


class RRDB(nn.Module):
    """Three residual dense blocks inside one more residual connection."""

    growth: int = 16
    dtype: Any = jnp.float32
    conv: ConvFn = jax.lax.conv_general_dilated  # Gradient form: models.conv.GRADIENTS.

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        for _ in range(3):
            h = ResidualDenseBlock(self.growth, self.dtype, self.conv)(h)
        return x + RESIDUAL_SCALE * h


class LREncoder(nn.Module):
    """LR image [B, h, w, C] -> features [B, h, w, nf]: a stem, ``num_blocks`` RRDBs and a
    trunk convolution around them."""

    nf: int = 32
    num_blocks: int = 2
    growth: int = 16
    dtype: Any = jnp.float32
    conv: ConvFn = jax.lax.conv_general_dilated  # Gradient form: models.conv.GRADIENTS.

    @nn.compact
    def __call__(self, lr: jax.Array) -> jax.Array:
        stem = _conv(self.nf, self.dtype, self.conv)(lr.astype(self.dtype))
        h = stem
        for _ in range(self.num_blocks):
            h = RRDB(self.growth, self.dtype, self.conv)(h)
        return stem + _conv(self.nf, self.dtype, self.conv)(h)


class RegressionHead(nn.Module):
    """Encoder features -> an HR image ``bicubic(lr) + residual`` of size ``hr_size``.

    Upsamples by nearest-neighbour x2 and a convolution per octave (ESRGAN), then a zero
    initialised output convolution: at initialisation the estimate is bicubic upsampling.
    """

    dtype: Any = jnp.float32
    conv: ConvFn = jax.lax.conv_general_dilated  # Gradient form: models.conv.GRADIENTS.

    @nn.compact
    def __call__(self, feats: jax.Array, lr: jax.Array, hr_size: tuple[int, int]) -> jax.Array:
        b, h, w, nf = feats.shape
        if hr_size[0] % h or hr_size[1] % w or (hr_size[0] // h) & (hr_size[0] // h - 1):
            raise ValueError(f'HR size {hr_size} is not a power-of-two multiple of LR {(h, w)}')
        x = feats
        while x.shape[1] < hr_size[0]:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            x = _lrelu(_conv(nf, self.dtype, self.conv)(x))
        residual = _conv(lr.shape[-1], self.dtype, self.conv, zero=True)(
            _lrelu(_conv(nf, self.dtype, self.conv)(x))
        )
        up = jax.image.resize(lr, (b, *hr_size, lr.shape[-1]), 'bicubic')
        return (up + residual.astype(up.dtype)).astype(jnp.float32)
