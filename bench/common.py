"""Helpers shared by the sampler benchmarks: configs with ``--set`` overrides, tables, results.

Importing this module does not import JAX, so a script can still call ``use_all_cpu_cores``
after it.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / 'results'
_TRUE, _FALSE = ('1', 'true', 'yes', 'on'), ('0', 'false', 'no', 'off')


def base_parser(doc: str) -> argparse.ArgumentParser:
    """A parser with ``--config``, ``--config_arg`` and repeatable ``--set key=value``."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--config', required=True, help='config file, e.g. configs/demo.py')
    parser.add_argument('--config_arg', default='', help="get_config's argument, e.g. smoke")
    parser.add_argument(
        '--set',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='config override, repeatable (e.g. sampling.schedule=karras)',
    )
    return parser


def parse_value(text: str, kind: type, current: Any) -> Any:
    """``text`` as the type of a config field (``kind``; tuples take their items' type)."""
    if text.lower() == 'none':
        return None
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(f'not a boolean: {text!r}')
        return text.lower() in _TRUE
    if kind is tuple:
        item = type(current[0]) if current else str
        return tuple(parse_value(v.strip(), item, None) for v in text.split(',') if v.strip())
    return kind(text)


def apply_sets(config: Any, sets: Sequence[str]) -> list[str]:
    """Applies ``key=value`` overrides (dotted keys, e.g. ``sampling.schedule=karras``)."""
    for item in sets:
        key, sep, text = item.partition('=')
        if not sep:
            raise ValueError(f'--set {item!r}: expected key=value')
        *parents, leaf = key.strip().split('.')
        node = config
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise KeyError(f'--set {item!r}: config has no field {key}')
        node[leaf] = parse_value(text.strip(), node.get_ref(leaf).get_type(), node[leaf])
    return list(sets)


def load_config(path: str, arg: str = '', sets: Sequence[str] = ()) -> Any:
    """The config of ``path`` (``get_config(arg)``) with the ``--set`` overrides applied."""
    spec = importlib.util.spec_from_file_location('bench_config', path)
    if spec is None or spec.loader is None or not Path(path).is_file():
        raise FileNotFoundError(f'config file {path} not found')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    apply_sets(config, sets)
    return config


def sampling_variant(config: Any, **fields: Any) -> Any:
    """A copy of ``config.sampling`` with ``fields`` changed."""
    cfg = copy.deepcopy(config.sampling)
    cfg.update(fields)
    return cfg


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    lines += ['| ' + ' | '.join(str(v) for v in row) + ' |' for row in rows]
    return '\n'.join(lines)


def append_jsonl(path: str | Path, records: Sequence[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a') as f:
        for record in records:
            f.write(json.dumps(record) + '\n')
    return path


def compile_timed(fn, args) -> tuple[Any, dict]:
    """``fn`` (jitted) compiled ahead of time for ``args``, and the trace and compile seconds."""
    start = time.perf_counter()
    lowered = fn.lower(*args)
    timings = dict(trace_lower_s=round(time.perf_counter() - start, 2))
    start = time.perf_counter()
    compiled = lowered.compile()
    timings['compile_s'] = round(time.perf_counter() - start, 2)
    return compiled, timings


def timed_runs(fn, args, repeats: int) -> tuple[dict, Any]:
    """Compiles ``fn`` for ``args``, warms up, runs it ``repeats`` times: timings, last output."""
    import jax

    compiled, timings = compile_timed(fn, args)
    out = jax.block_until_ready(compiled(*args))  # Warm-up.
    timings['run_s_all'] = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        timings['run_s_all'].append(round(time.perf_counter() - start, 4))
    return timings, out


def jitted_forward(exp: Any) -> Any:
    """``forward(params, x, t, cond)``: one network evaluation (NFE) of ``exp``'s score model,
    jitted over its mesh (params replicated, batch split)."""
    import jax

    from models.wrappers import make_score_fn
    from utils import parallel

    split, replicated = parallel.batch_sharding(exp.mesh), parallel.replicated_sharding(exp.mesh)

    def forward(params, x, t, cond):
        return make_score_fn(exp.model, params, exp.sde, exp.config.score)(x, t, cond)

    return jax.jit(forward, in_shardings=(replicated, split, split, split), out_shardings=split)


def make_inputs(exp, batch: int):
    """Replicated random params and key; random batch-split ``cond``, ``ids``, ``x`` and ``t``."""
    import jax
    import numpy as np

    from utils import parallel

    parallel.check_divisible(batch, exp.mesh, '--batch')
    rng = np.random.default_rng(0)
    size, factor = exp.config.data.image_size, exp.config.data.downscale
    lr = rng.random((batch, size // factor, size // factor, exp.hr_shape[-1]), np.float32)
    data = {
        'lr': lr,
        'lr_up': lr.repeat(factor, 1).repeat(factor, 2),
        'x': rng.standard_normal((batch, *exp.hr_shape)).astype(np.float32),
        't': np.full(batch, 0.5, np.float32),
        'ids': np.arange(batch, dtype=np.int32),
    }
    data = parallel.shard_batch(data, exp.mesh)
    key = parallel.replicate(jax.random.PRNGKey(0), exp.mesh)
    return exp.init_params(jax.random.PRNGKey(0)), key, data
