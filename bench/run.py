"""The benchmark suite: one command, every number, JSON plus a Markdown table.

    python bench/run.py --suite cpu                       # this machine's CPU (about 30 min)
    python bench/run.py --suite cpu --trained /tmp/demo   # + ODE NFE of a trained demo model
    python bench/run.py --suite gpu                       # on a GPU (adds batch 64, bfloat16)
    python bench/run.py --suite smoke                     # seconds: checks the suite runs

Writes ``bench/results/<suite>.json`` (every measurement, machine and versions) and
``bench/results/<suite>.md`` (the tables). Each case (config x image size x batch) runs in a
fresh process, so that its compile times are cold (no persistent cache) and its peak host
memory (``ru_maxrss``) is its own. Per case:

* ``forward``: one jitted ``score_fn(x, t, cond)`` (= one network evaluation, NFE);
* ``train``: one data-parallel training step (loss, gradients, Adam, EMA);
* samplers, each compiled ahead of time for ``sampler_steps`` steps: time per NFE, and images/s
  extrapolated to a full run (PC at N=2000 with and without one Langevin correction per
  level, Heun and DPM-Solver++(2M) at 20 NFE); ``ode`` (adaptive Dopri5) runs to the end, once,
  and reports its NFE (meaningful only with trained weights: ``--trained``);
* compile time of each program, peak host memory, peak device memory (GPU), and achieved
  FLOP/s (XLA's count of the unpartitioned program / median time) against ceilings measured
  on the same machine in the same way: a batched matmul and a 3x3 convolution, split over all
  devices like the models.

A batch smaller than the device count (batch 1 on a multi-core CPU) runs on that many
devices, as it cannot be split. Timings are the median of ``repeats`` runs after one warm-up
run, each ended by ``block_until_ready``. Sampler rows also check that the compiled program has
no host callback (so no host round-trip per step) and that running it compiled nothing new.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from utils.cpu_devices import use_all_cpu_cores  # noqa: E402

PYTORCH_FORWARD_S = 0.196  # score_sde_pytorch NCSN++ nf 32, 64x64, batch 8, 2 threads (STACK.md).
PC_FULL = 2000  # SDE-SR's N.
FEW_STEP_NFE = 20
# Instructions by which a compiled program talks to the host: Python callbacks, send/recv, feeds.
HOST_CALLBACK = re.compile(
    r'custom_call_target="[^"]*callback|= \S+ (?:send|recv|infeed|outfeed)\('
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One process: a config at one image size and batch, and what to measure on it."""

    name: str
    config: str
    image_size: int
    batch: int
    config_arg: str = ''
    sets: tuple[str, ...] = ()
    train: bool = True
    samplers: tuple[str, ...] = ('pc', 'dpm2m')
    sampler_steps: int = 4
    repeats: int = 3
    trained: bool = False  # Load the --trained workdir's EMA weights (demo config only).


def _grid(tag: str, config: str, sizes, batches, suffix: str = '', **kw: Any) -> list[Case]:
    """Cases named ``<tag>-<size>-b<batch><suffix>`` for every size and batch."""
    return [Case(f'{tag}-{s}-b{b}{suffix}', config, s, b, **kw) for s in sizes for b in batches]


DEMO, PAPER = 'configs/demo.py', 'configs/ve/ffhq_sr.py'
ALL_SAMPLERS = ('pc', 'pc+langevin', 'heun', 'dpm2m')
SUITES: dict[str, list[Case]] = {
    'smoke': [
        Case('smoke-32-b8', DEMO, 32, 8, config_arg='smoke', samplers=('dpm2m',), repeats=1),
    ],
    'cpu': (
        _grid('demo', DEMO, (64,), (1, 8), samplers=ALL_SAMPLERS, sampler_steps=8)
        + [Case('demo-64-b8-ode', DEMO, 64, 8, train=False, samplers=('ode',), trained=True)]
        + [Case('demo-64-b8-bf16', DEMO, 64, 8, sets=('compute.dtype=bfloat16',), samplers=())]
        + _grid('demo', DEMO, (128,), (1, 8), samplers=('pc', 'heun', 'dpm2m'), sampler_steps=4)
        + _grid('paper', PAPER, (64, 128), (1, 8), samplers=('pc', 'dpm2m'), sampler_steps=2)
    ),
    'gpu': (
        _grid(
            'demo', DEMO, (64, 128), (1, 8, 64), samplers=ALL_SAMPLERS, sampler_steps=20, repeats=5
        )
        + [Case('demo-64-b8-ode', DEMO, 64, 8, train=False, samplers=('ode',), trained=True)]
        + _grid('paper', PAPER, (64, 128), (1, 8, 64), samplers=ALL_SAMPLERS, sampler_steps=10)
        + _grid(
            'paper',
            PAPER,
            (128,),
            (8, 64),
            suffix='-bf16',
            sets=('compute.dtype=bfloat16',),
            samplers=('dpm2m',),
            sampler_steps=10,
        )
    ),
}

# ----------------------------------------------------------------------------- child: ceilings

CONV_CEILING_SHAPES = ((64, 64), (32, 128), (16, 256))


def _conv_fn(w: Any):
    import jax

    dims = ('NHWC', 'HWIO', 'NHWC')
    return lambda x: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dims)


def measure_ceilings(repeats: int = 5) -> dict[str, Any]:
    """Best-case FLOP/s of this machine: a matmul and a 3x3 convolution over all devices."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from utils import parallel

    mesh = parallel.make_mesh()
    n_dev = mesh.devices.size
    rng = np.random.default_rng(0)

    def run(fn, *arrays) -> dict[str, float]:
        arrays = [parallel.shard_batch({'a': a}, mesh)['a'] for a in arrays]
        jitted = jax.jit(fn)
        flops = jitted.lower(*arrays).cost_analysis()['flops']
        timings, _ = common.timed_runs(jitted, arrays, repeats)
        median = float(np.median(timings['run_s_all']))
        return {'gflops': flops / 1e9, 'run_s_median': median, 'gflop_per_s': flops / median / 1e9}

    size = 1024
    mats = rng.standard_normal((2 * n_dev, size, size)).astype(np.float32)
    out = {'matmul_f32': run(lambda a, b: jnp.einsum('bij,bjk->bik', a, b), mats, mats)}
    # 3x3 convolutions of the U-Nets' shapes (size, channels); a small one alone understates
    # what the networks reach, so several are measured and the best is the conv ceiling.
    for hw, ch in CONV_CEILING_SHAPES:
        x = rng.standard_normal((8 * n_dev, hw, hw, ch)).astype(np.float32)
        w = jnp.asarray(rng.standard_normal((3, 3, ch, ch)).astype(np.float32))
        out[f'conv3x3_f32_{hw}px_{ch}ch'] = run(_conv_fn(w), x)
    if jax.devices()[0].platform != 'cpu':
        bf = mats.astype(jnp.bfloat16)
        out['matmul_bf16'] = run(lambda a, b: jnp.einsum('bij,bjk->bik', a, b), bf, bf)
    return out


# ----------------------------------------------------------------------------- child: one case


def _compile_counter():
    """A list that grows by one per XLA compilation (jax.monitoring), and its listener."""
    import jax

    events: list[str] = []

    def listener(name: str, *args: Any, **kwargs: Any) -> None:
        if name == '/jax/core/compile/backend_compile_duration':
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    return events


def _host_callbacks(compiled: Any) -> int:
    return len(HOST_CALLBACK.findall(compiled.as_text()))


def _lowered_flops(fn: Any, args: tuple) -> float:
    return float(fn.lower(*args).cost_analysis().get('flops', 0.0))


def measure_forward(exp: Any, params: Any, data: dict, repeats: int) -> dict[str, Any]:
    fn = common.jitted_forward(exp)
    args = (params, data['x'], data['t'], {'lr_up': data['lr_up']})
    timings, _ = common.timed_runs(fn, args, repeats)
    return _summary(timings, _lowered_flops(fn, args))


def measure_train(exp: Any, batch_size: int, repeats: int) -> dict[str, Any]:
    import jax
    import numpy as np

    import train
    from utils import parallel

    state = train.initial_state(exp, jax.random.PRNGKey(0))
    step = train.parallel_train_step(exp)
    hr = np.random.default_rng(0).random((batch_size, *exp.hr_shape), np.float32)
    batch = parallel.shard_batch({'hr': hr, 'lr_up': hr}, exp.mesh)
    args = (state, batch, jax.random.PRNGKey(1))
    flops = _lowered_flops(step, args)
    compiled, timings = common.compile_timed(step, args)
    runs = []
    for _ in range(repeats + 1):  # The first is the warm-up; the state is donated each step.
        start = time.perf_counter()
        state, metrics = compiled(state, batch, args[2])
        jax.block_until_ready((state, metrics))
        runs.append(round(time.perf_counter() - start, 4))
    timings['run_s_all'] = runs[1:]
    return _summary(timings, flops)


def repeat_runs(compiled: Any, args: tuple, repeats: int, skip_warmup: bool = False):
    """Seconds of ``repeats`` runs of ``compiled(*args)`` (after one warm-up), last output."""
    import jax

    out = None if skip_warmup else jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        runs.append(round(time.perf_counter() - start, 4))
    return runs, out


def _summary(timings: dict, flops: float) -> dict[str, Any]:
    import numpy as np

    median = float(np.median(timings['run_s_all']))
    return dict(
        timings,
        run_s_median=round(median, 4),
        gflops=round(flops / 1e9, 3),
        gflop_per_s=round(flops / median / 1e9, 2),
    )


def sampler_patterns(steps: int) -> dict[str, tuple[dict, int]]:
    """Sampling fields and the NFE of the full run to extrapolate to, per sampler label."""
    # (PC injects fresh noise at every step: a tempered config's temperature cannot act there.)
    pc = dict(method='pc', predictor='euler_maruyama', num_steps=steps, schedule='uniform')
    pc['temperature'] = 1.0
    return {
        'pc': (dict(pc, corrector='none'), PC_FULL),
        'pc+langevin': (dict(pc, corrector='langevin', n_steps_each=1), 2 * PC_FULL),
        'heun': (dict(method='heun', num_steps=steps), FEW_STEP_NFE),
        'dpm2m': (dict(method='dpm2m', num_steps=steps), FEW_STEP_NFE),
        'ode': (dict(method='ode', projection='none'), 0),
    }


def measure_sampler(
    exp: Any, params: Any, key: Any, data: dict, label: str, case: Case, fwd_gflops: float
) -> dict[str, Any]:
    import numpy as np

    fields, full_nfe = sampler_patterns(case.sampler_steps)[label]
    fn = exp.make_sampler(common.sampling_variant(exp.config, **fields))
    args = (params, key, {'lr_up': data['lr_up'], 'lr': data['lr']}, data['ids'])
    compiles = _compile_counter()
    compiled, timings = common.compile_timed(fn, args)
    before = len(compiles)
    # The ODE runs to its tolerance (hundreds of NFE): one timed run, no warm-up.
    ode = label == 'ode'
    timings['run_s_all'], (_, info) = repeat_runs(compiled, args, 1 if ode else case.repeats, ode)
    nfe = int(np.max(np.asarray(info['nfe'])))
    run_s = float(np.median(timings['run_s_all']))
    per_nfe = run_s / nfe
    full = full_nfe or nfe
    return dict(
        timings,
        steps=None if label == 'ode' else case.sampler_steps,
        nfe=nfe,
        run_s_median=round(run_s, 4),
        per_nfe_s=round(per_nfe, 5),
        full_nfe=full,
        images_per_s=round(case.batch / (per_nfe * full), 6),
        gflop_per_s=round(fwd_gflops * nfe / run_s, 2),
        host_callbacks=_host_callbacks(compiled),
        compiles_while_running=len(compiles) - before,
    )


def case_config(case: Case) -> Any:
    config = common.load_config(case.config, case.config_arg, case.sets)
    config.data.image_size = case.image_size
    config.training.batch_size = case.batch
    return config


def trained_params(exp: Any, workdir: str) -> Any:
    """EMA weights of ``workdir``'s latest checkpoint, checked against the case's config."""
    return exp.load_ema_params(workdir)[0]


def run_case(case: Case, trained: str) -> dict[str, Any]:
    """Every measurement of ``case`` in this (fresh) process."""
    import jax

    import experiment

    config = case_config(case)
    # A batch smaller than the device count cannot be split: it runs on that many devices.
    exp = experiment.build(config, jax.devices()[: min(case.batch, jax.device_count())])
    params, key, data = common.make_inputs(exp, case.batch)
    if case.trained:
        if not trained:
            return {'skipped': 'needs --trained WORKDIR (a demo model) for a meaningful NFE'}
        params = trained_params(exp, trained)
    out: dict[str, Any] = {
        'params': int(sum(x.size for x in jax.tree.leaves(params))),
        'devices': len(jax.devices()),
        'forward': measure_forward(exp, params, data, case.repeats),
    }
    log(f'{case.name} forward: {out["forward"]}')
    if case.train:
        out['train'] = measure_train(exp, case.batch, case.repeats)
        log(f'{case.name} train: {out["train"]}')
    out['samplers'] = {}
    for label in case.samplers:
        row = measure_sampler(exp, params, key, data, label, case, out['forward']['gflops'])
        out['samplers'][label] = row
        log(f'{case.name} {label}: {row}')
    out['peak_host_mb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    stats = jax.devices()[0].memory_stats()
    if stats:
        out['peak_device_mb'] = round(stats.get('peak_bytes_in_use', 0) / 2**20, 1)
    return out


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- parent


RESULT_MARK = 'BENCH_RESULT '


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    """Runs ``bench/run.py --child ...`` and returns its result line (or the error)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'error': f'timed out after {timeout:.0f} s'}
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = '\n'.join(proc.stderr.strip().splitlines()[-15:])
        return {'error': f'exit {proc.returncode}: {tail}'}
    result = json.loads(lines[-1][len(RESULT_MARK) :])
    result['wall_s'] = round(time.perf_counter() - start, 1)
    return result


def machine_info() -> dict[str, Any]:
    import importlib.metadata as md
    import os

    return {
        'python': platform.python_version(),
        'machine': platform.machine(),
        'cpus': len(os.sched_getaffinity(0)),
        'packages': {p: md.version(p) for p in ('jax', 'jaxlib', 'flax', 'optax')},
        'date': time.strftime('%Y-%m-%d %H:%M'),
    }


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.{digits}g}'
    return str(value)


def markdown(suite: str, result: dict[str, Any]) -> str:
    """The suite's tables: per case, then per sampler."""
    ceil = {k: v for k, v in result.get('ceilings', {}).items() if isinstance(v, dict)}
    f32 = [v['gflop_per_s'] for k, v in ceil.items() if 'f32' in k and 'gflop_per_s' in v]
    best = max(f32) if f32 else None
    lines = [f'# Benchmark suite `{suite}` ({result["machine"]["date"]})', '']
    lines.append(
        'Ceilings (same machine, all devices, median): '
        + ', '.join(
            f'{k} {v["gflop_per_s"]:.1f} GFLOP/s' for k, v in ceil.items() if isinstance(v, dict)
        )
    )
    lines.append('')
    rows = []
    for name, r in result['cases'].items():
        if 'error' in r or 'skipped' in r:
            rows.append([name] + [r.get('error', r.get('skipped', ''))[:60]] + ['-'] * 8)
            continue
        f, t = r['forward'], r.get('train', {})
        util = f'{100 * f["gflop_per_s"] / best:.0f}%' if best else '-'
        rows.append(
            [
                name,
                fmt(r['params'] / 1e6),
                fmt(f['run_s_median']),
                fmt(f['gflop_per_s']),
                util,
                fmt(f['compile_s']),
                fmt(t.get('run_s_median')),
                fmt(t.get('gflop_per_s')),
                fmt(t.get('compile_s')),
                fmt(r['peak_host_mb'] / 1024),
            ]
        )
    lines.append(
        common.markdown_table(
            [
                'case',
                'M params',
                'forward s/NFE',
                'GFLOP/s',
                'of f32 ceiling',
                'compile s',
                'train step s',
                'train GFLOP/s',
                'train compile s',
                'peak host GB',
            ],
            rows,
        )
    )
    lines += [
        '',
        'Samplers (images/s extrapolated to the full NFE; the ODE runs to its tolerance):',
        '',
    ]
    rows = []
    for name, r in result['cases'].items():
        for label, s in r.get('samplers', {}).items():
            rows.append(
                [
                    name,
                    label,
                    s['steps'] or '-',
                    s['nfe'],
                    fmt(s['per_nfe_s']),
                    s['full_nfe'],
                    fmt(s['images_per_s']),
                    fmt(s['compile_s']),
                    s['host_callbacks'],
                    s['compiles_while_running'],
                ]
            )
    lines.append(
        common.markdown_table(
            [
                'case',
                'sampler',
                'timed steps',
                'timed NFE',
                's/NFE',
                'full NFE',
                'images/s',
                'compile s',
                'host callbacks',
                'recompiles',
            ],
            rows,
        )
    )
    demo = result['cases'].get('demo-64-b8', {}).get('forward')
    if demo:
        lines += [
            '',
            f'Demo network (NCSN++ nf 32, 64x64, batch 8) forward: '
            f'{demo["run_s_median"]:.3f} s vs PyTorch {PYTORCH_FORWARD_S} s '
            f'(ratio {demo["run_s_median"] / PYTORCH_FORWARD_S:.2f}).',
        ]
    return '\n'.join(lines) + '\n'


def run_suite(suite: str, trained: str, only: list[str], timeout: float, out_dir: Path) -> int:
    cases = [c for c in SUITES[suite] if not only or c.name in only]
    if only and len(cases) != len(only):
        known = [c.name for c in SUITES[suite]]
        raise SystemExit(f'--only {only}: unknown case; known in {suite!r}: {known}')
    result: dict[str, Any] = {'suite': suite, 'machine': machine_info(), 'cases': {}}
    log(f'{suite}: ceilings, then {len(cases)} cases')
    result['ceilings'] = run_child(['--child', 'ceilings'], timeout)
    for k, case in enumerate(cases):
        log(f'[{k + 1}/{len(cases)}] {case.name}')
        child = ['--child', 'case', '--case', json.dumps(dataclasses.asdict(case))]
        result['cases'][case.name] = run_child(child + ['--trained', trained], timeout)
        result['cases'][case.name]['case'] = dataclasses.asdict(case)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f'{suite}.json').write_text(json.dumps(result, indent=1) + '\n')
    table = markdown(suite, result)
    (out_dir / f'{suite}.md').write_text(table)
    print(table)
    failed = [n for n, r in result['cases'].items() if 'error' in r]
    if 'error' in result['ceilings']:
        failed.append('ceilings')
    for name in failed:
        log(f'FAILED {name}: {(result["cases"].get(name) or result["ceilings"])["error"]}')
    return 1 if failed else 0


def update_ceilings(suite: str, timeout: float, out_dir: Path) -> int:
    path = out_dir / f'{suite}.json'
    result = json.loads(path.read_text())
    result['ceilings'] = run_child(['--child', 'ceilings'], timeout)
    path.write_text(json.dumps(result, indent=1) + '\n')
    table = markdown(suite, result)
    (out_dir / f'{suite}.md').write_text(table)
    print(table)
    return 1 if 'error' in result['ceilings'] else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--suite', choices=sorted(SUITES), default='cpu')
    parser.add_argument('--trained', default='', help='workdir of a trained demo model')
    parser.add_argument('--only', default='', help='comma-separated case names')
    parser.add_argument('--timeout', type=float, default=3600, help='seconds per case')
    parser.add_argument('--out', default=str(common.RESULTS))
    parser.add_argument(
        '--update_ceilings',
        action='store_true',
        help='re-measure only the ceilings of an existing <out>/<suite>.json and rewrite its table',
    )
    parser.add_argument('--child', choices=('ceilings', 'case'), help=argparse.SUPPRESS)
    parser.add_argument('--case', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is None and args.update_ceilings:
        sys.exit(update_ceilings(args.suite, args.timeout, Path(args.out)))
    if args.child is None:
        only = [x for x in args.only.split(',') if x]
        sys.exit(run_suite(args.suite, args.trained, only, args.timeout, Path(args.out)))
    use_all_cpu_cores()
    if args.child == 'ceilings':
        result = measure_ceilings()
    else:
        fields = json.loads(args.case)
        case = Case(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        result = run_case(case, args.trained)
    print(RESULT_MARK + json.dumps(result), flush=True)


if __name__ == '__main__':
    main()
