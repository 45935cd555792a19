"""What classifier guidance costs: time per NFE of each sampler with and without guidance, the
classifier gradient alone against one score evaluation, and that the guided programs have no
host callback and compile once (new classifier weights and another h reuse them)::

    python bench/guidance_cost.py --config configs/demo.py --classifier small_densenet \\
        --batch 8 --steps 10 --repeats 3
    python bench/guidance_cost.py --config configs/ve/ffhq_sr.py --classifier srdg_densenet \\
        --batch 8 --steps 10 --tag paper      # the published classifier on the paper network

Writes ``bench/results/guidance_cost_<tag>.{json,md}``. The classifier weights are random (its
cost does not depend on them); the score network's too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.run import _compile_counter, _host_callbacks, repeat_runs  # noqa: E402
from utils.cpu_devices import use_all_cpu_cores  # noqa: E402

PATTERNS = {
    'pc': dict(method='pc', predictor='euler_maruyama', corrector='none', schedule='uniform'),
    'pc+langevin': dict(method='pc', predictor='euler_maruyama', corrector='langevin'),
    'dpm2m': dict(method='dpm2m', schedule='logsnr'),
}


def guided_inputs(exp, classifier_name: str, data: dict, h: float, seed: int) -> tuple:
    """Guidance, its replicated variables (random weights, scale ``h``) and targets."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import guidance
    from models import classifiers
    from utils import parallel

    classifier = classifiers.build_classifier(classifier_name)
    g = guidance.Guidance(('attribute',), (classifier,), exp.config.data.centered)
    init = jax.jit(lambda k: classifiers.init_variables(classifier, k, exp.hr_shape))
    variables = {'scale': jnp.float32(h), 'classifiers': {'attribute': init(jax.random.key(seed))}}
    batch = data['ids'].shape[0]
    targets = parallel.shard_batch({'a': np.ones((batch, 1), np.int32)}, exp.mesh)['a']
    return g, parallel.replicate(variables, exp.mesh), targets


def measure(exp, params, key, data, classifier_name: str, label: str, steps: int, repeats: int):
    """Seconds per NFE unguided and guided, host callbacks, compilations of a second call."""
    import jax
    import numpy as np

    import guidance
    import sampling

    fields = dict(PATTERNS[label], num_steps=steps)
    cfg = common.sampling_variant(exp.config, **fields)
    cond = {'lr_up': data['lr_up'], 'lr': data['lr']}
    row: dict[str, Any] = {}
    for mode in ('unguided', 'guided'):
        if mode == 'unguided':
            fn, args = exp.make_sampler(cfg), (params, key, cond, data['ids'])
        else:
            g, variables, targets = guided_inputs(exp, classifier_name, data, 100.0, 0)
            fn = sampling.make_sampler(
                cfg, exp.sde, exp.model, exp.config.score, exp.config.data, exp.hr_shape,
                mesh=exp.mesh, guidance=g)  # fmt: skip
            cond_g = {**cond, guidance.ATTRIBUTES: targets}
            args = (guidance.sampler_params(params, variables), key, cond_g, data['ids'])
        compiled, timings = common.compile_timed(fn, args)
        runs, (_, info) = repeat_runs(compiled, args, repeats)
        nfe = int(np.max(np.asarray(info['nfe'])))
        row[mode] = dict(
            timings,
            nfe=nfe,
            per_nfe_s=round(float(np.median(runs)) / nfe, 5),
            host_callbacks=_host_callbacks(compiled),
        )
    # Other weights and h through the jitted (not AOT) function: no new compilation.
    _, other, _ = guided_inputs(exp, classifier_name, data, 7.0, 1)
    other_args = (guidance.sampler_params(params, other), key, args[2], data['ids'])
    compiles = _compile_counter()
    jax.block_until_ready(fn(*args))
    before = len(compiles)
    jax.block_until_ready(fn(*other_args))
    row['guided']['compiles_for_new_weights_and_h'] = len(compiles) - before
    row['ratio'] = round(row['guided']['per_nfe_s'] / row['unguided']['per_nfe_s'], 3)
    return row


def classifier_vs_score(exp, params, data, classifier_name: str, repeats: int) -> dict:
    """Seconds of one classifier gradient and of one score evaluation, and their ratio."""
    import jax

    import guidance

    g, variables, targets = guided_inputs(exp, classifier_name, data, 1.0, 0)
    cond = {'lr_up': data['lr_up'], guidance.ATTRIBUTES: targets}
    grad = jax.jit(lambda v, u, t, c: guidance.guidance_term(g, v, exp.sde, u, t, c))
    grad_t, _ = common.timed_runs(grad, (variables, data['x'], data['t'], cond), repeats)
    score_t, _ = common.timed_runs(
        common.jitted_forward(exp), (params, data['x'], data['t'], {'lr_up': data['lr_up']}),
        repeats)  # fmt: skip
    grad_s, score_s = (min(t['run_s_all']) for t in (grad_t, score_t))
    return {'classifier_grad_s': grad_s, 'score_s': score_s, 'ratio': round(grad_s / score_s, 3)}


def main() -> None:
    parser = common.base_parser(__doc__)
    parser.add_argument('--classifier', default='small_densenet')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--tag', default='demo')
    args = parser.parse_args()
    use_all_cpu_cores()
    import jax

    import experiment

    config = common.load_config(args.config, args.config_arg, args.set)
    exp = experiment.build(config, jax.devices()[: min(args.batch, jax.device_count())])
    params, key, data = common.make_inputs(exp, args.batch)
    result = {
        'config': args.config,
        'classifier': args.classifier,
        'batch': args.batch,
        'devices': exp.mesh.devices.size,
        'backend': jax.default_backend(),
        'one_evaluation': classifier_vs_score(exp, params, data, args.classifier, args.repeats),
        'samplers': {
            label: measure(exp, params, key, data, args.classifier, label, args.steps, args.repeats)
            for label in PATTERNS
        },
    }
    out = common.RESULTS / f'guidance_cost_{args.tag}'
    out.with_suffix('.json').write_text(json.dumps(result, indent=2))
    rows = [
        [label, r['unguided']['per_nfe_s'], r['guided']['per_nfe_s'], r['ratio'],
         r['guided']['host_callbacks'], r['guided']['compiles_for_new_weights_and_h']]
        for label, r in result['samplers'].items()
    ]  # fmt: skip
    headers = ['sampler', 's/NFE', 's/NFE guided', 'ratio', 'host callbacks', 'recompiles']
    one = result['one_evaluation']
    text = (
        f'{args.config}, classifier {args.classifier}, batch {args.batch} on '
        f'{result["devices"]} {result["backend"]} devices. One classifier gradient '
        f'{one["classifier_grad_s"]} s against one score evaluation {one["score_s"]} s '
        f'(ratio {one["ratio"]}).\n\n' + common.markdown_table(headers, rows)
    )
    out.with_suffix('.md').write_text(text + '\n')
    print(text)


if __name__ == '__main__':
    main()
