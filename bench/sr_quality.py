"""SR quality of each sampler on the same images: PSNR, SSIM, LR consistency, NFE, seconds.

    python bench/sr_quality.py --config configs/demo.py --workdir runs/demo --num_images 16

EMA parameters of the latest checkpoint in ``--workdir`` (the config must be the training one).
The first ``--num_images`` of ``config.eval.split`` are super-resolved with the same key and
sample ids (dataset indices, as ``--mode eval``) by: PC (the config's predictor and corrector,
``--pc_steps`` levels, uniform grid; a discrete predictor gets ``sde.num_scales = pc_steps``),
heun and dpm2m with the most steps within each NFE budget of ``--nfes`` (the actual NFE is
reported), the adaptive ODE (config rtol/atol), and bicubic. Outputs clipped to [0, 1]; PSNR and
SSIM on RGB, data range 1; consistency = MSE(downscale(SR), LR). Seconds: sampling, compile apart.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from utils.cpu_devices import use_all_cpu_cores  # noqa: E402

DISCRETE_PREDICTORS = ('reverse_diffusion', 'ancestral_sampling')


def plan(config, methods: list[str], pc_steps: int, nfes: list[int]) -> list[tuple[str, dict]]:
    """(label, sampling fields) of every sampler run, in table order."""
    s, removal = config.sampling, int(config.sampling.noise_removal)
    proj, jobs = ('' if s.projection == 'none' else f' {s.projection}'), []
    if 'pc' in methods:
        label = f'pc {s.predictor}+{s.corrector}{proj} N={pc_steps}'
        # (Fresh noise at every step: the temperature cannot act, so PC runs untempered.)
        pc = dict(method='pc', num_steps=pc_steps, schedule='uniform', temperature=1.0)
        jobs.append((label, pc))
    for budget in nfes:
        for method, per_step in (('heun', 2), ('dpm2m', 1)):
            steps = (budget - removal) // per_step  # NFE = per_step * steps + removal.
            if method in methods and steps >= 1:
                fields = dict(method=method, num_steps=steps)
                jobs.append((f'{method} {s.schedule}{proj} K={steps}', fields))
    if 'ode' in methods:
        jobs.append((f'ode rtol={s.rtol:g} atol={s.atol:g}', dict(method='ode', projection='none')))
    return jobs


def eval_images(config, n: int) -> dict:
    """The first ``n`` images of the eval split: 'hr', 'lr', 'lr_up' in [0, 1] and 'index'."""
    import datasets

    data = datasets.get_dataset(config.data, config.eval.split, n, seed=config.seed, train=False)
    batch = next(iter(data))
    return {k: batch[k][batch['mask']] for k in ('hr', 'lr', 'lr_up', 'index')}


def sampler_sde(exp, cfg):
    """The experiment's SDE, or one with ``num_scales = num_steps`` for a discrete PC predictor."""
    if cfg.method != 'pc' or cfg.predictor not in DISCRETE_PREDICTORS or exp.sde.N == cfg.num_steps:
        return exp.sde
    if exp.config.training.loss != 'dsm':
        print(
            f'note: trained on {exp.sde.N} discrete levels, PC runs {cfg.num_steps}',
            file=sys.stderr,
        )
    return dataclasses.replace(exp.sde, N=cfg.num_steps)


def run_sampler(exp, params, cfg, images: dict, seed: int, batch: int) -> dict:
    """Super-resolves ``images`` in batches of ``batch`` (padded to the devices): output, NFE, s."""
    import jax
    import numpy as np

    import datasets
    import sampling
    from utils import parallel

    fn = sampling.make_sampler(
        cfg,
        sampler_sde(exp, cfg),
        exp.model,
        exp.config.score.parametrization,
        exp.hr_shape,
        mesh=exp.mesh,
        sigma_data=exp.config.score.sigma_data,
    )
    scaler = datasets.get_data_scaler(exp.config.data.centered)
    inverse = datasets.get_data_inverse_scaler(exp.config.data.centered)
    n, devices = len(images['lr']), exp.mesh.devices.size
    rows = -(-min(batch, n) // devices) * devices
    total = -(-n // rows) * rows  # Zero rows pad the last batch.
    pad = lambda v: np.pad(v, [(0, total - n)] + [(0, 0)] * (v.ndim - 1))
    padded = {
        'lr': pad(scaler(images['lr'])),
        'lr_up': pad(scaler(images['lr_up'])),
        'index': pad(images['index']),
    }
    key = parallel.replicate(jax.random.PRNGKey(seed), exp.mesh)
    out, nfe, seconds, timings = [], 0, 0.0, None
    for start in range(0, total, rows):
        chunk = parallel.shard_batch(
            {k: v[start : start + rows] for k, v in padded.items()}, exp.mesh
        )
        args = (params, key, {'lr_up': chunk['lr_up'], 'lr': chunk['lr']}, chunk['index'])
        if timings is None:
            compiled, timings = common.compile_timed(fn, args)
        t0 = time.perf_counter()
        x, info = jax.block_until_ready(compiled(*args))
        seconds += time.perf_counter() - t0
        out.append(np.asarray(inverse(x)))
        nfe = max(nfe, int(np.max(np.asarray(info['nfe']))))
    sr = np.clip(np.concatenate(out)[:n], 0.0, 1.0)
    return dict(sr=sr, nfe=nfe, seconds=round(seconds, 2), **timings)


def score(sr, images: dict, config) -> dict:
    """Per-image metrics and their summaries (mean, std, n)."""
    import numpy as np

    from evaluation import image_metrics as im

    hr, lr = images['hr'], images['lr']
    values = dict(
        psnr=im.psnr(sr, hr),
        ssim=im.ssim(sr, hr),
        consistency=im.consistency(sr, lr, config.data.downscale, config.data.down_kernel),
    )
    per_image = {k: np.asarray(v, np.float64).round(8).tolist() for k, v in values.items()}
    return dict(**{k: im.summarize(v) for k, v in per_image.items()}, per_image=per_image)


def table(results: list[dict]) -> str:
    def cell(summary, fmt):
        return f'{summary["mean"]:{fmt}} ± {summary["std"]:{fmt}}'

    rows = [
        [
            r['label'],
            r['nfe'],
            cell(r['psnr'], '.2f'),
            cell(r['ssim'], '.4f'),
            cell(r['consistency'], '.2e'),
            r['seconds'],
        ]
        for r in results
    ]
    return common.markdown_table(['method', 'NFE', 'PSNR', 'SSIM', 'consistency', 'seconds'], rows)


def main() -> None:
    parser = common.base_parser(__doc__)
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--num_images', type=int, default=16)
    parser.add_argument('--batch', type=int, default=8, help='images per sampler call')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--pc_steps', type=int, default=1000)
    parser.add_argument('--nfes', default='10,20,50')
    parser.add_argument('--methods', default='bicubic,pc,heun,dpm2m,ode')
    parser.add_argument('--out', default='', help='default bench/results/sr_quality_<name>.json')
    args = parser.parse_args()
    config = common.load_config(args.config, args.config_arg, args.set)
    use_all_cpu_cores(config.compute.cpu_devices or None)
    import jax

    import experiment

    exp = experiment.build(config)
    params, step = exp.load_ema_params(args.workdir)
    images = eval_images(config, args.num_images)
    methods, nfes = args.methods.split(','), [int(v) for v in args.nfes.split(',')]
    results = (
        [
            dict(
                label='bicubic',
                method='bicubic',
                nfe=0,
                seconds=0.0,
                **score(images['lr_up'], images, config),
            )
        ]
        if 'bicubic' in methods
        else []
    )
    for label, fields in plan(config, methods, args.pc_steps, nfes):
        cfg = common.sampling_variant(config, **fields)
        run = run_sampler(exp, params, cfg, images, args.seed, args.batch)
        results.append(
            dict(
                label=label,
                **fields,
                **{k: v for k, v in run.items() if k != 'sr'},
                **score(run['sr'], images, config),
            )
        )
        print(f'{label}: NFE {run["nfe"]}, {run["seconds"]} s', file=sys.stderr, flush=True)
    name = Path(args.config).stem + (f'_{args.config_arg}' if args.config_arg else '')
    out = Path(args.out or common.RESULTS / f'sr_quality_{name}.json')
    report = dict(
        config=args.config,
        config_arg=args.config_arg,
        sets=args.set,
        workdir=args.workdir,
        checkpoint_step=step,
        num_images=len(images['lr']),
        indices=images['index'].tolist(),
        seed=args.seed,
        split=config.eval.split,
        devices=len(jax.devices()),
        platform=jax.devices()[0].platform,
        table=table(results),
        results=results,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(report['table'] + f'\n\n(written to {out})')


if __name__ == '__main__':
    main()
