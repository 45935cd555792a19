"""Summaries, tables and plots of ``--mode eval``, computed from per-image records.

A record is one image of the eval split (see :mod:`evaluation.run`)::

    {'index': 3, 'id': 7265, 'detected': True, 'emb_hr': '<base64 float32>',
     'methods': {'bicubic': {'psnr': 25.1, 'ssim': 0.71, 'consistency': 2e-5,
                             'lpips': 0.31, 'cs': 0.62, 'emb': '<base64 float32>'}, ...}}

Face fields (``detected``, ``emb_hr``, ``cs``, ``emb``) and ``lpips`` are absent when that
metric is off. Everything here is a pure function of the records, so a resumed eval and an
uninterrupted one report the same numbers.

Several recognisers (``eval.face``, :mod:`evaluation.face`): every identity field and figure is
kept per recogniser, SFace's under the plain key (``cs``, ``emb``, ``emb_hr``, ``detected``,
``verification``, ``lfw_pairs``, ``pairwise_cos``...) and any other's under the key suffixed
with its name (``cs_dlib``, ``emb_hr_dlib``, ``verification_dlib``...; :func:`face_key`).
Every eval written before there were several recognisers was SFace's, so old folders read
(and compare, ``bench/compare_evals.py``) unchanged, and a key means the same recogniser
whatever the order of ``eval.face``. The recognisers of an eval are read off its records
(:func:`recognisers_in`) and listed in the summary (``recognisers``); the table, CSV and plots
have a column block, column or panel per recogniser (tagged ``(name)`` when there are several).

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
from collections.abc import Callable, Sequence
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
#: The recogniser whose identity fields carry no suffix (module doc).
PRIMARY_RECOGNISER = 'sface'
#: Per-image scalars measured by a recogniser: one per recogniser (:func:`face_key`).
IDENTITY_SCALARS = ('cs', 'pairwise_cos', 'to_mean_cos')


def face_key(key: str, recogniser: str) -> str:
    """The field ``key`` of ``recogniser``: ``cs`` for SFace, ``cs_dlib`` for dlib (module doc)."""
    return key if recogniser == PRIMARY_RECOGNISER else f'{key}_{recogniser}'


def recognisers_in(mapping: dict[str, Any], key: str = 'emb_hr') -> list[str]:
    """The recognisers that have field ``key`` in ``mapping``, in its order: a record's
    (``emb_hr``), a method's values (``emb``, ``cs``) or a method's summary (``cs``)."""
    prefix = key + '_'
    return [
        PRIMARY_RECOGNISER if k == key else k[len(prefix) :]
        for k in mapping
        if k == key or k.startswith(prefix)
    ]


def scalar_keys(recognisers: Sequence[str]) -> tuple[str, ...]:
    """The per-image scalar keys in table order, identity ones once per recogniser."""
    keys: list[str] = []
    for k in SCALARS + STABILITY:
        keys += [face_key(k, r) for r in recognisers] if k in IDENTITY_SCALARS else [k]
    return tuple(keys)


# ----------------------------------------------------------------------------- embeddings


def encode_embedding(vector: np.ndarray) -> str:
    """A float32 vector as base64 text (exact, about 5 characters per value)."""
    return base64.b64encode(np.asarray(vector, '<f4').tobytes()).decode('ascii')


def decode_embedding(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), '<f4')


def _embeddings(
    records: Sequence[dict], method: str | None, recogniser: str = PRIMARY_RECOGNISER
) -> np.ndarray:
    """``[N, D]`` ``recogniser`` embeddings of ``method``'s outputs, or of the HRs (``None``)."""
    hr, out = face_key('emb_hr', recogniser), face_key('emb', recogniser)
    texts = [r[hr] if method is None else r['methods'][method][out] for r in records]
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
    records: Sequence[dict],
    method: str,
    pairs: dict[str, np.ndarray],
    far_targets: Sequence[float],
    recogniser: str = PRIMARY_RECOGNISER,
) -> dict[str, Any]:
    """Pair verification of ``method`` in every :data:`PAIR_MODES` (module doc) by
    ``recogniser``. ``pairs`` index ``records`` by position, which must be the dataset index.
    """
    if any(r['index'] != k for k, r in enumerate(records)):
        raise ValueError('pair verification needs the records of dataset images 0..n-1, in order')
    a, b = np.asarray(pairs['a']), np.asarray(pairs['b'])
    outputs = _embeddings(records, method, recogniser)
    hr = _embeddings(records, None, recogniser)
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
    """Mean/std/n of every per-image metric of ``method``, and the face protocols of each
    recogniser of the records (under :func:`face_key`).

    ``pairs`` (a pair protocol's list, dataset indices) adds pair verification.
    """
    values = [r['methods'][method] for r in records]
    names = recognisers_in(values[0], 'emb')
    with np.errstate(invalid='ignore'):  # std of PSNR inf (hr) is nan, not a warning.
        out: dict[str, Any] = {
            k: summarize([v[k] for v in values]) for k in scalar_keys(names) if k in values[0]
        }
    for key in COST:
        cost = [v[key] for v in values if key in v]
        if cost:
            out[key] = float(np.mean(cost))
    ids = np.array([r['id'] for r in records])
    for name in names:
        probes, gallery = _embeddings(records, method, name), _embeddings(records, None, name)
        out[face_key('verification', name)] = verification(ids, probes, gallery, ecfg.far_targets)
        out[face_key('identification', name)] = identification(ids, probes, gallery, ecfg.ranks)
        if pairs is not None:
            block = pair_summary(records, method, pairs, ecfg.far_targets, name)
            out[face_key(PAIRS_KEY, name)] = block
    return out


def summarize_records(
    records: Sequence[dict],
    methods: Sequence[str],
    ecfg: Any,
    pairs: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The summary of every method over ``records`` (sorted by index); ``pairs``: see above."""
    summary = {m: method_summary(records, m, ecfg, pairs) for m in methods}
    names = recognisers_in(records[0]) if records else []
    fallbacks = {}
    for name in names:
        detected = [r[face_key('detected', name)] for r in records]
        fallbacks[face_key('n_face_fallback', name)] = int(len(detected) - np.sum(detected))
    return {
        'n_images': len(records),
        'n_identities': len({r['id'] for r in records}),
        'recognisers': names,
        'n_face_fallback': None,  # (SFace's; None without it, as before there were several)
        **fallbacks,
        'methods': summary,
    }


def per_image_rows(records: Sequence[dict], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One flat row per (method, image): the per-image part of metrics.json and metrics.csv."""
    rows = []
    for m in methods:
        for r in records:
            values = {
                k: v for k, v in r['methods'][m].items() if k != 'emb' and not k.startswith('emb_')
            }
            detected = {k: v for k, v in r.items() if k.startswith('detected_')}
            rows.append(
                {
                    'method': m,
                    'index': r['index'],
                    'id': r['id'],
                    'detected': r.get('detected'),
                    **detected,
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
    """Per-image rows (``row=image``) then per-method ``mean`` and ``std`` rows; identity
    columns per recogniser (:func:`face_key`)."""
    names = summary.get('recognisers') or []
    detected = [face_key('detected', n) for n in names if n != PRIMARY_RECOGNISER]
    keys = scalar_keys(names or [PRIMARY_RECOGNISER])
    fields = ['method', 'row', 'index', 'id', 'detected', *detected, *keys, *COST]
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
                    **{k: stats[k][stat] for k in keys if k in stats},
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


Column = tuple[str, Callable[[dict], str]]  # (header, cell of a method's summary)


def _stat(key: str, digits: int, scale: float = 1.0) -> Callable[[dict], str]:
    """The cell of a per-image metric's mean ± std."""
    return lambda stats: _mean_std(stats.get(key), digits, scale)


def _protocol(key: str, *path: str) -> Callable[[dict], str]:
    """The cell of a protocol figure, ``stats[key][path[0]][path[1]]...`` (blank if absent)."""

    def cell(stats: dict) -> str:
        node = stats.get(key)
        for part in path:
            node = (node or {}).get(part)
        return _number(node)

    return cell


def _identity_columns(name: str, tag: str, ecfg: Any) -> list[Column]:
    """Recogniser ``name``'s AUC, TAR@FAR and rank-k columns, headers ending in ``tag``."""
    ver, ide = face_key('verification', name), face_key('identification', name)
    columns = [(f'AUC{tag}', _protocol(ver, 'auc'))]
    columns += [(f'TAR@{far_key(f)}{tag}', _protocol(ver, 'tar_at_far', far_key(f)))
                for f in ecfg.far_targets]  # fmt: skip
    columns += [(f'Rank-{k}{tag}', _protocol(ide, 'rank', str(k))) for k in ecfg.ranks]
    return columns


def table_columns(summary: dict[str, Any], ecfg: Any) -> list[Column]:
    """The columns of :func:`markdown_table`.

    Image metrics (mean ± std), the first recogniser's CS where SDE-SR Table I has it, LPIPS,
    its AUC, TAR@FAR and rank-k, then each other recogniser's CS, AUC, TAR@FAR and rank-k
    (headers tagged ``(name)`` when there are several); then, only when some method has them,
    the LFW pair accuracies (mean ± std over folds) per recogniser and pair mode, the guidance
    classifiers' and an independent judge's probability of the requested attributes, and the
    posterior mean's pixel std and identity stability per recogniser.
    """
    stats = list(summary['methods'].values())
    names = summary.get('recognisers') or [PRIMARY_RECOGNISER]
    several = len(names) > 1
    tag = {n: f' ({n})' if several else '' for n in names}
    inner = {n: f', {n}' if several else '' for n in names}  # Inside a header's parentheses.
    first = names[0]
    columns: list[Column] = [
        ('PSNR', _stat('psnr', 2)),
        ('SSIM', _stat('ssim', 4)),
        ('Consistency', _stat('consistency', 2, CONSISTENCY_SCALE)),
        (f'CS{tag[first]}', _stat(face_key('cs', first), 4)),
        ('LPIPS', _stat('lpips', 4)),
        *_identity_columns(first, tag[first], ecfg),
    ]
    for name in names[1:]:
        columns += [(f'CS{tag[name]}', _stat(face_key('cs', name), 4))]
        columns += _identity_columns(name, tag[name], ecfg)
    for name in names:
        key = face_key(PAIRS_KEY, name)
        if any(s.get(key) for s in stats):
            columns += [(f'LFW acc ({label}{inner[name]})', _pair_accuracy(key, mode))
                        for mode, (label, _) in PAIR_MODES.items()]  # fmt: skip
    if any('attr_prob' in s for s in stats):  # Guidance: p(requested attributes) per output.
        columns += [('p(attributes)', _stat('attr_prob', 4)),
                    ('judge p(attributes)', _stat('judge_prob', 4))]  # fmt: skip
    if any('std_mean' in s for s in stats):
        columns.append(('pixel std', _stat('std_mean', 4)))
        for name in names:
            columns += [
                (f'ID cos (samples{inner[name]})', _stat(face_key('pairwise_cos', name), 4)),
                (f'ID cos (to mean{inner[name]})', _stat(face_key('to_mean_cos', name), 4)),
            ]
    return columns


def _pair_accuracy(key: str, mode: str) -> Callable[[dict], str]:
    """The cell of the LFW 10-fold accuracy (mean ± std) of pair mode ``mode`` under ``key``."""
    return lambda stats: _mean_std(((stats.get(key) or {}).get(mode) or {}).get('accuracy'), 4)


def markdown_table(summary: dict[str, Any], ecfg: Any, caption: str) -> str:
    """The SDE-SR Table I layout plus LPIPS, AUC, TAR@FAR, rank-k per recogniser (and LFW pair
    accuracy, attribute probabilities, identity stability): :func:`table_columns`."""
    columns = table_columns(summary, ecfg)
    header = ['method'] + [h for h, _ in columns]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for method, stats in summary['methods'].items():
        cells = [method] + [cell(stats) for _, cell in columns]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n\n' + caption + '\n'


def table_caption(name: str, summary: dict[str, Any], config: Any) -> str:
    """What the numbers are, with units (consistency scale) and protocol sizes."""
    data, ecfg = config.data, config.eval
    lr = data.image_size // data.downscale
    first = next(iter(summary['methods'].values()), {})
    names = summary.get('recognisers') or []
    lead = names[0] if names else PRIMARY_RECOGNISER
    ver = first.get(face_key('verification', lead)) or {}
    ide = first.get(face_key('identification', lead)) or {}
    pairs = first.get(face_key(PAIRS_KEY, lead)) or {}
    several = (
        f"Columns tagged (name) are that recogniser's ({', '.join(names)}; "
        'evaluation/face.py), each with its own crop. '
        if len(names) > 1
        else ''
    )
    face = (
        f'CS: cosine similarity of {" and ".join(names)} embeddings of output and HR, both cut '
        'with the transform found on the HR (mean ± std). Verification: AUC and TAR at FAR '
        f'over {ver.get("n_genuine", 0)} genuine and {ver.get("n_impostor", 0)} impostor '
        'pairs (output probe vs HR of another image). Identification: rank-k rate of '
        f'{ide.get("n_probes", 0)} output probes against a gallery of '
        f'{ide.get("n_gallery", 0)} HR images (first image of each identity). ' + several
        if names
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


def _panels(summary: dict[str, Any], key: str, title: str) -> list[tuple[str, list]]:
    """``(title, [(method, its key block)])`` per recogniser with a ``key`` protocol."""
    panels = []
    for name in summary.get('recognisers') or [PRIMARY_RECOGNISER]:
        field = face_key(key, name)
        curves = [(m, s[field]) for m, s in summary['methods'].items() if s.get(field)]
        if curves:
            panels.append((f'{title}, {name}', curves))
    return panels


def has_protocol(summary: dict[str, Any], key: str) -> bool:
    """Whether any method has protocol ``key`` (``verification``...) by any recogniser."""
    return bool(_panels(summary, key, ''))


def _plot_rocs(
    path: Path,
    panels: Sequence[tuple[str, Sequence[tuple[str, dict[str, Any]]]]],
    far_targets: Sequence[float],
) -> None:
    """TAR against FAR (log scale), one panel per ``(title, [(label, verification dict)])``."""
    fig, axes = _figure(columns=len(panels))
    for ax, (title, curves) in zip(np.atleast_1d(axes), panels, strict=True):
        for label, ver in curves:
            far, tar = np.asarray(ver['roc']['far']), np.asarray(ver['roc']['tar'])
            ax.step(far[1:], tar[1:], where='post', label=f'{label} (AUC {ver["auc"]:.3f})')
        for f in far_targets:
            ax.axvline(f, color='grey', lw=0.8, ls=':')
        ax.set(xscale='log', xlabel='false accept rate', ylabel='true accept rate', title=title,
               ylim=(0, 1.01))  # fmt: skip
        ax.legend(loc='lower right')
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_roc(path: Path, summary: dict[str, Any], far_targets: Sequence[float]) -> None:
    """TAR against FAR (log scale) per method, FAR targets marked; a panel per recogniser."""
    _plot_rocs(path, _panels(summary, 'verification', '1:1 verification (output vs HR)'),
               far_targets)  # fmt: skip


def plot_pair_roc(path: Path, summary: dict[str, Any], far_targets: Sequence[float]) -> None:
    """ROC of the LFW pairs per method and pair mode (SR-HR and SR-SR), per recogniser."""
    panels = [
        (title, [(f'{m} {label}', block[mode]) for m, block in curves
                 for mode, (label, _) in PAIR_MODES.items()])
        for title, curves in _panels(summary, PAIRS_KEY, 'LFW pairs verification')
    ]  # fmt: skip
    _plot_rocs(path, panels, far_targets)


def plot_cmc(path: Path, summary: dict[str, Any]) -> None:
    """Identification rate against rank per method; a panel per recogniser."""
    panels = _panels(summary, 'identification', '1:N identification (output probes, HR gallery)')
    fig, axes = _figure(columns=len(panels))
    for ax, (title, curves) in zip(np.atleast_1d(axes), panels, strict=True):
        for method, ide in curves:
            curve = np.asarray(ide['cmc'])
            ax.plot(np.arange(1, len(curve) + 1), curve, marker='.',
                    label=f'{method} (rank-1 {curve[0]:.3f})')  # fmt: skip
        ax.set(xlabel='rank', ylabel='identification rate', ylim=(0, 1.01), title=title)
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
    (``once``: their metrics.json), with PSNR, SSIM, then CS, AUC and Rank-1 per recogniser,
    the guiding classifiers' and the independent judge's probability of the requested
    attributes, and NFE."""
    names = sweep.get('recognisers') or [PRIMARY_RECOGNISER]
    tag = {n: f' ({n})' if len(names) > 1 else '' for n in names}
    header = ['method', 'PSNR', 'SSIM']
    header += [f'{h}{tag[n]}' for n in names for h in ('CS', 'AUC', 'Rank-1')]
    header += ['p(attributes)', 'judge p', 'NFE']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    method, key = sweep['method'], sweep['key']
    for i, value in enumerate(sweep['values']):
        cells = [f'{method}, {key}={value:g}' if isinstance(value, float | int) else str(value)]
        cells += [_number(sweep[m]['mean'][i]) for m in ('psnr', 'ssim')]
        for n in names:
            cells.append(_number(sweep[face_key('cs', n)]['mean'][i]))
            cells += [_number(sweep[face_key(m, n)][i]) for m in ('auc', 'rank1')]
        cells += [_number(sweep[m][i]) for m in ('attr_prob', 'judge_prob', 'nfe')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    for name, stats in ((once or {}).get('methods') or {}).items():
        cells = [name] + [_number((stats.get(m) or {}).get('mean')) for m in ('psnr', 'ssim')]
        for n in names:
            cells += [
                _protocol(face_key('cs', n), 'mean')(stats),
                _protocol(face_key('verification', n), 'auc')(stats),
                _protocol(face_key('identification', n), 'rank', '1')(stats),
            ]
        cells += [_number((stats.get(m) or {}).get('mean')) for m in ('attr_prob', 'judge_prob')]
        cells.append(_number(stats.get('nfe')))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


# A sweep whose values span more than this factor is plotted on a symlog axis.
SYMLOG_SPAN = 100.0


def plot_sweep(path: Path, sweep: dict[str, Any]) -> None:
    """PSNR and CS (mean ± std) against the swept value, and per-image CS against PSNR; CS of
    the sweep's first recogniser (the one its correlations are of)."""
    fig, (ax_p, ax_c, ax_s) = _figure(4.5, 3.8, columns=3)
    values = np.asarray(sweep['values'], np.float64)
    lead = (sweep.get('recognisers') or [PRIMARY_RECOGNISER])[0]
    cs, cs_label = face_key('cs', lead), f'CS ({lead})'
    for ax, key, label in ((ax_p, 'psnr', 'PSNR (dB)'), (ax_c, cs, cs_label)):
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
        ax_s.scatter(points['psnr'], points[cs], s=8, label=f'{value:g}')
    ax_s.set(xlabel='PSNR (dB)', ylabel=cs_label, title='per image')
    ax_s.legend(title=sweep['key'], fontsize=7)
    ax_s.grid(alpha=0.3)
    fig.suptitle(
        f'Pearson r(PSNR, {cs_label}): {sweep["correlation"]["means"]:.3f} over the sweep '
        f'means, {sweep["correlation"]["per_image"]:.3f} over images'
    )
    save_figure(fig, path)
