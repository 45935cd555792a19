"""The adaptive probability-flow ODE: diffrax (``ode.solve``) against the hand-written Dopri5 it
replaced, side by side on the same trained model, faces and tolerances: NFE and seconds per
image. The old solver is read from a git revision (it is no longer in the tree)::

    python bench/ode_solvers.py --workdir W --config configs/ecdp/demo.py \\
        --old_rev 0dbea44 --tols 1e-3,1e-5 --batch 8 --repeats 2

Writes ``bench/results/ode_solvers.{json,md}``. Both solvers run per sample under ``vmap`` with
the same error norm (RMS of ``err / (atol + rtol max(|y|, |y_new|))``) and I-controller.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from utils.cpu_devices import use_all_cpu_cores  # noqa: E402


def old_dopri5(rev: str):
    """``dopri5(f, y0, t0, t1, rtol, atol, max_steps)`` from ``sampling.py`` at ``rev``."""
    source = subprocess.run(
        ['git', 'show', f'{rev}:sampling.py'], check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / 'old_sampling.py'
    path.write_text(source)
    spec = importlib.util.spec_from_file_location('old_sampling', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dopri5


def main() -> None:
    parser = common.base_parser(__doc__)
    parser.add_argument('--workdir', required=True, help='trained run whose EMA weights are used')
    parser.add_argument('--old_rev', default='0dbea44', help='git revision of the old Dopri5')
    parser.add_argument('--tols', default='1e-3,1e-5', help='rtol = atol values')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--repeats', type=int, default=2)
    args = parser.parse_args()
    use_all_cpu_cores()
    import jax
    import jax.numpy as jnp
    import numpy as np

    import datasets
    import experiment
    import ode
    import sampling
    from models.wrappers import make_score_fn

    config = common.load_config(args.config, args.config_arg, args.set)
    exp = experiment.build(config, jax.devices()[:1], args.workdir)
    params, step = exp.load_ema_params(args.workdir)
    batch = next(datasets.get_dataset(config.data, 'test', args.batch, train=False))
    scaler = datasets.get_data_scaler(config.data.centered)
    cond = {'lr_up': jnp.asarray(scaler(batch['lr_up']))}
    score_fn = make_score_fn(exp.model, params, exp.sde, config.score)
    field = sampling.probability_flow(score_fn, exp.sde)
    keys = jax.random.split(jax.random.PRNGKey(0), args.batch)
    u_T = jax.vmap(lambda k: exp.sde.prior_sampling(k, exp.hr_shape))(keys)
    t0, t1 = exp.sde.T, config.sampling.eps
    dopri5 = old_dopri5(args.old_rev)

    def run_old(tol):
        def one(u, c):
            c = jax.tree.map(lambda v: v[None], c)
            return dopri5(lambda t, y: field(t, y, c), u, t0, t1, tol, tol, 4096)

        return jax.jit(lambda u, c: jax.vmap(one)(u, c))

    def run_new(tol):
        opts = ode.ODEOptions(solver='dopri5', rtol=tol, atol=tol)

        def one(u, c):
            c = jax.tree.map(lambda v: v[None], c)
            return ode.solve(field, u, t0, t1, opts, c)[:2]

        return jax.jit(lambda u, c: jax.vmap(one)(u, c))

    rows = []
    for tol in (float(v) for v in args.tols.split(',')):
        outs = {}
        for name, make in (('hand-written Dopri5', run_old), ('diffrax Dopri5', run_new)):
            fn = make(tol)
            jax.block_until_ready(fn(u_T, cond))  # Compile and warm up.
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                y, nfe = jax.block_until_ready(fn(u_T, cond))
                times.append(time.perf_counter() - start)
            outs[name] = np.asarray(y)
            rows.append(
                {
                    'solver': name,
                    'tol': tol,
                    'nfe_max': int(np.max(nfe)),
                    'nfe_mean': float(np.mean(nfe)),
                    's_per_image': float(np.median(times)) / args.batch,
                }
            )
        diff = np.abs(outs['hand-written Dopri5'] - outs['diffrax Dopri5']).max()
        rows[-1]['max_abs_diff_to_old'] = float(diff)
    header = f'{args.config} step {step}, {args.batch} test faces, 1 device'
    keys = ('solver', 'tol', 'nfe_max', 'nfe_mean', 's_per_image', 'max_abs_diff_to_old')
    table = common.markdown_table(keys, [[r.get(k, '') for k in keys] for r in rows])
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / 'ode_solvers.json').write_text(json.dumps({'setup': header, 'rows': rows}))
    (common.RESULTS / 'ode_solvers.md').write_text(
        f'# ODE solvers side by side\n\n{header}\n\n{table}\n'
    )
    print(header)
    print(table)


if __name__ == '__main__':
    main()
