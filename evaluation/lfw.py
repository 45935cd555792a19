"""LFW View-2 pairs: the HR-only verification check and the ``lfw_pairs`` pair protocol.

Data (``<shared>/lfw_pairs``), the pair list and the alignment of LFW images into the crop
geometry are in :mod:`faces.lfw`.

* :func:`lfw_verification` (sanity check of a recogniser's whole pipeline): each image's
  central face is located by the recogniser's own detector (YuNet for SFace, dlib's HOG for
  dlib), aligned into its crop and embedded; a pair's score is the cosine similarity;
  accuracy follows :func:`lfw_10fold_accuracy`. Images where no face is found use the median
  location of the faces found on the others (deep-funneled images share one geometry) and
  are counted.
* :data:`PAIR_PROTOCOLS`: the pairs of the ``lfw_pairs`` data source (``datasets.py``) as
  indices of its images, so that ``--mode eval`` scores the pairs from the stored embeddings
  (:mod:`evaluation.report`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evaluation.face import FaceEmbedder, get_embedder
from evaluation.protocols import auc, cosine_similarity, lfw_10fold_accuracy
from faces.lfw import lfw_pair_set
from utils.paths import shared_data_dir
from utils.registry import Registry

#: Pair lists of data sources with a pair protocol, by ``data.source``: ``fn(data_config)``
#: -> int arrays ``a``, ``b`` (dataset indices), ``same`` (1 or 0) and ``fold``, one per pair.
PAIR_PROTOCOLS = Registry('pair protocol')


@PAIR_PROTOCOLS.register('lfw_pairs')
def lfw_pairs_protocol(data_config: Any) -> dict[str, np.ndarray]:
    """The View-2 pairs of ``data.path`` as indices of the ``lfw_pairs`` source's images."""
    return lfw_pair_set(Path(data_config.path), int(data_config.pairs_per_fold))[2]


def _load(root: Path, names: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(root / n).convert('RGB')) for n in names])


def embed_lfw_images(
    root: Path, names: list[str], embedder: FaceEmbedder, chunk: int = 256, log: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``[N, D]`` of LFW images and a ``[N]`` bool mask of detected faces.

    Each recogniser locates faces its own way (:class:`FaceEmbedder`); where it finds none,
    the median of the faces it found on the other images is used (deep-funneled images share
    one geometry).
    """
    images = _load(root, names)
    faces = []
    for i in range(0, len(images), chunk):
        faces += embedder.find_faces(images[i : i + chunk])
        if log:
            print(f'detected {len(faces)}/{len(images)}', file=sys.stderr, flush=True)
    found = [f for f in faces if f is not None]
    if not found:
        raise RuntimeError('no face detected in any LFW image')
    alignment = embedder.alignment(images, faces, embedder.median_face(found))
    embs = []
    for i in range(0, len(images), chunk):
        part = slice(i, i + chunk)
        embs.append(embedder.embed(embedder.apply_alignment(images[part], alignment.take(part))))
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
    names, _, pairs = lfw_pair_set(root, max_pairs_per_fold or 0)
    emb, detected = embed_lfw_images(root, names, embedder, log=log)
    ia, ib = pairs['a'], pairs['b']
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
