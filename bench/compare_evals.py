"""One table from several ``--mode eval`` results (models and samplers side by side)::

    python bench/compare_evals.py --out bench/results/ecdp_demo \\
        "ECDP, ODE=runs/ecdp/eval/ecdp_ode" "SDE-VE, PC N=1000=runs/ve/eval/ve_pc"

Each argument is ``label=eval folder`` (split at the last ``=``), optionally
``label=eval folder#method`` for a method other than ``sr`` (``mean``, ``srdg``); the
``bicubic`` row is added once, from the first folder that has it (all folders should hold the
same images: equal ``eval.max_images`` and split). Writes ``<out>.md`` and ``<out>.json``:
PSNR, SSIM, LR consistency, LPIPS, CS, verification AUC, Rank-1, NFE and sampling seconds per
image (blank for evals made before it was recorded), with each row's number of images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

COLUMNS = (
    'images',
    'PSNR',
    'SSIM',
    'consistency x1e-5',
    'LPIPS',
    'CS',
    'AUC',
    'Rank-1',
    'NFE',
    's/image',
)


def row(method: dict[str, Any], images: int) -> dict[str, Any]:
    """The table's values of one method of an eval's ``metrics.json``."""
    rank = method.get('identification', {}).get('rank', {})
    return {
        'images': images,
        'PSNR': method['psnr']['mean'],
        'SSIM': method['ssim']['mean'],
        'consistency x1e-5': method['consistency']['mean'] * 1e5,
        'LPIPS': method.get('lpips', {}).get('mean'),
        'CS': method.get('cs', {}).get('mean'),
        'AUC': method.get('verification', {}).get('auc'),
        'Rank-1': rank.get('1', rank.get(1)),
        'NFE': method.get('nfe'),
        's/image': method.get('seconds'),
    }


def collect(pairs: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        label, sep, folder = pair.rpartition('=')  # Labels may hold '=' (N=1000).
        if not sep:
            raise ValueError(f'{pair!r}: expected label=eval folder')
        folder, _, method = folder.partition('#')
        path = Path(folder) / 'metrics.json'
        if not path.is_file():
            raise FileNotFoundError(f'{path}: not an eval result (run --mode eval first)')
        metrics = json.loads(path.read_text())
        methods, images = metrics['methods'], metrics['n_images']
        if (method or 'sr') not in methods:
            raise ValueError(f'{path}: no method {method or "sr"!r}; it has {sorted(methods)}')
        rows.append({'label': label, 'eval': folder, **row(methods[method or 'sr'], images)})
        if 'bicubic' in methods and not any(r['label'] == 'bicubic' for r in rows):
            rows.append({'label': 'bicubic', 'eval': folder, **row(methods['bicubic'], images)})
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return ''
    return f'{value:.4f}' if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', required=True, help='output path without extension')
    parser.add_argument('pairs', nargs='+', help='label=eval folder')
    args = parser.parse_args()
    rows = collect(args.pairs)
    table = common.markdown_table(
        ('method', *COLUMNS), [[r['label'], *(_fmt(r[c]) for c in COLUMNS)] for r in rows]
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.md').write_text(table + '\n')
    out.with_suffix('.json').write_text(json.dumps(rows, indent=1))
    print(table)


if __name__ == '__main__':
    main()
