"""A model against bicubic on LR made by each downscaling kernel and on the fixed degraded LR
(issue 22: no kernel may leave a shipped model below bicubic of the same LR)::

    python bench/kernels.py --model pretrained/ecdp_x4_student --images 200 --face sface

One ``--mode eval`` per LR (:mod:`evaluation.run`, methods ``sr`` and ``bicubic``, the first
``--images`` test faces, the model's own sampler): area, bilinear, bicubic and Lanczos-3, the
last three with and without antialiasing (``eval.down_kernel``), then the model's own kernel
with the fixed ``'degraded'`` blur, noise and JPEG (``eval.degradation``,
``configs/degradation_presets.py``). The model's own kernel is its clean-LR row
(``eval.down_kernel`` ''). Each is an ordinary, resumable eval folder (for a package
``results/eval/<name>``, with ``-lr_<kernel>`` or ``-degraded`` in the name). Writes
``bench/results/kernels_<tag>.{md,json}``: per LR the PSNR, SSIM, LPIPS and identity (CS and
verification AUC of the first recogniser of ``--face``) of the model and of bicubic, the
model's margins, and whether the model falls below bicubic in PSNR.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.compare_evals import row as metric_row  # noqa: E402
from configs import degradation_presets  # noqa: E402
from evaluation.report import PRIMARY_RECOGNISER  # noqa: E402
from utils.cpu_devices import use_all_cpu_cores  # noqa: E402

#: The kernel specs evaluated (``eval.down_kernel``), in table order: every one trained on.
KERNELS = degradation_presets.KERNELS
DEGRADED = 'degraded'  # The fixed eval degradation reported beside the kernels.
METHODS = ('sr', 'bicubic')
# Columns of the table: (header, row key); "model" is sr, the margins are sr - bicubic.
COLUMNS = (
    ('PSNR model', 'psnr_sr'),
    ('PSNR bicubic', 'psnr_bicubic'),
    ('ΔPSNR', 'psnr_margin'),
    ('SSIM model', 'ssim_sr'),
    ('SSIM bicubic', 'ssim_bicubic'),
    ('LPIPS model', 'lpips_sr'),
    ('LPIPS bicubic', 'lpips_bicubic'),
    ('CS model', 'cs_sr'),
    ('CS bicubic', 'cs_bicubic'),
    ('ΔCS', 'cs_margin'),
    ('AUC model', 'auc_sr'),
    ('AUC bicubic', 'auc_bicubic'),
    ('below bicubic', 'below_bicubic'),
)


def lr_settings(own: str, kernels: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """``(label, eval.down_kernel, eval.degradation)`` of every row: each kernel (the model's
    own as ``''``, its clean eval), then the model's kernel with the fixed degradation."""
    rows = [(f'{k} (trained)' if k == own else k, '' if k == own else k, '') for k in kernels]
    return rows + [(f'{own} + {DEGRADED}', '', DEGRADED)]


def summarize(label: str, metrics: dict[str, Any], seconds: float, face: str) -> dict[str, Any]:
    """One table row from an eval's metrics.json content (compare_evals' columns; identity:
    recogniser ``face``'s)."""
    n = metrics['n_images']
    tag = lambda column: column if face == PRIMARY_RECOGNISER else f'{column} {face}'
    sr, bic = (metric_row(metrics['methods'][m], n) for m in METHODS)
    data = metrics['settings']['data']
    values = {'label': label, 'eval': metrics['name'], 'images': n, 'seconds': round(seconds, 1)}
    values['lr'] = {k: data[k] for k in ('down_kernel', 'antialias', 'blur_sigma', 'noise_sigma',
                                         'jpeg_quality')}  # fmt: skip
    for key, column in (('psnr', 'PSNR'), ('ssim', 'SSIM'), ('lpips', 'LPIPS'),
                        ('cs', tag('CS')), ('auc', tag('AUC'))):  # fmt: skip
        values[f'{key}_sr'], values[f'{key}_bicubic'] = sr.get(column), bic.get(column)
    for key in ('psnr', 'cs'):
        if values[f'{key}_sr'] is not None and values[f'{key}_bicubic'] is not None:
            values[f'{key}_margin'] = values[f'{key}_sr'] - values[f'{key}_bicubic']
    values['below_bicubic'] = values.get('psnr_margin', 0.0) < 0
    return values


def evaluate_all(config: Any, folder: str, rows: list[tuple[str, str, str]]) -> list[dict]:
    """Every row's eval with one loaded model and metric networks (compiled once)."""
    import datasets
    from evaluation import run as eval_run

    datasets.check_held_out(config.data, config.eval.split)
    model = eval_run.load_model(config, folder)
    fns = eval_run.make_metric_fns(config.eval)
    results = []
    for label, kernel, degradation in rows:
        point = copy.deepcopy(config)
        point.eval.update(down_kernel=kernel, degradation=degradation)
        began = time.perf_counter()
        metrics = eval_run.evaluate(point, folder, METHODS, model, fns)
        face = config.eval.face[0] if config.eval.face else PRIMARY_RECOGNISER
        results.append(summarize(label, metrics, time.perf_counter() - began, face))
        done = results[-1]
        psnr = f'PSNR {done["psnr_sr"]:.2f} (bicubic {done["psnr_bicubic"]:.2f})'
        print(f'{label}: {psnr}, {done["seconds"]} s', flush=True)
    return results


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return '**yes**' if value else 'no'
    return '' if value is None else f'{value:.4f}' if isinstance(value, float) else str(value)


def write(out: Path, record: dict[str, Any]) -> str:
    """``<out>.json`` (the record) and ``<out>.md`` (caption and table); returns the text."""
    degraded = degradation_presets.EVAL_DEGRADATIONS[DEGRADED]
    table = common.markdown_table(
        ('LR', *(h for h, _ in COLUMNS)),
        [[r['label'], *(_fmt(r.get(k)) for _, k in COLUMNS)] for r in record['rows']],
    )
    text = (
        f'{record["model"]} (sampler {record["sampler"]}) on the first {record["images"]} '
        f'test faces of {record["data"]}, LR made by each kernel (`:noaa`: without '
        'antialiasing; `area`: OpenCV INTER_AREA), against bicubic enlargement of the same LR. '
        f"`{DEGRADED}`: the model's kernel after a Gaussian blur of {degraded['blur_sigma']} HR "
        f'px, then Gaussian noise {degraded["noise_sigma"] * 255:.0f}/255 and JPEG quality '
        f'{degraded["jpeg_quality"]} (configs/degradation_presets.py). PSNR (dB), SSIM on '
        f'RGB; LPIPS ({record["lpips"]}); CS: cosine of {record["recogniser"]} embeddings '
        'to the HR; AUC: verification (output probe vs HR of another image). Δ: model - '
        f'bicubic. {record["devices"]} {record["backend"]} devices.\n\n' + table
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    # (Not with_suffix: a tag may hold a dot, e.g. photo_x4_t0.3.)
    out.with_name(out.name + '.json').write_text(json.dumps(record, indent=1))
    out.with_name(out.name + '.md').write_text(text + '\n')
    return text


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--model', default='pretrained/ecdp_x4_student', help='package or run')
    parser.add_argument('--images', type=int, default=200, help='first N test faces')
    parser.add_argument('--face', default='sface', help='recognisers (eval.face), e.g. sface')
    parser.add_argument('--lpips', default='alex', help="eval.lpips ('' = off)")
    parser.add_argument('--batch', type=int, default=16, help='eval.batch_size')
    parser.add_argument('--kernels', default=','.join(KERNELS), help='kernel specs, comma list')
    parser.add_argument('--data', default='', help='data.path (default: the recorded one)')
    parser.add_argument('--tag', default='', help='output name (default: the model name)')
    parser.add_argument('--eval_output', default='', help="eval.output ('' = the model's)")
    parser.add_argument(
        '--set', action='append', default=[], help='config override KEY=VALUE (repeatable), '
        'e.g. sampling.temperature=0.5'
    )  # fmt: skip
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    use_all_cpu_cores()
    import jax

    import degradations
    import runs
    from evaluation.run import sampler_tag

    config = runs.Run.open(args.model).config()
    common.apply_sets(config, args.set)
    config.data.path = args.data or config.data.path
    faces = tuple(f for f in args.face.split(',') if f)
    config.eval.update(max_images=args.images, batch_size=args.batch, lpips=args.lpips,
                       face=faces, methods=METHODS, output=args.eval_output)  # fmt: skip
    own = degradations.kernel_spec(config.data.down_kernel, config.data.antialias)
    kernels = tuple(k.strip() for k in args.kernels.split(',') if k.strip())
    results = evaluate_all(config, args.model, lr_settings(own, kernels))
    tag = args.tag or Path(args.model).name.removeprefix('ecdp_')
    record = {
        'model': args.model, 'sampler': sampler_tag(config.sampling), 'images': args.images,
        'data': config.data.path, 'lpips': args.lpips, 'recogniser': faces[0] if faces else '',
        'devices': jax.device_count(), 'backend': jax.default_backend(), 'sets': args.set,
        'rows': results,
    }  # fmt: skip
    print(write(common.RESULTS / f'kernels_{tag}', record))


if __name__ == '__main__':
    main()
