"""LFW View-2 pairs: the HR-only verification check and the ``lfw_pairs`` eval protocol.

Data: ``<shared>/lfw_pairs``: deep-funneled 150x150 JPEGs and ``pairs.csv``
(``fold, same, image_a, image_b``, paths relative to the CSV; 10 folds x (300 same + 300
different)).

* :func:`lfw_verification` (sanity check of the identity pipeline): each image is detected with
  YuNet (central face), aligned to the ArcFace 112x112 template and embedded; a pair's score is
  the cosine similarity; accuracy follows :func:`lfw_10fold_accuracy`. Images where no face is
  found use the median landmarks of the detected LFW images (deep-funneled images share one
  geometry) and are counted.
* The ``lfw_pairs`` data source (``datasets.py``) and :data:`PAIR_PROTOCOLS`: the sorted unique
  images of the kept pairs (:func:`lfw_pair_set`), each put into the crop geometry of
  ``celeba_id128`` by :class:`LFWAligner`, so that ``--mode eval`` super-resolves LR made from
  LFW images and scores the pairs from the stored embeddings (:mod:`evaluation.report`).
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
    YuNetDetector,
    alignment_from_faces,
    canonical_landmarks,
    get_embedder,
    select_central,
    warp_affine,
    warp_to_landmarks,
)
from evaluation.protocols import auc, cosine_similarity, lfw_10fold_accuracy
from utils.paths import shared_data_dir
from utils.registry import Registry

#: Pair lists of data sources with a pair protocol, by ``data.source``: ``fn(data_config)``
#: -> int arrays ``a``, ``b`` (dataset indices), ``same`` (1 or 0) and ``fold``, one per pair.
PAIR_PROTOCOLS = Registry('pair protocol')

#: Size of LFW deep-funneled images, and the median YuNet landmarks (x, y; image-left eye
#: first) on them: per-point median over the first 500 images of ``lfw_pairs/images`` by file
#: name, all 500 detected (median absolute deviation 2.1-3.8 px per coordinate; eyes 46.4 px
#: apart). Derived with ``derive_canonical_landmarks`` on those images. The fixed alignment of
#: :class:`LFWAligner` when YuNet finds no face (deep-funneled images share one geometry).
LFW_SIZE = 150
LFW_LANDMARKS = np.array(
    [[51.4, 63.1], [97.8, 61.1], [75.1, 88.2], [56.6, 109.1], [97.1, 107.9]], dtype=np.float64
)


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


def person_name(path: str) -> str:
    """The person of an LFW file: its name without the ``_NNNN`` suffix (``A_B_0001.jpg``)."""
    return Path(path).stem.rsplit('_', 1)[0]


def lfw_pair_set(
    root: Path, pairs_per_fold: int = 0
) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """The images of the kept pairs and the pairs as indices into them (one bookkeeping).

    ``pairs_per_fold`` > 0 keeps that many same and that many different pairs per fold
    (:func:`read_lfw_pairs`), 0 all. Returns the sorted unique image paths (relative to
    ``root``), their identities (index of the person in the sorted person names of these
    images) and int arrays ``a``, ``b`` (indices of the two images), ``same`` and ``fold``.
    """
    pairs = read_lfw_pairs(root, pairs_per_fold or None)
    names = sorted(set(pairs['a']) | set(pairs['b']))
    persons = sorted({person_name(n) for n in names})
    person_index = {p: i for i, p in enumerate(persons)}
    ids = np.array([person_index[person_name(n)] for n in names], np.int32)
    index = {n: i for i, n in enumerate(names)}
    indexed = {
        'a': np.array([index[n] for n in pairs['a']], np.int64),
        'b': np.array([index[n] for n in pairs['b']], np.int64),
        'same': pairs['same'],
        'fold': pairs['fold'],
    }
    return names, ids, indexed


@PAIR_PROTOCOLS.register('lfw_pairs')
def lfw_pairs_protocol(data_config: Any) -> dict[str, np.ndarray]:
    """The View-2 pairs of ``data.path`` as indices of the ``lfw_pairs`` source's images."""
    return lfw_pair_set(Path(data_config.path), int(data_config.pairs_per_fold))[2]


class LFWAligner:
    """Puts LFW images into the crop geometry of ``celeba_id128`` (FFHQ-style), ``size`` px.

    The central YuNet face's landmarks (:data:`LFW_LANDMARKS` if none is found) are mapped by
    a similarity onto :data:`evaluation.face.CELEBA_ID128_LANDMARKS` scaled to ``size``
    (:func:`warp_to_landmarks`, antialiased), so LR made from the result matches training LR.
    """

    def __init__(self, size: int, detector: YuNetDetector | None = None):
        self.size = int(size)
        self.target = canonical_landmarks(self.size, self.size)
        self.detector = detector or YuNetDetector()

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        """uint8 RGB ``[H, W, 3]`` -> uint8 ``[size, size, 3]`` and whether a face was found."""
        h, w = image.shape[:2]
        face = select_central(self.detector.detect(image), h, w)
        if face is None:
            landmarks = canonical_landmarks(h, w, LFW_LANDMARKS, LFW_SIZE)
        else:
            landmarks = face.landmarks
        out = warp_to_landmarks(image, landmarks, self.target, self.size)
        return np.clip(np.round(out), 0, 255).astype(np.uint8), face is not None


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
