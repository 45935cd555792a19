"""Sampler speed: compile time, time per network evaluation (NFE) and images/s of each sampler.

    python bench/sampler_speed.py --config configs/demo.py --batch 8
    python bench/sampler_speed.py --config configs/ve/ffhq_sr.py --batch 8 --steps 2 --repeats 1

Random initial parameters (speed does not depend on weights). Each sampler is compiled ahead of
time for ``--steps`` steps, run once to warm up, then ``--repeats`` times: per-NFE time = median
run / NFE; images/s at a full run = batch / (per-NFE time * NFE), for PC at ``--pc_full`` levels
and heun/dpm2m at 20 and 50 NFE. ``forward`` is one jitted ``score_fn`` call. ``--ode`` adds
Dopri5 at the config's rtol/atol (with random weights its NFE is meaningless; its per-NFE time is
not). All devices are used (one XLA host device per CPU core), the batch split over them.
Appends one JSON line per row to ``--out`` (bench/results/sampler_speed.jsonl).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from utils.cpu_devices import use_all_cpu_cores  # noqa: E402

FEW_STEP_NFES = (20, 50)


def patterns(steps: int, pc_full: int, ode: bool) -> list[tuple[str, dict, tuple[int, ...]]]:
    """(label, sampling fields, NFE of the full runs to extrapolate to) per call pattern."""
    pc = dict(method='pc', predictor='euler_maruyama', num_steps=max(steps, 2), schedule='uniform')
    out = [
        ('pc', dict(pc, corrector='none'), (pc_full,)),
        ('pc+langevin', dict(pc, corrector='langevin', n_steps_each=1), (2 * pc_full,)),
        ('heun', dict(method='heun', num_steps=steps), FEW_STEP_NFES),
        ('dpm2m', dict(method='dpm2m', num_steps=steps), FEW_STEP_NFES),
    ]
    return out + ([('ode', dict(method='ode', projection='none'), ())] if ode else [])


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


def summarize(label: str, steps, nfe: int, timings: dict, full_nfes, batch: int) -> dict:
    """Per-NFE time = median run / NFE; images/s at each full NFE = batch / (s/NFE * NFE)."""
    import numpy as np

    run_s = float(np.median(timings['run_s_all']))
    per_nfe = run_s / nfe
    ips = {str(n): round(batch / (per_nfe * n), 5) for n in full_nfes}
    return dict(
        method=label,
        steps=steps,
        nfe=nfe,
        **timings,
        run_s_median=round(run_s, 4),
        per_nfe_s=round(per_nfe, 5),
        images_per_s=ips,
    )


def measure_forward(exp, params, data, repeats: int) -> dict:
    """One jitted ``score_fn(x, t, cond)`` call: the cost of one NFE without a sampler."""
    fn = common.jitted_forward(exp)
    args = (params, data['x'], data['t'], {'lr_up': data['lr_up']})
    timings, _ = common.timed_runs(fn, args, repeats)
    return summarize('forward', None, 1, timings, (), len(data['t']))


def measure_sampler(exp, params, key, data, pattern, repeats: int) -> dict:
    import numpy as np

    import sampling

    label, fields, full_nfes = pattern
    cfg = common.sampling_variant(exp.config, **fields)
    fn = sampling.make_sampler(
        cfg,
        exp.sde,
        exp.model,
        exp.config.score.parametrization,
        exp.hr_shape,
        mesh=exp.mesh,
        sigma_data=exp.config.score.sigma_data,
    )
    args = (params, key, {'lr_up': data['lr_up'], 'lr': data['lr']}, data['ids'])
    timings, (_, info) = common.timed_runs(fn, args, repeats)
    steps = None if cfg.method == 'ode' else cfg.num_steps
    nfe = int(np.max(np.asarray(info['nfe'])))
    return summarize(label, steps, nfe, timings, full_nfes, len(data['t']))


def table(records: list[dict], batch: int) -> str:
    headers = [
        'method',
        'timed steps',
        'timed NFE',
        'trace+lower s',
        'compile s',
        'run s (median)',
        's / NFE',
        'full NFE',
        's / batch (full)',
        'images/s',
    ]
    rows = []
    for r in records:
        head = [
            r['method'],
            r['steps'] or '-',
            r['nfe'],
            r['trace_lower_s'],
            r['compile_s'],
            r['run_s_median'],
            r['per_nfe_s'],
        ]
        full = r['images_per_s'] or {'-': None}
        for nfe, ips in full.items():
            tail = ['-', '-'] if ips is None else [f'{batch / ips:.2f}', f'{ips:.4g}']
            rows.append(head + [nfe] + tail)
    return common.markdown_table(headers, rows)


def main() -> None:
    parser = common.base_parser(__doc__)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--image_size', type=int, default=0, help="0: the config's")
    parser.add_argument('--steps', type=int, default=8, help='steps of the timed runs')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--pc_full', type=int, default=2000, help='PC levels extrapolated to')
    parser.add_argument('--methods', default='forward,pc,pc+langevin,heun,dpm2m')
    parser.add_argument('--ode', action='store_true', help='also Dopri5 (NFE meaningless)')
    parser.add_argument('--out', default=str(common.RESULTS / 'sampler_speed.jsonl'))
    args = parser.parse_args()
    config = common.load_config(args.config, args.config_arg, args.set)
    config.data.image_size = args.image_size or config.data.image_size
    use_all_cpu_cores(config.compute.cpu_devices or None)
    import jax

    import experiment

    exp = experiment.build(config)
    params, key, data = make_inputs(exp, args.batch)
    wanted = set(args.methods.split(',')) | ({'ode'} if args.ode else set())
    records = [measure_forward(exp, params, data, args.repeats)] if 'forward' in wanted else []
    for pattern in patterns(args.steps, args.pc_full, args.ode):
        if pattern[0] in wanted:
            records.append(measure_sampler(exp, params, key, data, pattern, args.repeats))
            print(f'{pattern[0]}: {records[-1]}', file=sys.stderr, flush=True)
    meta = dict(
        config=args.config,
        config_arg=args.config_arg,
        sets=args.set,
        batch=args.batch,
        image_size=config.data.image_size,
        devices=len(jax.devices()),
        platform=jax.devices()[0].platform,
        params=int(sum(x.size for x in jax.tree.leaves(params))),
    )
    print(f'{meta}\n\n' + table(records, args.batch))
    common.append_jsonl(args.out, [dict(meta, **r) for r in records])


if __name__ == '__main__':
    main()
