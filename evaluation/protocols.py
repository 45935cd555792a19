"""Face verification and identification protocols on similarity scores (numpy, host side).

Conventions used throughout:

- Higher score = more similar (cosine similarity of embeddings); ``labels`` are 1 for a
  genuine (same identity) pair and 0 for an impostor pair.
- A pair is *accepted* at threshold ``t`` when ``score >= t``. Tied scores are therefore
  always accepted or rejected together: a threshold cannot split a tie.
- FAR(t) = accepted impostors / impostors; TAR(t) = accepted genuines / genuines.
- Identification ranks are *pessimistic* under ties: a gallery entry of another identity that
  scores equal to the best true match counts as ranked above it (so a model whose embeddings
  are all equal gets the chance-level CMC, not 100%).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def cosine_similarity(a: Any, b: Any, eps: float = 1e-12) -> np.ndarray:
    """Rowwise cosine similarity of ``[N, D]`` arrays ``a`` and ``b`` -> ``[N]``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f'expected two [N, D] arrays of one shape, got {a.shape} and {b.shape}')
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), eps)
    return np.sum(a * b, axis=1) / norms


def similarity_matrix(probes: Any, gallery: Any, eps: float = 1e-12) -> np.ndarray:
    """Cosine similarity of every probe ``[P, D]`` with every gallery entry ``[G, D]``."""
    p, g = np.asarray(probes, np.float64), np.asarray(gallery, np.float64)
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), eps)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), eps)
    return p @ g.T


def _scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f'{s.size} scores but {y.size} labels')
    if not y.any() or y.all():
        raise ValueError('need at least one genuine (1) and one impostor (0) pair')
    if not np.all(np.isfinite(s)):
        raise ValueError('scores must be finite')
    return s, y


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC as ``(far, tar, thresholds)``, thresholds decreasing.

    ``thresholds[0] = +inf`` (accept nothing: FAR = TAR = 0), then every distinct score from
    the highest to the lowest (the last accepts everything: FAR = TAR = 1). Point ``i`` is
    the rates when accepting ``score >= thresholds[i]``. Like
    ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.
    """
    s, y = _scores_labels(scores, labels)
    order = np.argsort(-s, kind='stable')
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    far = np.r_[0.0, fp / fp[-1]]
    tar = np.r_[0.0, tp / tp[-1]]
    return far, tar, np.r_[np.inf, s[last_of_tie]]


def auc(scores: Any, labels: Any) -> float:
    """Area under the ROC (trapezoidal; a tie between a genuine and an impostor counts 1/2).

    Equals ``sklearn.metrics.roc_auc_score(labels, scores)`` and the probability that a random
    genuine pair outscores a random impostor pair.
    """
    return roc_auc(*roc_curve(scores, labels)[:2])


def roc_auc(far: np.ndarray, tar: np.ndarray) -> float:
    """:func:`auc` from a :func:`roc_curve` already computed (one sort for many statistics)."""
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))


def threshold_at_far(scores: Any, labels: Any, far: float) -> float:
    """The lowest ROC threshold whose FAR is <= ``far`` (accept ``score >= threshold``).

    This maximises TAR subject to FAR <= ``far``. Because ties cannot be split, the achieved
    FAR may be below the target; when even the highest impostor score exceeds the budget the
    threshold sits above it (the next distinct score up, or ``+inf``).
    """
    fars, _, thresholds = roc_curve(scores, labels)
    ok = np.nonzero(fars <= far)[0]
    return float(thresholds[ok[-1]])


def tar_at_far(scores: Any, labels: Any, far: float) -> float:
    """TAR at the threshold of :func:`threshold_at_far` (max TAR with FAR <= ``far``)."""
    return roc_tar_at_far(*roc_curve(scores, labels)[:2], far)


def roc_tar_at_far(fars: np.ndarray, tars: np.ndarray, far: float) -> float:
    """:func:`tar_at_far` from a :func:`roc_curve` already computed."""
    return float(tars[np.nonzero(fars <= far)[0][-1]])


def verification_pairs(
    ids: Any, include_self: bool = False, max_impostors: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probe/gallery index pairs from identity labels: ``(probe_idx, gallery_idx, labels)``.

    For SR evaluation image ``i``'s SR output is the probe and image ``j``'s HR original the
    gallery, both indexed into the same list with identities ``ids``. Genuine pairs: every
    ordered ``(i, j)`` with ``ids[i] == ids[j]`` and ``i != j`` (``include_self`` adds
    ``(i, i)``, SR against its own HR, which measures reconstruction rather than
    verification). Impostor pairs: every ordered ``(i, j)`` with different ids, or
    ``max_impostors`` of them drawn without replacement (``seed``). Sorted by (probe, gallery).
    """
    ids = np.asarray(ids).reshape(-1)
    same = ids[:, None] == ids[None, :]
    eye = np.eye(ids.size, dtype=bool)
    genuine = same if include_self else same & ~eye
    gi, gj = np.nonzero(genuine)
    ii, ij = np.nonzero(~same)
    if max_impostors is not None and max_impostors < ii.size:
        pick = np.sort(np.random.default_rng(seed).choice(ii.size, max_impostors, replace=False))
        ii, ij = ii[pick], ij[pick]
    probe = np.r_[gi, ii]
    gallery = np.r_[gj, ij]
    labels = np.r_[np.ones(gi.size, np.int64), np.zeros(ii.size, np.int64)]
    order = np.lexsort((gallery, probe))
    return probe[order], gallery[order], labels[order]


def match_ranks(similarity: Any, probe_ids: Any, gallery_ids: Any) -> np.ndarray:
    """1-based rank of each probe's best true match in the gallery (pessimistic ties).

    ``rank = 1 + #{gallery entries of another identity with score >= best true score}``.
    Closed set: every probe identity must appear in the gallery.
    """
    sim = np.asarray(similarity, np.float64)
    pid, gid = np.asarray(probe_ids).reshape(-1), np.asarray(gallery_ids).reshape(-1)
    if sim.shape != (pid.size, gid.size):
        raise ValueError(f'similarity {sim.shape} vs {pid.size} probes, {gid.size} gallery')
    match = pid[:, None] == gid[None, :]
    if not match.any(axis=1).all():
        raise ValueError('every probe identity must be in the gallery (closed-set CMC)')
    best = np.where(match, sim, -np.inf).max(axis=1)
    return 1 + np.sum(~match & (sim >= best[:, None]), axis=1)


def cmc(similarity: Any, probe_ids: Any, gallery_ids: Any) -> np.ndarray:
    """Cumulative match characteristic ``[G]``: ``curve[k - 1]`` = fraction with rank <= k.

    The rank of a probe is that of the first gallery entry of its identity, by decreasing
    similarity (:func:`match_ranks`, pessimistic ties). Gallery may hold several images per
    identity.
    """
    ranks = match_ranks(similarity, probe_ids, gallery_ids)
    g = np.asarray(similarity).shape[1]
    return np.cumsum(np.bincount(ranks - 1, minlength=g)[:g]) / ranks.size


def rank_k(similarity: Any, probe_ids: Any, gallery_ids: Any, k: int = 1) -> float:
    """Rank-``k`` identification rate (closed set): fraction of probes matched within top ``k``."""
    if k < 1:
        raise ValueError(f'k must be >= 1, got {k}')
    return float(np.mean(match_ranks(similarity, probe_ids, gallery_ids) <= k))


def best_threshold(scores: Any, labels: Any) -> tuple[float, float]:
    """``(threshold, accuracy)`` maximising verification accuracy of ``score >= threshold``.

    Candidates: midpoints between consecutive distinct scores, plus one below the lowest and
    one above the highest. Ties in accuracy go to the lowest such threshold.
    """
    s, y = np.asarray(scores, np.float64).reshape(-1), np.asarray(labels).reshape(-1) != 0
    u = np.unique(s)
    cands = np.r_[u[0] - 1.0, (u[:-1] + u[1:]) / 2, u[-1] + 1.0]
    # genuines accepted (score >= t) + impostors rejected (score < t), for each candidate t
    gen, imp = np.sort(s[y]), np.sort(s[~y])
    gen_accepted = gen.size - np.searchsorted(gen, cands, side='left')
    imp_rejected = np.searchsorted(imp, cands, side='left')
    acc = (gen_accepted + imp_rejected) / s.size
    best = int(np.argmax(acc))
    return float(cands[best]), float(acc[best])


def lfw_10fold_accuracy(scores: Any, labels: Any, folds: Any) -> dict[str, Any]:
    """LFW View-2 (unrestricted, 10 folds): per fold, the threshold with the best accuracy on
    the other 9 folds (:func:`best_threshold`) is applied to the held-out fold.

    Returns ``{'mean', 'std', 'accuracies', 'thresholds'}``; ``std`` is the population std
    (``np.std``, ddof 0) of the fold accuracies, as InsightFace and most papers report it.
    """
    s, y = np.asarray(scores, np.float64).reshape(-1), np.asarray(labels).reshape(-1) != 0
    f = np.asarray(folds).reshape(-1)
    if not (s.size == y.size == f.size):
        raise ValueError('scores, labels and folds must have one entry per pair')
    accs, thresholds = [], []
    for fold in np.unique(f):
        test = f == fold
        t, _ = best_threshold(s[~test], y[~test])
        accs.append(float(np.mean((s[test] >= t) == y[test])))
        thresholds.append(t)
    accs_a = np.array(accs)
    return {
        'mean': float(accs_a.mean()),
        'std': float(accs_a.std()),
        'accuracies': accs,
        'thresholds': thresholds,
    }
