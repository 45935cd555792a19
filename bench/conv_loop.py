"""Convolution gradients inside and outside XLA loops, lax's against models/conv.py's::

    python bench/conv_loop.py --repeats 3

A 4-layer conv net (3x3 and 1x1 convs, 32 channels, 64x64, batch 8) and ``--steps`` steps:

* ``dx in scan``: ``x -= eps grad_x f(x)`` in a ``lax.scan`` (classifier guidance's shape),
* ``dparams scan`` / ``unrolled``: the parameter gradient of a loop of network calls (the
  quality loss through an ODE solver's shape), as a scan and written out,
* ``dx standalone`` / ``train step``: gradients outside any loop (what must not get slower).

Seconds per call (best of ``--repeats``), for ``lax`` (autodiff's own gradient), ``input``
(models/conv.py, the default: loop-friendly input gradient) and ``input+kernel``
(``kernel_in_loops=True``). Writes ``bench/results/conv_loop.{json,md}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.cpu_devices import use_all_cpu_cores  # noqa: E402


def programs(conv_fn, steps: int) -> dict:
    """The five measured functions of ``(variables, x)`` for one conv implementation."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(4):
                x = nn.relu(nn.Conv(32, (3, 3), conv_general_dilated=conv_fn)(x))
            x = nn.Conv(16, (1, 1), conv_general_dilated=conv_fn)(x)
            return nn.Dense(2)(x.reshape(x.shape[0], -1))

    net = Net()
    body = lambda v, c: c - 1e-3 * jnp.tanh(net.apply(v, c)).sum() * c
    grad_x = lambda v, x: jax.grad(lambda y: jnp.sum(jax.nn.log_softmax(net.apply(v, y))[:, 1]))(x)

    def loop_loss(v, x):
        return jnp.sum(jax.lax.scan(lambda c, _: (body(v, c), None), x, None, length=steps)[0] ** 2)

    def unrolled_loss(v, x):
        for _ in range(steps):
            x = body(v, x)
        return jnp.sum(x**2)

    def guide(v, x):
        return jax.lax.scan(lambda c, _: (c - 1e-3 * grad_x(v, c), None), x, None, length=steps)[0]

    return {
        'dx in scan': guide,
        'dparams scan': jax.grad(loop_loss),
        'dparams unrolled': jax.grad(unrolled_loss),
        'dx standalone': grad_x,
        'train step': jax.grad(lambda v, x: jnp.sum(net.apply(v, x) ** 2)),
    }, net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--steps', type=int, default=6)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--out', default='bench/results/conv_loop')
    args = parser.parse_args()
    use_all_cpu_cores()
    import jax
    import numpy as np
    from jax import lax

    from models import conv

    impls = {
        'lax': lax.conv_general_dilated,
        'input': conv.conv_general_dilated,
        'input+kernel': functools.partial(conv.conv_general_dilated, kernel_in_loops=True),
    }
    x = jax.numpy.asarray(np.random.default_rng(0).random((8, 64, 64, 3)), np.float32)
    variables = None
    seconds: dict[str, dict[str, float]] = {}
    for impl, conv_fn in impls.items():
        fns, net = programs(conv_fn, args.steps)
        variables = variables or net.init(jax.random.key(0), x)
        for name, fn in fns.items():
            fn = jax.jit(fn)
            jax.block_until_ready(fn(variables, x))
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                jax.block_until_ready(fn(variables, x))
                times.append(time.perf_counter() - start)
            seconds.setdefault(name, {})[impl] = min(times)
            print(f'{impl:13s} {name:17s} {min(times):.3f} s', flush=True)
    write(Path(args.out), seconds, args.steps, jax.device_count())


def write(out: Path, seconds: dict, steps: int, devices: int) -> None:
    """``<out>.json`` and a Markdown table ``<out>.md``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.json').write_text(json.dumps({'steps': steps, 'seconds': seconds}, indent=1))
    impls = list(next(iter(seconds.values())))
    lines = [f'Seconds per call ({steps} loop steps, {devices} CPU devices, best of repeats).', '']
    lines += ['| program | ' + ' | '.join(impls) + ' |', '|---|' + '---|' * len(impls)]
    lines += [
        f'| {n} | ' + ' | '.join(f'{s[i]:.3f}' for i in impls) + ' |' for n, s in seconds.items()
    ]
    out.with_suffix('.md').write_text('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
