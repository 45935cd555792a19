"""bench/quality_vs_nfe.py: rows, families and the table from --mode eval outputs."""

from __future__ import annotations

import json
from pathlib import Path

from bench import quality_vs_nfe as q


def _write(root: Path, name: str, sampling: dict | None, methods: dict) -> None:
    folder = root / 'eval' / name
    folder.mkdir(parents=True)
    settings = {'sampling': sampling} if sampling else {}
    body = {'name': name, 'settings': settings, 'n_images': 4, 'methods': methods}
    (folder / 'metrics.json').write_text(json.dumps(body))


def _stats(psnr: float, cs: float, nfe: float | None = None) -> dict:
    out = {'psnr': {'mean': psnr, 'std': 1.0}, 'cs': {'mean': cs, 'std': 0.1}}
    return out | ({'nfe': {'mean': nfe, 'std': 0.0}} if nfe else {})


def test_collects_every_eval_into_sampler_families(tmp_path: Path) -> None:
    dpm = {'method': 'dpm2m', 'eta': 0.0}
    _write(tmp_path, 'a-dpm-n20', dpm, {'sr': _stats(17.0, 0.12, 21)})
    _write(tmp_path, 'a-dpm-n10', dpm, {'sr': _stats(16.5, 0.10, 11)})
    _write(tmp_path, 'a-sde-n10', dict(dpm, eta=1.0), {'sr': _stats(17.5, 0.16, 11)})
    pc = {'method': 'pc', 'predictor': 'euler_maruyama', 'corrector': 'none'}
    _write(tmp_path, 'a-pc', pc, {'sr': _stats(17.4, 0.15, 2000)})
    _write(tmp_path, 'a-base', None, {'bicubic': _stats(18.9, 0.05)})
    (tmp_path / 'eval' / 'a-dpm-sweep-sampling.num_steps').mkdir()  # no metrics.json: skipped
    rows = q.collect(tmp_path)
    assert [(r['sampler'], r['nfe']) for r in rows] == [
        ('DPM-Solver++(2M)', 11),
        ('DPM-Solver++(2M)', 21),
        ('PC euler_maruyama + none', 2000),
        ('SDE-DPM-Solver++(2M)', 11),
        ('bicubic', None),
    ]
    assert rows[3]['psnr'] == 17.5 and rows[3]['cs_std'] == 0.1 and rows[0]['images'] == 4
    text = q.table(rows)
    assert '| SDE-DPM-Solver++(2M) | 11 | 17.50 ± 1.00 |' in text
    q.plot(tmp_path / 'curve.png', rows)
    assert (tmp_path / 'curve.png').stat().st_size > 1000
