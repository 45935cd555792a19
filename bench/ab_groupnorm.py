"""A/B of the change that made the U-Net fast on CPU: our GroupNorm against Flax's.

    python bench/ab_groupnorm.py [--config configs/demo.py] [--batch 8] [--rounds 15]

Compiles the config's forward pass twice, once with ``models.layers.GroupNorm`` (row-wise
statistics) and once with ``flax.linen.GroupNorm`` in its place (same parameters), checks that
both give the same output, then times them alternately (so that the speed changes of a shared
machine hit both equally) and prints the median and best of each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.cpu_devices import use_all_cpu_cores  # noqa: E402


def compiled_forward(config_path: str, batch: int):
    """The config's forward pass compiled for a random batch, and its arguments."""

    import experiment
    from bench import common

    exp = experiment.build(common.load_config(config_path))
    params, _, data = common.make_inputs(exp, batch)
    args = (params, data['x'], data['t'], {'lr_up': data['lr_up']})
    return common.jitted_forward(exp).lower(*args).compile(), args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--config', default='configs/demo.py')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--rounds', type=int, default=15)
    args = parser.parse_args()
    use_all_cpu_cores()
    import flax.linen as nn
    import jax
    import numpy as np

    from models import layers

    ours = compiled_forward(args.config, args.batch)
    original = layers.GroupNorm
    layers.GroupNorm = lambda num_groups, epsilon, dtype: nn.GroupNorm(
        num_groups=num_groups, epsilon=epsilon, dtype=dtype
    )
    try:
        flax_gn = compiled_forward(args.config, args.batch)
    finally:
        layers.GroupNorm = original
    outputs = [np.asarray(fn(*a)) for fn, a in (ours, flax_gn)]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-3, atol=1e-3)
    times: dict[str, list[float]] = {'ours': [], 'flax': []}
    for _ in range(args.rounds):
        for name, (fn, a) in (('ours', ours), ('flax', flax_gn)):
            start = time.perf_counter()
            jax.block_until_ready(fn(*a))
            times[name].append(time.perf_counter() - start)
    for name, runs in times.items():
        print(f'{name}: median {np.median(runs):.4f} s, best {min(runs):.4f} s')
    ratio = np.median(times['flax']) / np.median(times['ours'])
    print(f'Flax GroupNorm / ours (median): {ratio:.2f}x')


if __name__ == '__main__':
    main()
