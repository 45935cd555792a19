"""Cost of the JAX SFace (models/sface.py) on 64x64 crop-geometry faces, against onnxruntime::

    python bench/sface_jax.py --batch 8 --repeats 5

Seconds per batch and per image (best of ``--repeats``, after one warm-up call) of

* ``forward``: ``identity_embed`` (fixed warp to 112x112 + network), jitted;
* ``forward+backward``: ``value_and_grad`` of the mean ``identity_loss(SR, HR)`` w.r.t. SR
  (two forwards, SR and the HR target, and one backward: what a training step adds);
* ``onnxruntime forward``: ``SFaceEmbedder.embed`` on the same 112x112 crops (reference).

One XLA device (the recogniser is jitted, not sharded); say which machine gave the numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: The HR size of the shipped models' training crops.
TRAIN_SIZE = 64


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    import jax
    import numpy as np

    from evaluation.face import SFaceEmbedder
    from models import sface

    params = sface.load_sface_params()
    rng = np.random.default_rng(0)
    shape = (args.batch, TRAIN_SIZE, TRAIN_SIZE, 3)
    sr, hr = (rng.uniform(size=shape).astype(np.float32) for _ in range(2))
    forward = jax.jit(sface.identity_embed)
    loss = lambda p, s, h: sface.identity_loss(p, s, h).mean()
    backward = jax.jit(jax.value_and_grad(loss, argnums=1))
    crops = np.asarray(sface.align_canonical(sr))
    embedder = SFaceEmbedder(batch_size=args.batch)
    seconds = {
        'forward': best_seconds(lambda: forward(params, sr), args.repeats),
        'forward+backward': best_seconds(lambda: backward(params, sr, hr), args.repeats),
        'onnxruntime forward': best_seconds(lambda: embedder.embed(crops), args.repeats),
    }
    print(f'batch {args.batch}, {TRAIN_SIZE}x{TRAIN_SIZE}, {jax.devices()[0].device_kind}')
    for name, value in seconds.items():
        print(f'{name:20s} {value:.3f} s/batch  {1e3 * value / args.batch:.1f} ms/image')


if __name__ == '__main__':
    main()
