"""PSNR and CS against NFE: collects the ``--mode eval`` results of a workdir into one table.

    W=runs/demo; C="--config configs/demo.py --workdir $W --mode eval"
    python main.py $C --config.eval.max_images=16 --config.sampling.method=dpm2m \\
        --config.eval.sweep_key=sampling.num_steps --config.eval.sweep_values=5,10,20,30,50
    python main.py $C ... --config.sampling.eta=1.0 ...        # SDE-DPM-Solver++(2M), same sweep
    python main.py $C ... --config.sampling.method=ode --config.eval.methods=sr
    python main.py $C ... --config.sampling.method=pc --config.sampling.num_steps=2000 \\
        --config.sampling.predictor=euler_maruyama --config.sampling.schedule=uniform
    python bench/quality_vs_nfe.py --workdir $W --out bench/results/quality_vs_nfe_demo

Every eval of ``W/eval/`` (one per sampler setting; all on the same images with the same seed,
which ``--mode eval`` guarantees for equal ``eval.max_images`` and ``eval.seed``) becomes a row:
sampler family, NFE, PSNR, SSIM, CS, LPIPS and LR consistency (means over images, and the PSNR
and CS standard deviations). Writes ``<out>.json``, ``<out>.md`` and ``<out>.png`` (PSNR and CS
against NFE, log scale, one line per sampler family, baselines as horizontal lines).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

METRICS = ('psnr', 'ssim', 'cs', 'lpips', 'consistency')


def family(settings: dict[str, Any]) -> str:
    """A sampler family label from an eval's ``settings.json`` (steps excluded)."""
    s = settings.get('sampling', {})
    method = s.get('method', '?')
    if method == 'pc':
        return f'PC {s.get("predictor")} + {s.get("corrector")}'
    if method == 'dpm2m':
        return 'SDE-DPM-Solver++(2M)' if s.get('eta') else 'DPM-Solver++(2M)'
    return {'ode': 'ODE (Dopri5)', 'heun': 'Heun (EDM)'}.get(method, method)


def collect(workdir: Path) -> list[dict[str, Any]]:
    """One row per (eval, method) of ``workdir/eval/*/metrics.json``, sweeps excluded."""
    rows = []
    for path in sorted((workdir / 'eval').glob('*/metrics.json')):
        metrics = json.loads(path.read_text())
        settings = metrics.get('settings', {})
        for method, stats in metrics['methods'].items():
            nfe = stats.get('nfe')
            row = {
                'eval': path.parent.name,
                'method': method,
                'sampler': family(settings) if method == 'sr' else method,
                'nfe': (nfe or {}).get('mean') if isinstance(nfe, dict) else nfe,
                'images': metrics.get('n_images'),
            }
            for m in METRICS:
                if m in stats:
                    row[m] = stats[m]['mean']
                    row[f'{m}_std'] = stats[m]['std']
            rows.append(row)
    if not rows:
        raise SystemExit(f'no {workdir}/eval/*/metrics.json found')
    rows.sort(key=lambda r: (r['method'] != 'sr', r['sampler'], r['nfe'] or 0))
    return rows


def _cell(value: Any, std: Any = None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    if isinstance(value, float) and math.isinf(value):
        return '∞'
    text = f'{value:.{digits}f}'
    return f'{text} ± {std:.{digits}f}' if std is not None and math.isfinite(std) else text


def table(rows: list[dict[str, Any]]) -> str:
    headers = ['sampler', 'NFE', 'PSNR', 'SSIM', 'CS', 'LPIPS', 'consistency (MSE)']
    body = [
        [
            r['sampler'],
            _cell(r['nfe'], digits=0) if r['nfe'] else '-',
            _cell(r.get('psnr'), r.get('psnr_std')),
            _cell(r.get('ssim'), digits=3),
            _cell(r.get('cs'), r.get('cs_std'), digits=3),
            _cell(r.get('lpips'), digits=3),
            f'{r["consistency"]:.2e}' if 'consistency' in r else '-',
        ]
        for r in rows
    ]
    return common.markdown_table(headers, body)


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    families = sorted({r['sampler'] for r in rows if r['method'] == 'sr'})
    for ax, metric, label in zip(axes, ('psnr', 'cs'), ('PSNR (dB)', 'CS'), strict=True):
        for fam in families:
            pts = sorted((r['nfe'], r[metric]) for r in rows if r['sampler'] == fam and r['nfe'])
            if pts:
                ax.plot(*zip(*pts, strict=True), marker='o', label=fam)
        for r in rows:
            if r['method'] == 'bicubic' and metric in r:
                ax.axhline(r[metric], color='gray', linestyle='--', label='bicubic')
        ax.set_xscale('log')
        ax.set_xlabel('NFE')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--out', required=True, help='output path without extension')
    args = parser.parse_args()
    rows = collect(Path(args.workdir))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.json').write_text(json.dumps(rows, indent=1) + '\n')
    text = table(rows)
    out.with_suffix('.md').write_text(text + '\n')
    plot(out.with_suffix('.png'), rows)
    print(text)


if __name__ == '__main__':
    main()
