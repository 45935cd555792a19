"""bench/compare_evals.py: rows from eval folders, bicubic once, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import compare_evals
from configs import default
from evaluation import report


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


def _settings(split: str = 'test', **data) -> dict:
    """Settings as ``evaluation.run`` records them (``settings.json``): the whole data config."""
    config = default.data_config()
    config.update(data)
    return {'data': config.to_dict(), 'split': split, 'lpips': 'alex', 'face': 'sface'}


def _records(folder, psnrs, methods=('sr', 'bicubic'), settings=None):
    """An eval folder with its settings and per-image records only (an unfinished eval): 2
    images an identity."""
    rng = np.random.default_rng(len(psnrs))
    folder.mkdir()
    (folder / 'settings.json').write_text(json.dumps(settings or _settings()))
    lines = []
    for i, psnr in enumerate(psnrs):
        values = {'psnr': psnr, 'ssim': 0.5, 'consistency': 1e-5, 'lpips': 0.1, 'cs': 0.2}
        embs = {m: report.encode_embedding(rng.normal(size=8)) for m in methods}
        record = {
            'index': i,
            'id': i // 2,
            'emb_hr': report.encode_embedding(rng.normal(size=8)),
            'methods': {m: {**values, 'emb': embs[m]} for m in methods},
        }
        lines.append(json.dumps(record) + '\n')
    (folder / 'records.jsonl').write_text(''.join(lines))
    return folder


def test_common_rows_use_the_shared_images(tmp_path):
    a = _records(tmp_path / 'a', [10.0, 12.0, 14.0, 16.0, 18.0, 20.0])
    b = _records(tmp_path / 'b', [30.0, 31.0, 32.0, 33.0])  # Unfinished: the first 4 images.
    rows = compare_evals.collect_common([f'A={a}', f'B={b}'])
    assert [r['label'] for r in rows] == ['A', 'bicubic', 'B']
    assert [r['images'] for r in rows] == [4, 4, 4]
    assert rows[0]['PSNR'] == pytest.approx(np.mean([10.0, 12.0, 14.0, 16.0]))
    assert rows[2]['PSNR'] == pytest.approx(31.5)
    # The face protocols are recomputed over the 4 shared images, not read from a summary.
    chosen = [json.loads(line) for line in (a / 'records.jsonl').read_text().splitlines()][:4]
    ids = np.array([r['id'] for r in chosen])
    probes = np.stack([report.decode_embedding(r['methods']['sr']['emb']) for r in chosen])
    gallery = np.stack([report.decode_embedding(r['emb_hr']) for r in chosen])
    expected = report.verification(ids, probes, gallery, (1e-2,))['auc']
    assert rows[0]['AUC'] == pytest.approx(expected)


def test_common_rows_refuse_missing_records(tmp_path):
    a = _records(tmp_path / 'a', [10.0, 12.0])
    b = _records(tmp_path / 'b', [10.0], methods=('bicubic',))
    with pytest.raises(FileNotFoundError, match='records.jsonl'):
        compare_evals.collect_common([f'A={a}', f'X={tmp_path}'])
    with pytest.raises(ValueError, match='no image is recorded by every eval'):
        compare_evals.collect_common([f'A={a}', f'B={b}'])


# One value per field that changes which HR face an index denotes or the LR it gets.
OTHER_DATA = {
    'data.path': {'path': '/elsewhere/faces'},
    'split': {'split': 'train'},
    'data.image_size': {'image_size': 64},
    'data.downscale': {'downscale': 16},
    'data.down_kernel': {'down_kernel': 'bicubic'},
    'data.up_kernel': {'up_kernel': 'bilinear'},
    'data.source': {'source': 'tfrecord'},
    'data.noise_sigma': {'noise_sigma': 0.05},
    'data.pairs_per_fold': {'pairs_per_fold': 10},
}


@pytest.mark.parametrize('field', sorted(OTHER_DATA))
def test_common_rows_refuse_evals_of_other_data(field, tmp_path):
    """Issue 19 #12: evals of another path, split, size, factor or kernel hold other faces (or
    other LR) under the same index; intersecting them is refused, naming both folders and the
    field with both values."""
    a = _records(tmp_path / 'a', [10.0, 12.0])
    b = _records(tmp_path / 'b', [10.0, 12.0], settings=_settings(**OTHER_DATA[field]))
    with pytest.raises(ValueError, match='evaluate different data') as err:
        compare_evals.collect_common([f'A={a}', f'B={b}'])
    message = str(err.value)
    assert str(a) in message and str(b) in message, message
    assert f'{field}: ' in message and message.count(': ') >= 2, message
    assert [k for k in OTHER_DATA if f'{k}: ' in message] == [field], message  # Only that one.


def test_common_rows_accept_settings_that_keep_the_faces(tmp_path):
    """Caching, flips and the model's value range do not change the faces: still common (2
    images of one identity: no verification, a blank AUC, not a crash)."""
    a = _records(tmp_path / 'a', [10.0, 12.0])
    same = _settings(cache_mb=0, random_flip=False, centered=True, allow_split_overlap=True)
    b = _records(tmp_path / 'b', [20.0, 22.0], settings=same)
    assert [r['images'] for r in compare_evals.collect_common([f'A={a}', f'B={b}'])] == [2, 2, 2]


def test_common_rows_refuse_evals_without_settings_or_a_field(tmp_path):
    a = _records(tmp_path / 'a', [10.0, 12.0])
    b = _records(tmp_path / 'b', [10.0, 12.0])
    (b / 'settings.json').unlink()
    with pytest.raises(FileNotFoundError, match=f'{b}: no recorded settings'):
        compare_evals.collect_common([f'A={a}', f'B={b}'])
    older = _settings()
    del older['data']['blur_sigma']  # An eval recorded before the field existed.
    (b / 'settings.json').write_text(json.dumps(older))
    with pytest.raises(ValueError, match=r"data.blur_sigma: 0.0 vs 'missing'"):
        compare_evals.collect_common([f'A={a}', f'B={b}'])
    (b / 'settings.json').unlink()  # Settings inside metrics.json (a finished eval) do too.
    (b / 'metrics.json').write_text(json.dumps({'settings': _settings(image_size=64)}))
    with pytest.raises(ValueError, match='data.image_size: 128 vs 64'):
        compare_evals.collect_common([f'A={a}', f'B={b}'])


def test_tar_rank5_and_the_frontier_plot(tmp_path):
    """Issue 20's columns (TAR@1e-2, Rank-5 per recogniser) and the frontier picture."""
    method = _method(20.0, 20)
    method['verification']['tar_at_far'] = {'1e-2': 0.4}
    method['identification']['rank']['5'] = 0.6
    method['cs_dlib'] = {'mean': 0.9}
    method['verification_dlib'] = {'auc': 0.8, 'tar_at_far': {'1e-2': 0.3}}
    method['identification_dlib'] = {'rank': {'1': 0.35, '5': 0.7}}
    row = compare_evals.row(method, 16)
    assert (row['TAR@1e-2'], row['Rank-5'], row['TAR@1e-2 dlib'], row['Rank-5 dlib']) == (
        0.4, 0.6, 0.3, 0.7,
    )  # fmt: skip
    rows = [{'label': 'sr', **row}, {'label': 'bicubic', **compare_evals.row(_method(18.0), 16)}]
    assert compare_evals.recogniser_tags(rows) == ['', ' dlib']
    compare_evals.plot_frontier(rows, tmp_path / 'frontier.png')
    assert (tmp_path / 'frontier.png').stat().st_size > 1000
