"""Classifier guidance (SRDG, dos Santos et al.): steer every sampler with attribute classifiers.

By Bayes' rule the score of ``p_t(u | y, a)`` is the score of ``p_t(u | y)`` plus
``grad_u log C_t(a | u)``; SRDG weights the classifier term by ``h``::

    score_guided(u, t, cond) = score(u, t, cond) + h * grad_u sum_k log C_k(a_k | x_ve, sigma_ve)

The classifiers were trained on VE perturbations of the data in [0, 1] (``models.classifiers``),
so the state is first mapped to that form by :meth:`sde_lib.SDE.ve_equivalent` (``x_ve = x0 +
sigma_ve z`` in data coordinates) and then to [0, 1] if the model's data are centred
([-1, 1]: halve both). That map is the only link between the sampler's time and the
classifier's; the gradient flows through it, so ``grad_u`` includes ``d x_ve / d u``.

The guided score is composed here, once, from the unguided ``score_fn``: samplers never see it.
Classifier variables and ``h`` are data, not constants: ``variables = {'scale': h,
'classifiers': {attribute: {'params', 'batch_stats'}}}`` is an argument of the compiled sampler
(``sampling.make_sampler(..., guidance=...)`` takes ``{'score': ..., 'guidance': variables}``),
so new weights or another ``h`` reuse the compiled program. ``h = 0`` selects the unguided score
itself (bit for bit; the classifier is still evaluated: an unguided run uses the unguided
sampler). BatchNorm runs in inference mode, so sample i depends only on its own state and
target.

The target of attribute k for sample i is ``cond['attributes'][i, k]`` (0 or 1; 1 = present),
in the order of ``config.guidance.attributes``: per input from the rows of
``config.guidance.attributes_csv`` (:func:`input_targets`; the ``file`` key of an input, a face
found in a photo included, is :func:`row_keys`), or ``config.guidance.targets`` for all.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import classifiers
from sde_lib import SDE, ScoreFn
from utils import csvfile

ATTRIBUTES = 'attributes'  # cond key of the per-sample targets [B, n_attributes].
# Model value range -> the classifiers' [0, 1]: x01 = (x - low) / (high - low).
_UNIT_RANGE = {False: (0.0, 1.0), True: (-1.0, 1.0)}
# An input that is a face found in a photo: ``<photo path>#face<NN>`` (sr.py).
_FACE_SOURCE = re.compile(r'(?P<photo>.+)(?P<face>#face\d+)')


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Which classifier judges which attribute; ``centered``: the model's data are in [-1, 1]."""

    attributes: tuple[str, ...]
    classifiers: tuple[nn.Module, ...]
    centered: bool = False

    def __post_init__(self):
        if len(self.attributes) != len(self.classifiers):
            raise ValueError(
                f'guidance: {len(self.attributes)} attributes {self.attributes} but '
                f'{len(self.classifiers)} classifiers'
            )


def to_unit_range(x: jax.Array, sigma: jax.Array, centered: bool) -> tuple[jax.Array, jax.Array]:
    """An image and its noise std in the model's value range -> [0, 1] units."""
    low, high = _UNIT_RANGE[centered]
    return (x - low) / (high - low), sigma / (high - low)


def _sum_log_probs(guidance: Guidance, variables, x01, sigma01, targets) -> jax.Array:
    """``sum_k log C_k(targets[:, k] | x01, sigma01)`` per example, in [0, 1] units."""
    total = jnp.zeros(x01.shape[:1], jnp.float32)
    for k, (name, classifier) in enumerate(
        zip(guidance.attributes, guidance.classifiers, strict=True)
    ):
        fn = classifiers.log_prob_fn(classifier)
        total = total + fn(variables['classifiers'][name], x01, sigma01, targets[:, k])
    return total


def log_prob(
    guidance: Guidance, variables: Mapping[str, Any], sde: SDE, u: jax.Array, t: jax.Array, cond
) -> jax.Array:
    """``sum_k log C_k(a_k | x_ve, sigma_ve)`` per sample [B] for the state ``u`` at times ``t``."""
    x_ve, sigma = sde.ve_equivalent(u, t, cond)
    x01, sigma01 = to_unit_range(x_ve, sigma, guidance.centered)
    return _sum_log_probs(guidance, variables, x01, sigma01, cond[ATTRIBUTES])


def guidance_term(
    guidance: Guidance, variables: Mapping[str, Any], sde: SDE, u: jax.Array, t: jax.Array, cond
) -> jax.Array:
    """``grad_u log C(a | u, t)`` (no ``h``); per sample, since log-probs are summed over a
    batch whose examples do not interact."""

    def total(v):
        return jnp.sum(log_prob(guidance, variables, sde, v, t, cond))

    return jax.grad(total)(u).astype(u.dtype)


def guided_score_fn(
    score_fn: ScoreFn, sde: SDE, guidance: Guidance, variables: Mapping[str, Any]
) -> ScoreFn:
    """``score_fn + h * guidance_term`` with ``h = variables['scale']`` (a traced scalar);
    exactly ``score_fn`` where ``h == 0``."""
    h = jnp.asarray(variables['scale'])

    def guided(u, t, cond):
        score = score_fn(u, t, cond)
        term = (h * guidance_term(guidance, variables, sde, u, t, cond)).astype(score.dtype)
        # A select, not lax.cond: a conditional around the classifier made every guided
        # step ~40% slower on CPU (bench/guidance_cost.py); the select also keeps h = 0 exact
        # should the classifier's gradient ever be inf or nan.
        return jnp.where(h == 0, score, score + term)

    return guided


def target_probability(
    guidance: Guidance,
    variables: Mapping[str, Any],
    x01: jax.Array,
    targets: jax.Array,
    sigma: float,
) -> jax.Array:
    """``prod_k C_k(a_k | x, sigma)`` [B] of images ``x01`` in [0, 1] (e.g. SR outputs, judged
    at a small ``sigma``): does guidance move the attributes?"""
    sigmas = jnp.full(x01.shape[:1], sigma, jnp.float32)
    return jnp.exp(_sum_log_probs(guidance, variables, x01, sigmas, targets))


def tag(guidance_config: Any) -> str:
    """A readable name of the guidance settings (part of eval names), e.g.
    ``srdg-male+eyeglasses-h500-attributes``: attributes, h and where targets come from."""
    source = (
        Path(guidance_config.attributes_csv).stem
        if guidance_config.attributes_csv
        else 't' + ''.join(str(int(v)) for v in guidance_config.targets)
    )
    return f'srdg-{"+".join(guidance_config.attributes)}-h{guidance_config.scale:g}-{source}'


def sampler_params(score_params: Any, variables: Mapping[str, Any]) -> dict[str, Any]:
    """The ``params`` argument of a guided sampler."""
    return {'score': score_params, 'guidance': variables}


def make_guidance(guidance_config: Any, centered: bool) -> Guidance | None:
    """The :class:`Guidance` of ``config.guidance`` (None when it names no attribute)."""
    attributes = tuple(guidance_config.attributes)
    if not attributes:
        return None
    if len(guidance_config.checkpoints) != len(attributes):
        raise ValueError(
            f'config.guidance.checkpoints must give one checkpoint per attribute {attributes}, '
            f'got {tuple(guidance_config.checkpoints)}'
        )
    model = classifiers.build_classifier(guidance_config.classifier)
    return Guidance(attributes, (model,) * len(attributes), centered)


def load_variables(
    guidance: Guidance, guidance_config: Any, image_shape: tuple[int, ...]
) -> dict[str, Any]:
    """``{'scale': h, 'classifiers': {attribute: variables}}`` read from the checkpoints of
    ``config.guidance`` (each refused, naming it, unless it fits its classifier exactly)."""
    loaded = {
        name: classifiers.load_variables(path, model, image_shape)
        for name, model, path in zip(
            guidance.attributes, guidance.classifiers, guidance_config.checkpoints, strict=True
        )
    }
    return {'scale': jnp.asarray(guidance_config.scale, jnp.float32), 'classifiers': loaded}


# ----------------------------------------------------------------------------- targets


def read_attribute_csv(path: str | Path, attributes: Sequence[str]) -> dict[str, np.ndarray]:
    """``file -> [n_attributes]`` 0/1 targets from a CSV with columns ``file,<attribute>...``.

    Read by :func:`utils.csvfile.read_csv` (UTF-8, an Excel BOM allowed). A missing column, a
    short or long row, an empty value, a value other than 0 or 1 or a ``file`` listed twice is an
    error naming the file and line: an attribute with no label is never filled in, and of two
    rows for one file neither wins silently. ``file`` is matched by :func:`lookup`.
    """
    table = csvfile.read_csv(path, ('file', *attributes))
    targets = {}
    for key, row in table.unique('file').items():
        values = [row[a] for a in attributes]
        if any(v not in ('0', '1') for v in values):
            raise row.error(f'{tuple(attributes)} must be 0 or 1, got {values}')
        targets[key] = np.asarray([int(v) for v in values], np.int32)
    return targets


def row_keys(source: str) -> list[str]:
    """The ``file`` values that name the input ``source``, in the order :func:`lookup` tries
    them: the trailing parts of its path, longest first (``/data/sub/b.png``: ``data/sub/b.png``,
    ``sub/b.png``, ``b.png``).

    A face found in a photo is the input ``<photo path>#face<NN>`` (``sr.py``; NN is the face's
    number in its outputs ``<photo>_face<NN>.png`` and in the manifest, which depends on the
    face-finding settings). It is named by its own row ``photo.jpg#face<NN>`` (that face) or
    else by the photo's row ``photo.jpg`` (every face of the photo without a row of its own),
    each as any trailing part of the photo's path: the face's keys are tried first.
    """
    photo, face = _split_face(source)
    path = Path(photo)
    parts = path.parts[1:] if path.anchor else path.parts
    trailing = ['/'.join(parts[i:]) for i in range(len(parts))]
    return [key + face for key in trailing] + trailing if face else trailing


def _split_face(source: str) -> tuple[str, str]:
    """``('<photo path>', '#face<NN>')`` of a face found in a photo, ``(source, '')`` else."""
    match = _FACE_SOURCE.fullmatch(source)
    return (match['photo'], match['face']) if match else (source, '')


def lookup(table: Mapping[str, np.ndarray], source: str) -> np.ndarray | None:
    """The row of the first of :func:`row_keys` of ``source`` that ``table`` has (None if none):
    the longest trailing part of its path, a face's own row before its photo's."""
    for key in row_keys(source):
        row = table.get(key)
        if row is not None:
            return row
    return None


def _wanted_row(source: str) -> str:
    """What row an input without one needs, for the error that refuses it."""
    photo, face = _split_face(source)
    name = Path(photo).name or photo
    if face:
        return (
            f'a row with file "{name}{face}" (that face) or "{name}" (every face of the photo), '
            'or a longer trailing part of its path'
        )
    return f'a row with file "{name}" or a longer trailing part of its path'


def input_targets(guidance_config: Any, sources: Sequence[str]) -> np.ndarray:
    """``[len(sources), n_attributes]`` targets: per input from ``attributes_csv`` (the row of
    :func:`lookup`: the trailing part of its path; a face of a photo, ``photo.jpg#face<NN>``,
    its own row or else its photo's), else ``targets`` for every input. An input without a row
    is an error naming the CSV, the input and the ``file`` value it needs."""
    attributes = tuple(guidance_config.attributes)
    if not guidance_config.attributes_csv:
        targets = np.asarray(guidance_config.targets, np.int32)
        if targets.shape != (len(attributes),) or not np.isin(targets, (0, 1)).all():
            raise ValueError(
                f'config.guidance.targets={tuple(guidance_config.targets)}: give one 0/1 value '
                f'per attribute {attributes}, or config.guidance.attributes_csv'
            )
        return np.tile(targets, (len(sources), 1))
    table = read_attribute_csv(guidance_config.attributes_csv, attributes)
    rows = [lookup(table, s) for s in sources]
    unknown = [s for s, r in zip(sources, rows, strict=True) if r is None]
    if unknown:
        raise ValueError(
            f'{guidance_config.attributes_csv} has no row for {len(unknown)} input(s), e.g. '
            f'{unknown[0]}: give {_wanted_row(unknown[0])}'
        )
    return np.stack(rows).reshape(len(sources), len(attributes))
