"""LFW View-2 verification with a face embedder (sanity check of the identity pipeline).

Data: ``<shared>/lfw_pairs``: deep-funneled 150x150 JPEGs and ``pairs.csv``
(``fold, same, image_a, image_b``; 10 folds x (300 same + 300 different)). Each image is
detected with YuNet (central face), aligned to the ArcFace 112x112 template and embedded; a
pair's score is the cosine similarity; accuracy follows :func:`lfw_10fold_accuracy`. Images
where no face is found use the median landmarks of the detected LFW images (deep-funneled
images share one geometry) and are counted.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evaluation.face import (
    FaceEmbedder,
    alignment_from_faces,
    get_embedder,
    select_central,
    warp_affine,
)
from evaluation.protocols import auc, cosine_similarity, lfw_10fold_accuracy
from utils.paths import shared_data_dir


def read_lfw_pairs(root: Path, max_pairs_per_fold: int | None = None) -> dict[str, np.ndarray]:
    """``pairs.csv`` as arrays ``fold``, ``same`` (int), ``a``, ``b`` (relative paths).

    ``max_pairs_per_fold`` keeps that many same and that many different pairs per fold (the
    first ones in file order), for quick checks.
    """
    with open(Path(root) / 'pairs.csv') as f:
        rows = list(csv.DictReader(f))
    if max_pairs_per_fold is not None:
        kept, count = [], {}
        for r in rows:
            key = (r['fold'], r['same'])
            if count.get(key, 0) < max_pairs_per_fold:
                count[key] = count.get(key, 0) + 1
                kept.append(r)
        rows = kept
    return {
        'fold': np.array([int(r['fold']) for r in rows]),
        'same': np.array([int(r['same']) for r in rows]),
        'a': np.array([r['image_a'] for r in rows]),
        'b': np.array([r['image_b'] for r in rows]),
    }


def _load(root: Path, names: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(root / n).convert('RGB')) for n in names])


def embed_lfw_images(
    root: Path, names: list[str], embedder: FaceEmbedder, chunk: int = 256, log: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``[N, D]`` of LFW images and a ``[N]`` bool mask of detected faces."""
    images = _load(root, names)
    h, w = images.shape[1:3]
    faces = []
    for k, img in enumerate(images):
        faces.append(select_central(embedder.detector.detect(img), h, w))
        if log and (k + 1) % 1000 == 0:
            print(f'detected {k + 1}/{len(images)}', file=sys.stderr, flush=True)
    found = [f.landmarks for f in faces if f is not None]
    if not found:
        raise RuntimeError('no face detected in any LFW image')
    alignment = alignment_from_faces(faces, np.median(np.stack(found), axis=0))
    embs = []
    for i in range(0, len(images), chunk):
        crops = warp_affine(images[i : i + chunk], alignment.matrices[i : i + chunk]) / 255.0
        embs.append(embedder.embed(crops))
        if log:
            print(
                f'embedded {min(i + chunk, len(images))}/{len(images)}', file=sys.stderr, flush=True
            )
    return np.concatenate(embs), alignment.detected


def lfw_verification(
    root: Path | None = None,
    embedder: FaceEmbedder | None = None,
    max_pairs_per_fold: int | None = None,
    log: bool = False,
) -> dict[str, Any]:
    """Runs LFW View-2; returns accuracy (mean, std, per fold), AUC and bookkeeping."""
    start = time.perf_counter()
    root = Path(root) if root is not None else shared_data_dir() / 'lfw_pairs'
    embedder = embedder or get_embedder('sface')
    pairs = read_lfw_pairs(root, max_pairs_per_fold)
    names = sorted(set(pairs['a']) | set(pairs['b']))
    index = {n: i for i, n in enumerate(names)}
    emb, detected = embed_lfw_images(root, names, embedder, log=log)
    ia = np.array([index[n] for n in pairs['a']])
    ib = np.array([index[n] for n in pairs['b']])
    scores = cosine_similarity(emb[ia], emb[ib])
    acc = lfw_10fold_accuracy(scores, pairs['same'], pairs['fold'])
    return {
        'accuracy_mean': acc['mean'],
        'accuracy_std': acc['std'],
        'fold_accuracies': acc['accuracies'],
        'fold_thresholds': acc['thresholds'],
        'auc': auc(scores, pairs['same']),
        'n_pairs': int(len(scores)),
        'n_images': len(names),
        'n_fallback': int(np.sum(~detected)),
        'fallback_images': [n for n, d in zip(names, detected, strict=True) if not d],
        'seconds': time.perf_counter() - start,
        'scores': scores,
    }
