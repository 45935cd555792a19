"""Summaries, tables and plots of ``--mode eval``, computed from per-image records.

A record is one image of the eval split (see :mod:`evaluation.run`)::

    {'index': 3, 'id': 7265, 'detected': True, 'emb_hr': '<base64 float32>',
     'methods': {'bicubic': {'psnr': 25.1, 'ssim': 0.71, 'consistency': 2e-5,
                             'lpips': 0.31, 'cs': 0.62, 'emb': '<base64 float32>'}, ...}}

Face fields (``detected``, ``emb_hr``, ``cs``, ``emb``) and ``lpips`` are absent when that
metric is off. Everything here is a pure function of the records, so a resumed eval and an
uninterrupted one report the same numbers.

Protocols (identities from the records; skipped when any identity is unknown, ``-1``):

* 1:1 verification: every ordered pair ``(i, j)``, ``i != j``, of the eval images; the probe is
  the output (SR) of ``i``, the gallery image the HR of ``j``; genuine when the identities are
  equal. ROC, AUC and TAR at the FARs of ``eval.far_targets``. Pairs ``(i, i)`` (an SR image
  against its own HR) are left out: that is the CS column.
* 1:N identification (closed set): the gallery holds the HR of the first image (lowest
  dataset index) of every identity, the probes are the outputs of all other images. Rank-k
  rates (``eval.ranks``) and the full CMC curve. Ties rank pessimistically
  (:mod:`evaluation.protocols`).
* LFW-style pair verification, for data sources with a pair list
  (:data:`evaluation.lfw.PAIR_PROTOCOLS`, e.g. ``lfw_pairs``): per pair ``(a, b)``, the cosine
  of the output of ``a`` and the HR of ``b`` (``sr_hr``: SR probe against HR gallery, as in
  SRDG) and of the outputs of both (``sr_sr``: both faces degraded); 10-fold accuracy (the
  threshold of each fold chosen on the other nine), AUC, TAR@FAR and ROC, under
  ``methods[m]['lfw_pairs']``. For ``hr`` both equal LFW View-2 on the aligned HR crops.

Plots use matplotlib's object-oriented API (``Figure`` + Agg canvas): no pyplot global state.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import protocols as pr
from evaluation.image_metrics import summarize

#: Per-image scalar metrics, in table order.
# attr_prob: the guidance classifiers' probability of each image's requested attributes.
# What a sampled output cost, per image: network evaluations and seconds of sampling.
COST = ('nfe', 'seconds')
# judge_prob: the same probability by an independent judge (evaluation/judge.py).
SCALARS = ('psnr', 'ssim', 'consistency', 'cs', 'lpips', 'attr_prob', 'judge_prob')
# Of the posterior mean of K samples: their pixel std and identity stability (uncertainty.py).
STABILITY = ('std_mean', 'pairwise_cos', 'to_mean_cos')
#: Consistency (an MSE on [0, 1] pixels) is shown multiplied by this in tables and plots.
CONSISTENCY_SCALE = 1e5
#: Points of the stored (log-FAR sampled) ROC curve.
ROC_POINTS = 200
#: Key of the pair-verification block of a method's summary.
PAIRS_KEY = 'lfw_pairs'
#: Pair scoring modes: key -> (label, the gallery side of a pair is the HR (else the output)).
PAIR_MODES = {'sr_hr': ('SR-HR', True), 'sr_sr': ('SR-SR', False)}


# ----------------------------------------------------------------------------- embeddings


def encode_embedding(vector: np.ndarray) -> str:
    """A float32 vector as base64 text (exact, about 5 characters per value)."""
    return base64.b64encode(np.asarray(vector, '<f4').tobytes()).decode('ascii')


def decode_embedding(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), '<f4')


def _embeddings(records: Sequence[dict], method: str | None) -> np.ndarray:
    """``[N, D]`` embeddings of ``method``'s outputs, or of the HR images (``None``)."""
    texts = [r['emb_hr'] if method is None else r['methods'][method]['emb'] for r in records]
    return np.stack([decode_embedding(t) for t in texts])


# ----------------------------------------------------------------------------- protocols


def _sampled_roc(far: np.ndarray, tar: np.ndarray, n_impostors: int) -> dict[str, list]:
    """The ROC at ``ROC_POINTS`` log-spaced FARs from ``1 / n_impostors`` to 1 (and FAR 0)."""
    grid = np.r_[0.0, np.logspace(np.log10(1.0 / n_impostors), 0.0, ROC_POINTS)]
    at = tar[np.searchsorted(far, grid, side='right') - 1]  # Best TAR with FAR <= grid.
    return {'far': grid.tolist(), 'tar': at.tolist()}


def verification(
    ids: np.ndarray, probes: np.ndarray, gallery: np.ndarray, far_targets: Sequence[float]
) -> dict[str, Any] | None:
    """ROC, AUC and TAR@FAR of probes ``i`` against gallery images ``j != i`` (module doc).

    ``None`` when identities are unknown or there are no genuine or no impostor pairs.
    """
    ids = np.asarray(ids)
    if (ids < 0).any():
        return None
    # The off-diagonal entries in row-major order are pr.verification_pairs(ids)'s pairs, in
    # its order, without its index arrays (7,701 LFW images: 59 M pairs, seconds, not GBs).
    others = ~np.eye(len(ids), dtype=bool)
    labels = (ids[:, None] == ids[None, :])[others]
    if labels.all() or not labels.any():
        return None
    far, tar, _ = pr.roc_curve(pr.similarity_matrix(probes, gallery)[others], labels)
    n_impostors = int(np.sum(~labels))
    return {
        'auc': pr.roc_auc(far, tar),
        'tar_at_far': {far_key(f): pr.roc_tar_at_far(far, tar, f) for f in far_targets},
        'n_genuine': int(np.sum(labels)),
        'n_impostor': n_impostors,
        'roc': _sampled_roc(far, tar, n_impostors),
    }


def identification(
    ids: np.ndarray, probes: np.ndarray, gallery: np.ndarray, ranks: Sequence[int]
) -> dict[str, Any] | None:
    """Rank-k and CMC: gallery = HR of each identity's first image, probes = the rest."""
    ids = np.asarray(ids)
    if (ids < 0).any():
        return None
    in_gallery = np.zeros(len(ids), bool)
    in_gallery[np.unique(ids, return_index=True)[1]] = True
    if in_gallery.all():
        return None
    sim = pr.similarity_matrix(probes[~in_gallery], gallery[in_gallery])
    probe_ids, gallery_ids = ids[~in_gallery], ids[in_gallery]
    return {
        'rank': {str(k): pr.rank_k(sim, probe_ids, gallery_ids, k) for k in ranks},
        'cmc': pr.cmc(sim, probe_ids, gallery_ids).tolist(),
        'n_probes': int(np.sum(~in_gallery)),
        'n_gallery': int(np.sum(in_gallery)),
    }


def pair_verification(
    scores: np.ndarray, pairs: dict[str, np.ndarray], far_targets: Sequence[float]
) -> dict[str, Any]:
    """10-fold accuracy (mean ± std over folds), AUC, TAR@FAR and ROC of pair ``scores``."""
    same = np.asarray(pairs['same'])
    acc = pr.lfw_10fold_accuracy(scores, same, pairs['fold'])
    far, tar, _ = pr.roc_curve(scores, same)
    return {
        'accuracy': {'mean': acc['mean'], 'std': acc['std']},
        'fold_accuracies': acc['accuracies'],
        'fold_thresholds': acc['thresholds'],
        'auc': pr.roc_auc(far, tar),
        'tar_at_far': {far_key(f): pr.roc_tar_at_far(far, tar, f) for f in far_targets},
        'roc': _sampled_roc(far, tar, int(np.sum(same == 0))),
        'scores': np.asarray(scores, np.float64).tolist(),
    }


def pair_summary(
    records: Sequence[dict], method: str, pairs: dict[str, np.ndarray], far_targets: Sequence[float]
) -> dict[str, Any]:
    """Pair verification of ``method`` in every :data:`PAIR_MODES` (module doc).

    ``pairs`` index ``records`` by position, which must be the dataset index.
    """
    if any(r['index'] != k for k, r in enumerate(records)):
        raise ValueError('pair verification needs the records of dataset images 0..n-1, in order')
    a, b = np.asarray(pairs['a']), np.asarray(pairs['b'])
    outputs, hr = _embeddings(records, method), _embeddings(records, None)
    out: dict[str, Any] = {
        'n_pairs': int(len(a)),
        'n_same': int(np.sum(pairs['same'])),
        'n_folds': int(len(np.unique(pairs['fold']))),
    }
    for mode, (_, gallery_is_hr) in PAIR_MODES.items():
        gallery = hr if gallery_is_hr else outputs
        scores = pr.cosine_similarity(outputs[a], gallery[b])
        out[mode] = pair_verification(scores, pairs, far_targets)
    return out


def far_key(far: float) -> str:
    """``1e-2`` for 0.01: the FAR as written in keys and column headers."""
    return f'{far:.0e}'.replace('e-0', 'e-').replace('e+0', 'e')


# ----------------------------------------------------------------------------- summaries


def method_summary(
    records: Sequence[dict], method: str, ecfg: Any, pairs: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Mean/std/n of every per-image metric of ``method``, and the face protocols.

    ``pairs`` (a pair protocol's list, dataset indices) adds pair verification.
    """
    values = [r['methods'][method] for r in records]
    with np.errstate(invalid='ignore'):  # std of PSNR inf (hr) is nan, not a warning.
        out: dict[str, Any] = {
            k: summarize([v[k] for v in values]) for k in SCALARS + STABILITY if k in values[0]
        }
    for key in COST:
        cost = [v[key] for v in values if key in v]
        if cost:
            out[key] = float(np.mean(cost))
    if 'emb' in values[0]:
        ids = np.array([r['id'] for r in records])
        probes, gallery = _embeddings(records, method), _embeddings(records, None)
        out['verification'] = verification(ids, probes, gallery, ecfg.far_targets)
        out['identification'] = identification(ids, probes, gallery, ecfg.ranks)
        if pairs is not None:
            out[PAIRS_KEY] = pair_summary(records, method, pairs, ecfg.far_targets)
    return out


def summarize_records(
    records: Sequence[dict],
    methods: Sequence[str],
    ecfg: Any,
    pairs: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The summary of every method over ``records`` (sorted by index); ``pairs``: see above."""
    summary = {m: method_summary(records, m, ecfg, pairs) for m in methods}
    detected = [r['detected'] for r in records if 'detected' in r]
    return {
        'n_images': len(records),
        'n_identities': len({r['id'] for r in records}),
        'n_face_fallback': int(len(detected) - np.sum(detected)) if detected else None,
        'methods': summary,
    }


def per_image_rows(records: Sequence[dict], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One flat row per (method, image): the per-image part of metrics.json and metrics.csv."""
    rows = []
    for m in methods:
        for r in records:
            values = {k: v for k, v in r['methods'][m].items() if k != 'emb'}
            rows.append(
                {
                    'method': m,
                    'index': r['index'],
                    'id': r['id'],
                    'detected': r.get('detected'),
                    **values,
                }
            )
    return rows


# ----------------------------------------------------------------------------- files


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file beside ``path`` and renames it into place."""
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """JSON with Python's extensions for non-finite floats (PSNR of HR is ``Infinity``)."""
    atomic_write_text(path, json.dumps(obj, indent=1) + '\n')


def write_csv(path: Path, rows: Sequence[dict], summary: dict[str, Any]) -> None:
    """Per-image rows (``row=image``) then per-method ``mean`` and ``std`` rows."""
    fields = ['method', 'row', 'index', 'id', 'detected', *SCALARS, *STABILITY, *COST]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fields, extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow({'row': 'image', **row})
    for method, stats in summary['methods'].items():
        for stat in ('mean', 'std'):
            writer.writerow(
                {
                    'method': method,
                    'row': stat,
                    **{k: stats[k][stat] for k in SCALARS + STABILITY if k in stats},
                }
            )
    atomic_write_text(path, buffer.getvalue())


def _mean_std(stats: dict | None, digits: int, scale: float = 1.0) -> str:
    if not stats:
        return '–'
    mean, std = stats['mean'] * scale, stats['std'] * scale
    if math.isinf(mean):
        return '∞'
    return f'{mean:.{digits}f} ± {std:.{digits}f}'


def _number(value: float | None) -> str:
    return '–' if value is None else f'{value:.4f}'


def table_row(
    method: str,
    stats: dict[str, Any],
    ecfg: Any,
    has_pairs: bool = False,
    has_attributes: bool = False,
    has_stability: bool = False,
) -> list[str]:
    """One Markdown table row: image metrics (mean ± std), then the face protocols.

    ``has_pairs`` adds the LFW pair accuracies (mean ± std over folds) per pair mode.
    ``has_attributes`` adds the guidance classifiers' probability of the requested attributes,
    and an independent judge's (blank where none judged them).
    """
    ver, ide = stats.get('verification') or {}, stats.get('identification') or {}
    cells = [
        method,
        _mean_std(stats.get('psnr'), 2),
        _mean_std(stats.get('ssim'), 4),
        _mean_std(stats.get('consistency'), 2, CONSISTENCY_SCALE),
        _mean_std(stats.get('cs'), 4),
        _mean_std(stats.get('lpips'), 4),
        _number(ver.get('auc')),
    ]
    cells += [_number(ver.get('tar_at_far', {}).get(far_key(f))) for f in ecfg.far_targets]
    cells += [_number(ide.get('rank', {}).get(str(k))) for k in ecfg.ranks]
    if has_pairs:
        pairs = stats.get(PAIRS_KEY) or {}
        cells += [_mean_std((pairs.get(mode) or {}).get('accuracy'), 4) for mode in PAIR_MODES]
    if has_attributes:
        cells.append(_mean_std(stats.get('attr_prob'), 4))
        cells.append(_mean_std(stats.get('judge_prob'), 4))
    if has_stability:
        cells += [_mean_std(stats.get(k), 4) for k in STABILITY]
    return cells


def markdown_table(summary: dict[str, Any], ecfg: Any, caption: str) -> str:
    """The SDE-SR Table I layout plus LPIPS, AUC, TAR@FAR, rank-k (and LFW pair accuracy)."""
    header = ['method', 'PSNR', 'SSIM', 'Consistency', 'CS', 'LPIPS', 'AUC']
    header += [f'TAR@{far_key(f)}' for f in ecfg.far_targets]
    header += [f'Rank-{k}' for k in ecfg.ranks]
    has_pairs = any(s.get(PAIRS_KEY) for s in summary['methods'].values())
    if has_pairs:
        header += [f'LFW acc ({label})' for label, _ in PAIR_MODES.values()]
    # Guidance: the classifiers' probability of the requested attributes on each output.
    has_attributes = any('attr_prob' in s for s in summary['methods'].values())
    if has_attributes:
        header += ['p(attributes)', 'judge p(attributes)']
    has_stability = any('std_mean' in s for s in summary['methods'].values())
    if has_stability:
        header += ['pixel std', 'ID cos (samples)', 'ID cos (to mean)']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for method, stats in summary['methods'].items():
        cells = table_row(method, stats, ecfg, has_pairs, has_attributes, has_stability)
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n\n' + caption + '\n'


def table_caption(name: str, summary: dict[str, Any], config: Any) -> str:
    """What the numbers are, with units (consistency scale) and protocol sizes."""
    data, ecfg = config.data, config.eval
    lr = data.image_size // data.downscale
    first = next(iter(summary['methods'].values()), {})
    ver, ide = first.get('verification') or {}, first.get('identification') or {}
    pairs = first.get(PAIRS_KEY) or {}
    face = (
        f'CS: cosine similarity of {ecfg.face} embeddings of output and HR, both cut with '
        'the transform found on the HR (mean ± std). Verification: AUC and TAR at FAR '
        f'over {ver.get("n_genuine", 0)} genuine and {ver.get("n_impostor", 0)} impostor '
        'pairs (output probe vs HR of another image). Identification: rank-k rate of '
        f'{ide.get("n_probes", 0)} output probes against a gallery of '
        f'{ide.get("n_gallery", 0)} HR images (first image of each identity). '
        if ecfg.face
        else 'Face metrics off. '
    )
    return (
        f'**{name}**: {summary["n_images"]} images ({summary["n_identities"]} identities) '
        f'of split `{ecfg.split}` of `{Path(data.path).name}`, {data.downscale}x '
        f'({lr}x{lr} LR -> {data.image_size}x{data.image_size}). PSNR (dB) and SSIM on RGB '
        'in [0, 1]. Consistency: MSE between the output downscaled with the LR kernel '
        f'({data.down_kernel}) and the LR input, on [0, 1] pixels, x1e-5 (mean ± std). '
        + face
        + (
            f'LFW acc: 10-fold accuracy (mean ± std over {pairs["n_folds"]} folds, threshold '
            f'chosen on the other folds) of {pairs["n_pairs"]} pairs ({pairs["n_same"]} same); '
            'SR-HR: output of the first image against the HR of the second, SR-SR: outputs '
            'of both. '
            if pairs
            else ''
        )
        + (f'LPIPS ({ecfg.lpips}). ' if ecfg.lpips else '')
        + 'bicubic: the upsampled LR; hr: the HR image itself (ceiling of the face '
        'metrics). Rates are fractions.'
    )


# ----------------------------------------------------------------------------- plots


def _figure(width: float = 5.0, height: float = 4.0, columns: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # Imported on use: only eval plots need it.

    fig = Figure(figsize=(width * columns, height), dpi=100, layout='constrained')
    return fig, fig.subplots(1, columns)


def save_figure(fig: Any, path: Path) -> None:
    """Writes a matplotlib figure as PNG through a temporary file and rename."""
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    fig.savefig(tmp, format='png')
    os.replace(tmp, path)


def _plot_rocs(
    path: Path,
    curves: Sequence[tuple[str, dict[str, Any]]],
    far_targets: Sequence[float],
    title: str,
) -> None:
    """TAR against FAR (log scale), one curve per ``(label, verification dict)``."""
    fig, ax = _figure()
    for label, ver in curves:
        far, tar = np.asarray(ver['roc']['far']), np.asarray(ver['roc']['tar'])
        ax.step(far[1:], tar[1:], where='post', label=f'{label} (AUC {ver["auc"]:.3f})')
    for f in far_targets:
        ax.axvline(f, color='grey', lw=0.8, ls=':')
    ax.set(
        xscale='log',
        xlabel='false accept rate',
        ylabel='true accept rate',
        title=title,
        ylim=(0, 1.01),
    )
    ax.legend(loc='lower right')
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_roc(path: Path, summary: dict[str, Any], far_targets: Sequence[float]) -> None:
    """TAR against FAR (log scale) per method, FAR targets marked."""
    curves = [
        (method, stats['verification'])
        for method, stats in summary['methods'].items()
        if stats.get('verification')
    ]
    _plot_rocs(path, curves, far_targets, '1:1 verification (output vs HR)')


def plot_pair_roc(path: Path, summary: dict[str, Any], far_targets: Sequence[float]) -> None:
    """ROC of the LFW pairs per method and pair mode (SR-HR and SR-SR)."""
    curves = [
        (f'{method} {label}', stats[PAIRS_KEY][mode])
        for method, stats in summary['methods'].items()
        if stats.get(PAIRS_KEY)
        for mode, (label, _) in PAIR_MODES.items()
    ]
    _plot_rocs(path, curves, far_targets, 'LFW pairs verification')


def plot_cmc(path: Path, summary: dict[str, Any]) -> None:
    """Identification rate against rank per method."""
    fig, ax = _figure()
    for method, stats in summary['methods'].items():
        ide = stats.get('identification')
        if ide:
            curve = np.asarray(ide['cmc'])
            ax.plot(
                np.arange(1, len(curve) + 1),
                curve,
                marker='.',
                label=f'{method} (rank-1 {curve[0]:.3f})',
            )
    ax.set(
        xlabel='rank',
        ylabel='identification rate',
        ylim=(0, 1.01),
        title='1:N identification (output probes, HR gallery)',
    )
    ax.legend(loc='lower right')
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def write_text(path: Path, text: str) -> None:
    """Writes ``text`` through a temporary file and a rename."""
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    tmp.replace(path)


def sweep_table(sweep: dict[str, Any], once: dict[str, Any] | None) -> str:
    """Markdown: one row per swept value of the swept method, then the methods evaluated once
    (``once``: their metrics.json), with PSNR, SSIM, CS, AUC, Rank-1, the guiding classifiers'
    and the independent judge's probability of the requested attributes, and NFE."""
    header = ['method', 'PSNR', 'SSIM', 'CS', 'AUC', 'Rank-1', 'p(attributes)', 'judge p', 'NFE']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    method, key = sweep['method'], sweep['key']
    for i, value in enumerate(sweep['values']):
        cells = [f'{method}, {key}={value:g}' if isinstance(value, float | int) else str(value)]
        cells += [_number(sweep[m]['mean'][i]) for m in ('psnr', 'ssim', 'cs')]
        cells += [_number(sweep[m][i]) for m in ('auc', 'rank1', 'attr_prob', 'judge_prob', 'nfe')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    for name, stats in ((once or {}).get('methods') or {}).items():
        ver, ide = stats.get('verification') or {}, stats.get('identification') or {}
        cells = [name] + [_number((stats.get(m) or {}).get('mean')) for m in ('psnr', 'ssim', 'cs')]
        cells += [_number(ver.get('auc')), _number((ide.get('rank') or {}).get('1'))]
        cells += [_number((stats.get(m) or {}).get('mean')) for m in ('attr_prob', 'judge_prob')]
        cells.append(_number(stats.get('nfe')))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


# A sweep whose values span more than this factor is plotted on a symlog axis.
SYMLOG_SPAN = 100.0


def plot_sweep(path: Path, sweep: dict[str, Any]) -> None:
    """PSNR and CS (mean ± std) against the swept value, and per-image CS against PSNR."""
    fig, (ax_p, ax_c, ax_s) = _figure(4.5, 3.8, columns=3)
    values = np.asarray(sweep['values'], np.float64)
    for ax, key, label in ((ax_p, 'psnr', 'PSNR (dB)'), (ax_c, 'cs', 'CS')):
        mean, std = np.asarray(sweep[key]['mean']), np.asarray(sweep[key]['std'])
        ax.errorbar(values, mean, yerr=std, marker='o', capsize=3, label=sweep.get('method', 'sr'))
        for method, level in sweep.get('baselines', {}).get(key, {}).items():
            if np.isfinite(level):
                ax.axhline(level, ls='--', lw=1, color='grey')
                ax.annotate(method, (values.min(), level), fontsize=8, va='bottom')
        ax.set(xlabel=sweep['key'], ylabel=label)
        positive = values[values > 0]
        if positive.size and values.max() > SYMLOG_SPAN * positive.min():  # e.g. h = 0, 30, 3000
            ax.set_xscale('symlog', linthresh=positive.min())
        ax.grid(alpha=0.3)
    for value, points in zip(values, sweep['per_image'], strict=True):
        ax_s.scatter(points['psnr'], points['cs'], s=8, label=f'{value:g}')
    ax_s.set(xlabel='PSNR (dB)', ylabel='CS', title='per image')
    ax_s.legend(title=sweep['key'], fontsize=7)
    ax_s.grid(alpha=0.3)
    fig.suptitle(
        f'Pearson r(PSNR, CS): {sweep["correlation"]["means"]:.3f} over the sweep '
        f'means, {sweep["correlation"]["per_image"]:.3f} over images'
    )
    save_figure(fig, path)
