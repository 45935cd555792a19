"""Compile and step time of one ECDP quality-loss gradient (``configs/ecdp/demo.py:finetune``).

    python bench/quality_step.py --devices 1 --stats W/residual_stats.json [--adjoint backsolve]
        [--conv-grads loops] [--unroll | --no-unroll] [--solver dopri5 --fixed-steps 0]

Prints the compile time, XLA's FLOP estimate (it counts a while-loop body once, so for diffrax
solves it is a lower bound, not the cost) and the time of each of ``--repeats`` steps on random
images. Used to chase the quality step's cost (issue 9: 339 s per step measured on shared cores,
against 10-20 s estimated by hand).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--devices', type=int, default=1, help='host CPU devices (batch split)')
    parser.add_argument('--stats', required=True, help='residual_stats.json of an ECDP run')
    parser.add_argument('--adjoint', default='recursive_checkpoint')
    parser.add_argument('--checkpoints', type=int, default=4)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--conv-grads', default='lax', help='config.compute.conv_grads')
    parser.add_argument('--unroll', action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument('--solver', default=None, help='training.quality_solver')
    parser.add_argument('--fixed-steps', type=int, default=None, help='0: adaptive')
    args = parser.parse_args()
    os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={args.devices}'
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import experiment
    import losses
    from configs.ecdp import demo

    config = demo.get_config('finetune')
    config.sde.stats_file = args.stats
    config.training.update(quality_adjoint=args.adjoint, quality_checkpoints=args.checkpoints)
    config.compute.conv_grads = args.conv_grads
    overrides = dict(
        quality_unroll=args.unroll, quality_solver=args.solver, quality_fixed_steps=args.fixed_steps
    )
    config.training.update({k: v for k, v in overrides.items() if v is not None})
    print({k: config.training[k] for k in overrides}, 'conv_grads', args.conv_grads)
    exp = experiment.build(config, jax.devices()[: args.devices])
    params = jax.device_put(exp.new_params(jax.random.key(0)), NamedSharding(exp.mesh, P()))
    size, factor = config.data.image_size, config.data.downscale
    hr = np.random.default_rng(0).random((config.training.batch_size, size, size, 3), np.float32)
    batch = {'hr': hr, 'lr_up': hr, 'lr': hr[:, ::factor, ::factor]}
    batch = jax.device_put(batch, NamedSharding(exp.mesh, P('data')))
    step = jax.jit(jax.value_and_grad(losses.make_loss_fn(config, exp.sde, exp.model)))
    start = time.perf_counter()
    compiled = step.lower(params, batch, jax.random.key(0)).compile()
    print(f'compile {time.perf_counter() - start:.1f} s', flush=True)
    print(f'XLA flops (while bodies once) {compiled.cost_analysis().get("flops", 0) / 1e9:.1f} G')
    for _ in range(args.repeats):
        start = time.perf_counter()
        loss, grads = jax.block_until_ready(compiled(params, batch, jax.random.key(0)))
        norm = float(jax.numpy.sqrt(sum(jax.numpy.sum(g**2) for g in jax.tree.leaves(grads))))
        seconds = time.perf_counter() - start
        print(f'step {seconds:.1f} s (loss {float(loss):.6f}, grad norm {norm:.6f})', flush=True)


if __name__ == '__main__':
    main()
