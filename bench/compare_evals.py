"""One table from several ``--mode eval`` results (models and samplers side by side)::

    python bench/compare_evals.py --out bench/results/ecdp_demo \\
        "ECDP, ODE=runs/ecdp/eval/ecdp_ode" "SDE-VE, PC N=1000=runs/ve/eval/ve_pc"

Each argument is ``label=eval folder`` (split at the last ``=``), optionally
``label=eval folder#method`` for a method other than ``sr`` (``mean``, ``srdg``); the
``bicubic`` row is added once, from the first folder that has it (all folders should hold the
same images: equal ``eval.max_images`` and split). Writes ``<out>.md`` and ``<out>.json``:
PSNR, SSIM, LR consistency, LPIPS, CS, verification AUC, Rank-1, NFE and sampling seconds per
image (blank for evals made before it was recorded), with each row's number of images. CS, AUC
and Rank-1 are SFace's (the columns of every eval before there were several recognisers); each
other recogniser an eval has adds ``CS <name>``, ``AUC <name>`` and ``Rank-1 <name>``
(``CS dlib``...; blank for evals without it), read from its suffixed keys
(:func:`evaluation.report.face_key`), so old and new eval folders share one table.

``--common`` compares on the same faces: every row is recomputed from the eval's per-image
``records.jsonl`` over the images that every listed eval has recorded (an unfinished eval
counts with the batches it finished). Verification and Rank-1 depend on the gallery, so rows
over different image sets are not comparable; this makes them so. The face protocols use the
default ``config.eval`` FARs and ranks. A dataset index is only the same face in two evals of
the same data, so ``--common`` first compares the evals' recorded settings (``settings.json``,
else ``metrics.json``'s): the split and every ``config.data`` field but those that change
neither the HR face of an index nor its LR (:data:`NOT_DATA_IDENTITY`) must agree, else it
refuses, naming both folders and each differing field.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from configs import default  # noqa: E402
from evaluation import report  # noqa: E402
from evaluation import run as eval_run  # noqa: E402

#: Columns of every table; the identity ones (``IDENTITY``) are SFace's, and each other
#: recogniser adds its own (:func:`columns`).
COLUMNS = (
    'images',
    'PSNR',
    'SSIM',
    'consistency x1e-5',
    'LPIPS',
    'CS',
    'AUC',
    'TAR@1e-2',
    'Rank-1',
    'Rank-5',
    'NFE',
    's/image',
)
IDENTITY = ('CS', 'AUC', 'TAR@1e-2', 'Rank-1', 'Rank-5')
#: The false accept rate of the TAR column.
TAR_FAR = 1e-2


def _tag(column: str, recogniser: str) -> str:
    """``CS`` for SFace, ``CS dlib`` for dlib (the keys' scheme, :func:`report.face_key`)."""
    return column if recogniser == report.PRIMARY_RECOGNISER else f'{column} {recogniser}'


def row(method: dict[str, Any], images: int) -> dict[str, Any]:
    """The table's values of one method of an eval's ``metrics.json`` (a protocol recorded as
    None, e.g. verification over a single identity, gives a blank), identity columns per
    recogniser it has."""
    get = lambda key: method.get(key) or {}
    values = {
        'images': images,
        'PSNR': method['psnr']['mean'],
        'SSIM': method['ssim']['mean'],
        'consistency x1e-5': method['consistency']['mean'] * 1e5,
        'LPIPS': get('lpips').get('mean'),
    }
    for name in report.recognisers_in(method, 'cs') or [report.PRIMARY_RECOGNISER]:
        rank = get(report.face_key('identification', name)).get('rank', {})
        verification = get(report.face_key('verification', name))
        values[_tag('CS', name)] = get(report.face_key('cs', name)).get('mean')
        values[_tag('AUC', name)] = verification.get('auc')
        values[_tag('TAR@1e-2', name)] = (verification.get('tar_at_far') or {}).get(
            report.far_key(TAR_FAR)
        )
        values[_tag('Rank-1', name)] = rank.get('1', rank.get(1))
        values[_tag('Rank-5', name)] = rank.get('5', rank.get(5))
    return {**values, 'NFE': method.get('nfe'), 's/image': method.get('seconds')}


def columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """:data:`COLUMNS`, with each other recogniser's identity columns after SFace's."""
    extra = [c for r in rows for c in r if c not in COLUMNS and c not in ('label', 'eval')]
    at = COLUMNS.index(IDENTITY[-1]) + 1
    return COLUMNS[:at] + tuple(dict.fromkeys(extra)) + COLUMNS[at:]


def parse(pair: str) -> tuple[str, Path, str]:
    """``label=folder[#method]`` -> (label, folder, method); the label may hold '='."""
    label, sep, folder = pair.rpartition('=')
    if not sep:
        raise ValueError(f'{pair!r}: expected label=eval folder')
    folder, _, method = folder.partition('#')
    return label, Path(folder), method or 'sr'


def _with_bicubic(
    rows: list[dict[str, Any]], label: str, folder: Path, methods: dict, images: int, method: str
) -> None:
    """Appends ``label``'s row, then bicubic's once (from the first folder that has it)."""
    if method not in methods:
        raise ValueError(f'{folder}: no method {method!r}; it has {sorted(methods)}')
    rows.append({'label': label, 'eval': str(folder), **row(methods[method], images)})
    if 'bicubic' in methods and not any(r['label'] == 'bicubic' for r in rows):
        rows.append({'label': 'bicubic', 'eval': str(folder), **row(methods['bicubic'], images)})


def collect(pairs: list[str]) -> list[dict[str, Any]]:
    """Rows from each eval's ``metrics.json`` (each over its own images)."""
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        label, folder, method = parse(pair)
        path = folder / 'metrics.json'
        if not path.is_file():
            raise FileNotFoundError(f'{path}: not an eval result (run --mode eval first)')
        metrics = json.loads(path.read_text())
        _with_bicubic(rows, label, folder, metrics['methods'], metrics['n_images'], method)
    return rows


def load_records(folder: Path) -> dict[int, dict[str, Any]]:
    """An eval's per-image records by dataset index (finished batches of a running eval too)."""
    path = folder / eval_run.RECORDS
    if not path.is_file():
        raise FileNotFoundError(f'{path}: no per-image records (run --mode eval first)')
    return eval_run.load_records(path)


# ``config.data`` fields that change neither which HR face a dataset index denotes nor the LR
# made from it (caching, training-only flips, the model's value range, a permission): every
# other field, present or added later, is part of the data's identity.
NOT_DATA_IDENTITY = ('cache_mb', 'random_flip', 'centered', 'allow_split_overlap')


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f'{path}: not JSON ({err})') from None


def recorded_settings(folder: Path) -> dict[str, Any]:
    """The settings an eval recorded: ``settings.json``, else those in ``metrics.json``."""
    if (folder / eval_run.SETTINGS).is_file():
        return _read_json(folder / eval_run.SETTINGS)
    if (folder / 'metrics.json').is_file() and 'settings' in _read_json(folder / 'metrics.json'):
        return _read_json(folder / 'metrics.json')['settings']
    raise FileNotFoundError(
        f'{folder}: no recorded settings ({eval_run.SETTINGS} or metrics.json), so what its '
        'dataset indices denote is unknown; run --mode eval again to record them'
    )


def data_identity(folder: Path) -> dict[str, Any]:
    """What fixes the HR face and the LR of each dataset index of an eval: its split and its
    ``config.data`` fields outside :data:`NOT_DATA_IDENTITY`, as ``{'data.<field>': value}``."""
    settings = recorded_settings(folder)
    if 'data' not in settings or 'split' not in settings:
        raise ValueError(f'{folder}: its recorded settings have no data or split fields')
    identity = {f'data.{k}': v for k, v in settings['data'].items() if k not in NOT_DATA_IDENTITY}
    return {**identity, 'split': settings['split']}


def check_same_data(folders: list[Path]) -> None:
    """Refuses evals of different data (see the module), naming both folders and each field
    with both values ('missing' where one eval did not record it)."""
    first = data_identity(folders[0])
    for folder in folders[1:]:
        other = data_identity(folder)
        differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if differ:
            values = '; '.join(
                f'{k}: {first.get(k, "missing")!r} vs {other.get(k, "missing")!r}' for k in differ
            )
            raise ValueError(
                f'{folders[0]} and {folder} evaluate different data ({values}): the same '
                'dataset index is not the same face or LR there, so --common cannot intersect '
                'them'
            )


def collect_common(pairs: list[str]) -> list[dict[str, Any]]:
    """Rows recomputed over the images every eval recorded (with its method), after checking
    that all evals are of the same data; see the module."""
    parsed = [parse(p) for p in pairs]
    records = [load_records(folder) for _, folder, _ in parsed]
    check_same_data([folder for _, folder, _ in parsed])
    have = [
        {i for i, r in recs.items() if method in r['methods']}
        for recs, (_, _, method) in zip(records, parsed, strict=True)
    ]
    shared = set.intersection(*have)
    if not shared:
        raise ValueError(f'no image is recorded by every eval of {[str(f) for _, f, _ in parsed]}')
    ecfg, rows = default.eval_config(), []
    for recs, (label, folder, method) in zip(records, parsed, strict=True):
        chosen = [recs[i] for i in sorted(shared)]
        names = [method] + (['bicubic'] if all('bicubic' in r['methods'] for r in chosen) else [])
        methods = {m: report.method_summary(chosen, m, ecfg) for m in dict.fromkeys(names)}
        _with_bicubic(rows, label, folder, methods, len(chosen), method)
    return rows


def recogniser_tags(rows: list[dict[str, Any]]) -> list[str]:
    """The recognisers the rows carry, as column tags ('' for SFace, ' dlib'...)."""
    tags = [''] + [c[len('AUC') :] for c in columns(rows) if c.startswith('AUC ')]
    return list(dict.fromkeys(tags))


def plot_frontier(rows: list[dict[str, Any]], path: Path) -> None:
    """The perception-identity frontier: AUC and Rank-1 of every row against its LPIPS, one
    column of panels per recogniser (issue 20); rows without LPIPS (HR) at LPIPS 0."""
    tags = recogniser_tags(rows)
    fig, axes = report._figure(4.2, 3.6, columns=2 * len(tags))
    axes = list(np.atleast_1d(axes))
    for j, (tag, metric) in enumerate((t, m) for t in tags for m in ('AUC', 'Rank-1')):
        ax = axes[j]
        for r in rows:
            value = r.get(f'{metric}{tag}')
            if value is None:
                continue
            x = r.get('LPIPS') or 0.0
            ax.scatter([x], [value], s=18)
            offset = {'xytext': (3, 2), 'textcoords': 'offset points'}
            ax.annotate(r['label'], (x, value), fontsize=6, **offset)
        name = tag.strip() or report.PRIMARY_RECOGNISER
        ax.set(xlabel='LPIPS (lower: more realistic)', ylabel=f'{metric} ({name})')
        ax.grid(alpha=0.3)
    report.save_figure(fig, path)


def _fmt(value: Any) -> str:
    if value is None:
        return ''
    return f'{value:.4f}' if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', required=True, help='output path without extension')
    parser.add_argument('pairs', nargs='+', help='label=eval folder')
    parser.add_argument(
        '--common', action='store_true', help='recompute every row on the images all evals share'
    )
    parser.add_argument(
        '--frontier', action='store_true', help='also plot AUC and Rank-1 against LPIPS'
    )
    args = parser.parse_args()
    rows = (collect_common if args.common else collect)(args.pairs)
    names = columns(rows)
    table = common.markdown_table(
        ('method', *names), [[r['label'], *(_fmt(r.get(c)) for c in names)] for r in rows]
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.md').write_text(table + '\n')
    out.with_suffix('.json').write_text(json.dumps(rows, indent=1))
    if args.frontier:
        plot_frontier(rows, out.with_name(out.name + '_frontier.png'))
    print(table)


if __name__ == '__main__':
    main()
