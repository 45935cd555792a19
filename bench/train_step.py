"""Train-step time of a config: compile time, then the median of several timed steps.

    python bench/train_step.py --config configs/demo.py --batch 8 --repeats 5
    python bench/train_step.py --config configs/ve/ffhq_sr.py --batch 8 --repeats 3

Uses every CPU core (one XLA host device per core) as ``main.py`` does; data are random (the
step's cost does not depend on them). Appends a JSON line to bench/results/train_step.jsonl.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.cpu_devices import use_all_cpu_cores  # noqa: E402

RESULTS = Path(__file__).resolve().parent / 'results'


def load_config(path: str, arg: str = ''):
    spec = importlib.util.spec_from_file_location('bench_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def time_train_step(config, batch_size: int, repeats: int) -> dict:
    import jax
    import numpy as np

    import experiment
    import train
    from utils import parallel

    exp = experiment.build(config)
    state = train.initial_state(exp, jax.random.PRNGKey(0))
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    step = train.parallel_train_step(exp)
    rng = np.random.default_rng(0)
    hr = rng.random((batch_size, *exp.hr_shape), np.float32)
    batch = parallel.shard_batch({'hr': hr, 'lr_up': hr}, exp.mesh)
    key = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = compiled(state, batch, key)  # Warm-up.
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    return dict(
        batch=batch_size,
        image_size=config.data.image_size,
        params=int(n_params),
        devices=len(jax.devices()),
        platform=jax.devices()[0].platform,
        compile_s=round(compile_s, 2),
        step_s_median=round(float(np.median(times)), 4),
        step_s_all=[round(t, 4) for t in times],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--config', required=True)
    parser.add_argument('--config_arg', default='')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    config = load_config(args.config, args.config_arg)
    use_all_cpu_cores(config.compute.cpu_devices or None)
    result = dict(config=args.config, **time_train_step(config, args.batch, args.repeats))
    print(json.dumps(result))
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / 'train_step.jsonl', 'a') as f:
        f.write(json.dumps(result) + '\n')


if __name__ == '__main__':
    main()
