"""bench/compare_evals.py: rows from eval folders, bicubic once, clear errors."""

from __future__ import annotations

import json

import pytest

from bench import compare_evals


def _method(psnr: float, nfe: float | None = None) -> dict:
    out = {
        'psnr': {'mean': psnr},
        'ssim': {'mean': 0.5},
        'consistency': {'mean': 2e-5},
        'lpips': {'mean': 0.1},
        'cs': {'mean': 0.2},
        'verification': {'auc': 0.7},
        'identification': {'rank': {'1': 0.25}},
    }
    return {**out, 'nfe': nfe} if nfe is not None else out


def _eval(folder, psnr, nfe):
    folder.mkdir()
    methods = {'sr': _method(psnr, nfe), 'bicubic': _method(18.0)}
    (folder / 'metrics.json').write_text(json.dumps({'methods': methods, 'n_images': 16}))
    return folder


def test_rows_and_bicubic_once(tmp_path):
    a, b = _eval(tmp_path / 'a', 20.0, 70.0), _eval(tmp_path / 'b', 19.0, 20.0)
    rows = compare_evals.collect([f'ODE={a}', f'PC N=1000={b}'])
    assert [r['label'] for r in rows] == ['ODE', 'bicubic', 'PC N=1000']  # '=' in a label
    assert rows[0]['PSNR'] == 20.0 and rows[2]['NFE'] == 20.0 and rows[1]['NFE'] is None
    assert rows[0]['Rank-1'] == 0.25 and rows[0]['consistency x1e-5'] == pytest.approx(2.0)
    with pytest.raises(FileNotFoundError, match='metrics.json'):
        compare_evals.collect([f'x={tmp_path}'])
    with pytest.raises(ValueError, match='label=eval folder'):
        compare_evals.collect([str(a)])


def test_another_method_by_suffix(tmp_path):
    a = _eval(tmp_path / 'a', 20.0, 70.0)
    rows = compare_evals.collect([f'mu={a}#bicubic'])
    assert rows[0]['label'] == 'mu' and rows[0]['PSNR'] == 18.0
    with pytest.raises(ValueError, match="no method 'mean'"):
        compare_evals.collect([f'mu={a}#mean'])
