"""LFW deep-funneled images: the View-2 pair list, and alignment into the crop geometry.

Data: ``<shared>/lfw_pairs``: deep-funneled 150x150 JPEGs and ``pairs.csv``
(``fold, same, image_a, image_b``, paths relative to the CSV; 10 folds x (300 same + 300
different)). The ``lfw_pairs`` data source (``datasets.py``) reads the sorted unique images of
the kept pairs (:func:`lfw_pair_set`), each put into the crop geometry of ``celeba_id128`` by
:class:`LFWAligner`; the protocols that score the pairs live in :mod:`evaluation.lfw`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faces.align import canonical_landmarks, crop_matrix, warp_face
from faces.detect import YuNetDetector, select_central
from utils import csvfile

#: Size of LFW deep-funneled images, and the median YuNet landmarks (x, y; image-left eye
#: first) on them: per-point median over the first 500 images of ``lfw_pairs/images`` by file
#: name, all 500 detected (median absolute deviation 2.1-3.8 px per coordinate; eyes 46.4 px
#: apart). Derived with :func:`faces.canonical.derive_canonical_landmarks` on those images.
#: The fixed alignment of :class:`LFWAligner` when YuNet finds no face (deep-funneled images
#: share one geometry).
LFW_SIZE = 150
LFW_LANDMARKS = np.array(
    [[51.4, 63.1], [97.8, 61.1], [75.1, 88.2], [56.6, 109.1], [97.1, 107.9]], dtype=np.float64
)


def read_lfw_pairs(root: Path, max_pairs_per_fold: int | None = None) -> dict[str, np.ndarray]:
    """``pairs.csv`` as arrays ``fold``, ``same`` (int), ``a``, ``b`` (relative paths).

    ``max_pairs_per_fold`` keeps that many same and that many different pairs per fold (the
    first ones in file order), for quick checks.
    """
    table = csvfile.read_csv(Path(root) / 'pairs.csv', ('fold', 'same', 'image_a', 'image_b'))
    rows = [
        (_integer(r, 'fold'), _integer(r, 'same'), r['image_a'], r['image_b']) for r in table.rows
    ]
    if max_pairs_per_fold is not None:
        kept, count = [], {}
        for r in rows:
            key = r[:2]
            if count.get(key, 0) < max_pairs_per_fold:
                count[key] = count.get(key, 0) + 1
                kept.append(r)
        rows = kept
    return {
        'fold': np.array([r[0] for r in rows], dtype=np.int64),
        'same': np.array([r[1] for r in rows], dtype=np.int64),
        'a': np.array([r[2] for r in rows]),
        'b': np.array([r[3] for r in rows]),
    }


def _integer(row: csvfile.Row, column: str) -> int:
    """An integer value of a ``pairs.csv`` row, or an error naming the file and line."""
    try:
        return int(row[column])
    except ValueError:
        raise row.error(f'{column} {row[column]!r} is not an integer') from None


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


class LFWAligner:
    """Puts LFW images into the crop geometry of ``celeba_id128`` (FFHQ-style), ``size`` px.

    The central YuNet face's landmarks (:data:`LFW_LANDMARKS` if none is found) are mapped by
    :func:`faces.align.crop_matrix` onto the canonical landmarks at ``size`` and the image is
    warped (:func:`faces.align.warp_face`, antialiased), so LR made from the result matches
    training LR.
    """

    def __init__(self, size: int, detector: YuNetDetector | None = None):
        self.size = int(size)
        self.detector = detector or YuNetDetector()

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        """uint8 RGB ``[H, W, 3]`` -> uint8 ``[size, size, 3]`` and whether a face was found."""
        h, w = image.shape[:2]
        face = select_central(self.detector.detect(image), h, w)
        if face is None:
            landmarks = canonical_landmarks(h, w, LFW_LANDMARKS, LFW_SIZE)
        else:
            landmarks = face.landmarks
        out = warp_face(image, crop_matrix(landmarks, self.size), self.size)
        return np.clip(np.round(out), 0, 255).astype(np.uint8), face is not None
