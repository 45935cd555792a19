"""The published SRDG attribute classifiers on the 8 ``quis8`` faces: accuracy against diffusion
time (SRDG Fig. 3) under the VE SDE the SRDG SR model uses (sigma 0.01 .. 348, [0, 1] data)::

    python bench/srdg_classifiers.py --repeats 4

Writes ``bench/results/srdg_quis8.{json,md,png}``. Accuracy at each t is averaged over
``--repeats`` noise draws. ``quis8/attributes.csv`` uses CelebA semantics (``no_beard``): the
beard checkpoint's class 1 is "no beard". Eight faces, seven of them male and all with
eyeglasses: these numbers check the checkpoints and the time mapping, they do not rank them.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

# quis8 column -> published checkpoint.
CHECKPOINTS = {'male': 'ckpt_gender', 'eyeglasses': 'ckpt_glasses', 'no_beard': 'ckpt_beard'}
SRDG_SIGMA_MIN, SRDG_SIGMA_MAX = 0.01, 348.0  # SRDG's VE SDE (its sr_ve config).


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--repeats', type=int, default=4, help='noise draws per time')
    parser.add_argument('--times', type=int, default=11, help='times in [1e-3, 1]')
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    import classifier_train
    import datasets
    import sde_lib
    from models import classifiers
    from utils.paths import shared_data_dir

    root = shared_data_dir()
    with open(root / 'quis8' / 'attributes.csv') as f:
        rows = list(csv.DictReader(f))
    faces = np.stack([datasets.load_image(root / 'quis8' / r['file']) for r in rows]) / 255.0
    faces = jnp.asarray(faces, jnp.float32)
    sde = sde_lib.VESDE(sigma_min=SRDG_SIGMA_MIN, sigma_max=SRDG_SIGMA_MAX)
    model = classifiers.build_classifier('srdg_densenet')
    ts = np.linspace(1e-3, 1.0, args.times)
    accuracy = {}
    for attribute, name in CHECKPOINTS.items():
        variables = classifiers.load_variables(
            root / 'srdg_classifiers' / name, model, (128,) * 2 + (3,)
        )
        labels = np.asarray([int(r[attribute]) for r in rows])
        runs = [
            classifier_train.accuracy_vs_t(
                model, variables, sde, faces, faces, labels, ts, jax.random.PRNGKey(k), False
            )
            for k in range(args.repeats)
        ]
        accuracy[attribute] = np.mean(runs, axis=0).round(4).tolist()
    result = {
        't': ts.round(4).tolist(),
        'sigma': np.asarray(sde.sigma(jnp.asarray(ts))).round(4).tolist(),
        'accuracy': accuracy,
        'repeats': args.repeats,
        'labels': {a: [int(r[a]) for r in rows] for a in CHECKPOINTS},
    }
    out = common.RESULTS / 'srdg_quis8'
    out.with_suffix('.json').write_text(json.dumps(result, indent=2))
    classifier_train.plot_accuracy(out.with_suffix('.png'), ts, accuracy)
    header = '| t | sigma | ' + ' | '.join(CHECKPOINTS) + ' |'
    lines = [header, '|' + '---|' * (len(CHECKPOINTS) + 2)]
    for i, t in enumerate(result['t']):
        cells = [f'{accuracy[a][i]:.3f}' for a in CHECKPOINTS]
        lines.append(f'| {t:.3f} | {result["sigma"][i]:.3g} | ' + ' | '.join(cells) + ' |')
    command = f'python bench/srdg_classifiers.py --repeats {args.repeats} --times {args.times}'
    intro = __doc__.split('::')[0].rstrip(':') + f':\n\n    {command}\n'
    out.with_suffix('.md').write_text(intro + '\n' + '\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
