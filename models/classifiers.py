"""Noise-aware attribute classifiers ``C(c | x_t, sigma)`` for classifier guidance (SRDG).

A classifier is a Flax module ``classifier(x, sigma, train=False) -> logits [B, num_classes]``
where ``x`` is a noisy image in the **[0, 1] data range** and ``sigma`` [B] the standard
deviation of the Gaussian noise on it, ``x = x0 + sigma z`` (the perturbation of a VE SDE in
[0, 1] units; ``sde_lib.SDE.ve_equivalent`` maps any SDE's state to this form). Binary
attributes have two classes: index 1 = the attribute is present.

**The published SRDG checkpoints** (``srdg_densenet``; dos Santos et al., "Defying Limits:
Super-Resolution Refinement with Diffusion Guidance") load as they are (:func:`load_variables`).
What the checkpoint and the published training code fix, and this module reproduces:

* Input: images in [0, 1] (score_sde with ``data.centered = False``), normalised per channel
  with the CIFAR-10 mean and std (``input_mean``, ``input_std``: the published code's constants,
  kept because the weights were trained behind them), then standardised per image over all
  pixels and channels, ``(x - mean) / max(std, 1/sqrt(N))``. The standardisation makes the
  network nearly blind to a global affine change of the input, so the data range shows up
  mainly through ``sigma``: the noise level must be given in [0, 1] units. Measured on the 8
  ``quis8`` faces (``tests/test_classifiers.py``): the gender checkpoint is right on 8/8 with
  this input at sigma = 0.01.
* Time: ``sigma`` itself; the network embeds ``log sigma`` with Gaussian Fourier features (128
  frequencies of std 16, sin and cos). The score network's time label is unrelated.
* Architecture: a DenseNet (stem 3x3 conv to 32 channels; the embedding through Dense 512,
  swish, Dense 512, swish, Dense 32, broadcast and concatenated to the stem output; 4 dense
  blocks of 6 layers, growth 16, bottleneck 2 x 16; transitions halve channels and size; final
  BatchNorm and ReLU; flatten 16x16x184 -> Dense 2). BatchNorm runs in inference mode unless
  ``train`` (running statistics in the ``batch_stats`` collection).

``small_densenet`` is the same network at demo size (64x64, fewer layers), for training here;
``tiny_densenet`` a smoke-test size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from models import conv as conv_lib
from utils.registry import Registry

CLASSIFIERS = Registry('classifier')

# CIFAR-10 per-channel mean and std: the published SRDG classifiers were trained behind them.
CIFAR_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR_STD = (0.24703223, 0.24348513, 0.26158784)


class GaussianFourierProjection(nn.Module):
    """``[sin(2 pi W v), cos(2 pi W v)]`` of a scalar per example, ``W ~ N(0, scale^2)`` fixed."""

    embedding_size: int = 128
    scale: float = 16.0

    @nn.compact
    def __call__(self, v: jax.Array) -> jax.Array:
        init = nn.initializers.normal(stddev=self.scale)
        W = jax.lax.stop_gradient(self.param('W', init, (self.embedding_size,)))
        proj = v[:, None] * W[None, :] * 2.0 * jnp.pi
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def _conv(features: int, size: int, loop_grads: bool, use_bias: bool = False) -> nn.Conv:
    """A ``size`` x ``size`` conv; ``loop_grads``: its input gradient stays fast inside sampler
    loops on XLA CPU (models/conv.py), the classifier's job under guidance."""
    conv = conv_lib.conv_general_dilated if loop_grads else jax.lax.conv_general_dilated
    return nn.Conv(features, (size, size), use_bias=use_bias, conv_general_dilated=conv)


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bottleneck) - BN-ReLU-3x3 conv (growth), concatenated to the input."""

    bottleneck: int
    growth_rate: int
    momentum: float = 0.99
    loop_grads: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=self.momentum)
        z = nn.relu(norm()(x))
        z = _conv(self.bottleneck, 1, self.loop_grads)(z)
        z = nn.relu(norm()(z))
        z = _conv(self.growth_rate, 3, self.loop_grads)(z)
        return jnp.concatenate([x, z], axis=-1)


class DenseBlock(nn.Module):
    num_layers: int
    bottleneck: int
    growth_rate: int
    momentum: float = 0.99
    loop_grads: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for _ in range(self.num_layers):
            layer = DenseLayer(self.bottleneck, self.growth_rate, self.momentum, self.loop_grads)
            x = layer(x, train)
        return x


class TransitionLayer(nn.Module):
    """BN-ReLU-1x1 conv to ``channels``, then 2x2 average pooling."""

    channels: int
    momentum: float = 0.99
    loop_grads: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x))
        x = _conv(self.channels, 1, self.loop_grads)(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


def standardize_per_image(x: jax.Array) -> jax.Array:
    """``(x - mean) / max(std, 1/sqrt(N))`` over each image's pixels and channels."""
    n = math.prod(x.shape[1:])
    axes = tuple(range(1, x.ndim))
    mean, std = jnp.mean(x, axes, keepdims=True), jnp.std(x, axes, keepdims=True)
    return (x - mean) / jnp.maximum(std, 1.0 / np.sqrt(n))


class TimeDenseNet(nn.Module):
    """A DenseNet conditioned on ``log sigma`` (see the module docstring); submodule names are
    the published checkpoints' (``Conv_0``, ``Dense_0..3``, ``DenseBlock_i``, ...)."""

    num_classes: int = 2
    num_layers: tuple[int, ...] = (6, 6, 6, 6)
    growth_rate: int = 16
    bottleneck_factor: int = 2
    embedding_size: int = 128
    fourier_scale: float = 16.0
    embedding_width: int = 512
    input_mean: tuple[float, ...] = CIFAR_MEAN
    input_std: tuple[float, ...] = CIFAR_STD
    # Running-average momentum of BatchNorm (flax's default, as published; short runs need less).
    bn_momentum: float = 0.99
    # Convolutions whose input gradient stays fast inside sampler loops on XLA CPU (guidance
    # takes it at every step; models/conv.py). Same parameters and outputs either way.
    loop_grads: bool = True

    def _embed(self, sigma: jax.Array) -> jax.Array:
        emb = GaussianFourierProjection(self.embedding_size, self.fourier_scale)(jnp.log(sigma))
        emb = nn.Dense(self.embedding_width)(emb)
        return nn.Dense(self.embedding_width)(nn.swish(emb))

    @nn.compact
    def __call__(self, x: jax.Array, sigma: jax.Array, train: bool = False) -> jax.Array:
        x = (x - jnp.asarray(self.input_mean)) / jnp.asarray(self.input_std)
        x = standardize_per_image(x)
        channels = self.growth_rate * self.bottleneck_factor
        emb = self._embed(sigma)
        h = _conv(channels, 3, self.loop_grads, use_bias=True)(x)
        emb = nn.Dense(channels)(nn.swish(emb))[:, None, None, :]
        h = jnp.concatenate([h, jnp.broadcast_to(emb, h.shape[:-1] + emb.shape[-1:])], axis=-1)
        # Transition widths count the stem's channels, not the embedding's (as published).
        bottleneck = self.bottleneck_factor * self.growth_rate
        for i, layers in enumerate(self.num_layers):
            block = DenseBlock(
                layers, bottleneck, self.growth_rate, self.bn_momentum, self.loop_grads
            )
            h = block(h, train)
            channels += layers * self.growth_rate
            if i < len(self.num_layers) - 1:
                channels //= 2
                h = TransitionLayer(channels, self.bn_momentum, self.loop_grads)(h, train)
        h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(h))
        return nn.Dense(self.num_classes)(h.reshape(h.shape[0], -1))


# The published SRDG classifiers: 128x128 faces, 4 blocks of 6 layers (0.75 M parameters).
CLASSIFIERS.register('srdg_densenet')(TimeDenseNet)
# Demo size (64x64 faces): 3 blocks of 3 layers, growth 8, a narrower embedding.
CLASSIFIERS.register('small_densenet')(
    functools.partial(
        TimeDenseNet, num_layers=(3, 3, 3), growth_rate=8, embedding_size=32, embedding_width=64
    )
)


# Smoke size (tests, smoke configs): 2 blocks of 1 layer.
CLASSIFIERS.register('tiny_densenet')(
    functools.partial(
        TimeDenseNet,
        num_layers=(1, 1),
        growth_rate=8,
        embedding_size=16,
        embedding_width=32,
        bn_momentum=0.9,
    )
)


def build_classifier(name: str, **kwargs: Any) -> nn.Module:
    """The registered classifier ``name`` with ``kwargs`` overriding its preset fields."""
    return CLASSIFIERS.get(name)(**kwargs)


def init_variables(
    classifier: nn.Module, key: jax.Array, image_shape: tuple[int, ...], batch_size: int = 1
) -> dict[str, Any]:
    """Initial ``{'params', 'batch_stats'}`` for images of ``image_shape`` = (H, W, C)."""
    x = jnp.full((batch_size, *image_shape), 0.5)
    return dict(classifier.init(key, x, jnp.ones((batch_size,)), train=False))


def variable_shapes(classifier: nn.Module, image_shape: tuple[int, ...]) -> Mapping[str, Any]:
    """The variable tree of ``classifier`` as shape structs, without computing anything."""
    return jax.eval_shape(lambda k: init_variables(classifier, k, image_shape), jax.random.key(0))


def _flat(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in leaves}


def check_variables(restored: Any, expected: Any, source: str) -> None:
    """Raises naming ``source`` and the first key whose presence or shape differs."""
    got, want = _flat(restored), _flat(expected)
    for key in sorted(set(got) | set(want)):
        if got.get(key) != want.get(key):
            raise ValueError(
                f'classifier checkpoint {source} does not fit the architecture: {key} has shape '
                f'{got.get(key, "(missing)")} in the file, {want.get(key, "(absent)")} in the model'
            )


def load_variables(
    path: str | Path, classifier: nn.Module, image_shape: tuple[int, ...]
) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` of a flax msgpack checkpoint (the published SRDG ones, and
    ``classifier.msgpack`` of ``--mode train_classifier``), as it is: refused (naming the file
    and the first mismatching key) unless every array fits ``classifier`` exactly, and refused
    naming the file if it cannot be read or decoded (missing, a folder, truncated, garbage)."""
    restored = read_checkpoint(path)
    check_variables(restored, variable_shapes(classifier, image_shape), str(path))
    return jax.tree.map(jnp.asarray, restored)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The variable tree of a flax msgpack file, or one ``ValueError`` naming it and saying why:
    msgpack's own errors (``Unpack failed: incomplete input``, ``'int' object is not
    subscriptable``) name neither the file nor what is wrong with it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ValueError(f'classifier checkpoint {path} is a folder, not a file') from None
    except OSError as err:
        raise ValueError(f'cannot read classifier checkpoint {path}: {err.strerror}') from None
    try:
        restored = flax.serialization.msgpack_restore(data)
    except MemoryError:
        raise
    except Exception as err:  # Decoding bytes in memory: any failure means a damaged file.
        raise ValueError(
            f'classifier checkpoint {path} is not a readable flax msgpack file ({len(data)} '
            f'bytes; truncated or damaged?): {type(err).__name__}: {err}'
        ) from None
    if not isinstance(restored, dict) or 'params' not in restored:
        found = sorted(restored) if isinstance(restored, dict) else type(restored).__name__
        raise ValueError(
            f"classifier checkpoint {path} holds {found}, not {{'params', 'batch_stats'}}"
        )
    return restored


def log_prob_fn(classifier: nn.Module) -> Callable[[Any, jax.Array, jax.Array, jax.Array], Any]:
    """``log_prob(variables, x, sigma, target) -> [B]``: ``log C(target | x, sigma)``, BatchNorm
    in inference mode (so example i depends only on its own input)."""

    def log_prob(variables, x, sigma, target):
        logits = classifier.apply(variables, x, sigma, train=False)
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
        logp = jax.nn.log_softmax(logits, axis=-1)
        return jnp.take_along_axis(logp, target.astype(jnp.int32)[:, None], axis=-1)[:, 0]

    return log_prob
