"""Seconds per face of a teacher's samplers against its distilled student, in one run, on the
same cores and the same real test faces (issue 21)::

    python bench/student_speed.py --teacher pretrained/ecdp_x4 --student S --batch 8 --tag x4

Rows: the teacher's own sampler (the shipped DPM-Solver++(2M), 20 NFE), the adaptive
probability-flow ODE (dopri5 at the teacher's tolerances), and the student at 1, 2 and 4 steps
(``sampling.method='student'``). Each is compiled once ahead of time and timed over
``--repeats`` runs after a warm-up (median). Writes ``bench/results/student_speed_<tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.run import repeat_runs  # noqa: E402
from utils.cpu_devices import use_all_cpu_cores  # noqa: E402


def faces(exp: Any, folder: str, batch: int) -> tuple[dict, Any]:
    """The first ``batch`` test faces as the sampler's condition, sharded, and their ids."""
    import numpy as np

    import datasets
    import mean_model
    from utils import parallel

    config = exp.config
    data = next(datasets.get_dataset(config.data, 'test', batch, train=False))
    mean = mean_model.load(config, exp.mesh.devices.flatten(), folder)
    cond = datasets.model_cond(mean(data), datasets.get_data_scaler(config.data.centered))
    ids = parallel.shard_batch({'ids': np.arange(batch, dtype=np.int32)}, exp.mesh)['ids']
    return parallel.shard_batch(cond, exp.mesh), ids


def measure(exp: Any, params: Any, cond: dict, ids: Any, fields: dict, repeats: int) -> dict:
    """Compile and run seconds, NFE and seconds per face of one sampler setting."""
    import jax
    import numpy as np

    fn = exp.make_sampler(common.sampling_variant(exp.config, **fields))
    args = (params, jax.random.key(0), cond, ids)
    compiled, timings = common.compile_timed(fn, args)
    runs, (_, info) = repeat_runs(compiled, args, repeats)
    median = float(np.median(runs))
    return dict(timings, nfe=int(np.max(np.asarray(info['nfe']))), run_s=round(median, 4),
                s_per_face=round(median / ids.shape[0], 4))  # fmt: skip


def rows(teacher: str, student: str) -> list[tuple[str, str, dict]]:
    """(label, model folder, sampling fields) of every row."""
    return [
        ('teacher: its sampler', teacher, {}),
        ('teacher: adaptive ODE', teacher, {'method': 'ode'}),
        *[(f'student: {k} step(s)', student, {'num_steps': k}) for k in (1, 2, 4)],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--teacher', required=True)
    parser.add_argument('--student', required=True)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--tag', default='x4')
    parser.add_argument(
        '--data', default='', help='data.path of the test faces (default: recorded)'
    )
    args = parser.parse_args()
    use_all_cpu_cores()
    import jax

    import experiment
    import runs

    results, models = [], {}
    for label, folder, fields in rows(args.teacher, args.student):
        if folder not in models:
            config = runs.Run.open(folder).config()
            config.data.path = args.data or config.data.path
            exp = experiment.build(config, jax.devices(), folder)
            params, _ = exp.load_ema_params(folder)
            models[folder] = (exp, params, *faces(exp, folder, args.batch))
        exp, params, cond, ids = models[folder]
        if fields.get('num_steps', 1) > 1:  # Re-noised steps refuse a temperature (sampling).
            fields = {**fields, 'temperature': 1.0}
        results.append({'sampler': label, **measure(exp, params, cond, ids, fields, args.repeats)})
    teacher_s = results[0]['s_per_face']  # The teacher's own sampler.
    for row in results:
        row['speed_up_vs_teacher'] = round(teacher_s / row['s_per_face'], 1)
    out = common.RESULTS / f'student_speed_{args.tag}'
    record = {'teacher': args.teacher, 'student': args.student, 'batch': args.batch,
              'devices': jax.device_count(), 'backend': jax.default_backend(),
              'rows': results}  # fmt: skip
    out.with_suffix('.json').write_text(json.dumps(record, indent=2))
    headers = ['sampler', 'NFE', 's/face', 'x faster than teacher', 'compile s']
    table = common.markdown_table(
        headers,
        [[r['sampler'], r['nfe'], r['s_per_face'], r['speed_up_vs_teacher'], r['compile_s']]
         for r in results],
    )  # fmt: skip
    text = (
        f'Teacher {args.teacher}, student {args.student}: {args.batch} test faces per call on '
        f'{record["devices"]} {record["backend"]} devices, median of {args.repeats} runs.\n\n'
        + table
    )
    out.with_suffix('.md').write_text(text + '\n')
    print(text)


if __name__ == '__main__':
    main()
