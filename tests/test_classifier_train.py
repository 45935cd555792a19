"""``--mode train_classifier`` on real faces with a label they really carry.

No attribute labels ship with ``celeba_id128``, and an attribute with no labels is never faked;
the trainer is tested on a property measured on each face itself: whether its red channel
outweighs its blue one more than the median face's (the classifiers standardise each image
over all channels, so the colour balance survives while overall brightness would not).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import classifier_train
import datasets
import sde_lib
from configs import demo
from models import classifiers
from utils.writers import read_metrics

HR = 16
DEVICES = 2


def test_bin_counts_match_a_histogram():
    rng = np.random.default_rng(0)
    t, hit, weight = rng.uniform(0, 1, 200), rng.random(200) < 0.6, rng.random(200) < 0.8
    counts, correct = classifier_train.bin_counts(
        jnp.asarray(t), jnp.asarray(hit, jnp.float32), jnp.asarray(weight, jnp.float32), 4, 1.0
    )
    edges = np.linspace(0, 1, 5)
    np.testing.assert_allclose(counts, np.histogram(t[weight], edges)[0])
    np.testing.assert_allclose(correct, np.histogram(t[weight & hit], edges)[0])


def test_noisy_inputs_are_the_ve_equivalent_in_unit_range():
    sde = sde_lib.VPSDE(N=100)
    x0 = jax.random.uniform(jax.random.key(0), (4, 2, 2, 3), minval=-1.0, maxval=1.0)
    z = jax.random.normal(jax.random.key(1), x0.shape)
    t = jnp.asarray([0.01, 0.2, 0.5, 0.9])
    x01, sigma01 = classifier_train.noisy_inputs(sde, x0, {}, t, z, centered=True)
    sigma = sde.marginal_std(t) / sde.mean_coeff(t)  # VP: sigma_ve = std / alpha
    np.testing.assert_allclose(sigma01, sigma / 2, rtol=1e-5)
    expected = (x0 + sigma[:, None, None, None] * z + 1.0) / 2.0
    np.testing.assert_allclose(x01, expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope='module')
def red_faces(celeba_id128: Path, tmp_path_factory) -> tuple[Path, Path]:
    """96 train and 48 test faces (faces.csv) and a 'reddish' label for each (labels.csv)."""
    with open(celeba_id128 / 'faces.csv') as f:
        rows = list(csv.DictReader(f))
    chosen = [r for r in rows if r['split'] == 'train'][:96]
    chosen += [r for r in rows if r['split'] == 'test'][:48]
    redness = []
    for r in chosen:
        face = datasets.load_image(celeba_id128 / r['file'], HR).astype(np.float64)
        redness.append(face[..., 0].mean() - face[..., 2].mean())
    reddish = np.asarray(redness) > np.median(redness)
    folder = tmp_path_factory.mktemp('red_faces')
    with open(folder / 'faces.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['file', 'identity', 'split'])
        writer.writerows([str(celeba_id128 / r['file']), r['identity'], r['split']] for r in chosen)
    with open(folder / 'labels.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['file', 'reddish'])
        writer.writerows([r['file'], int(v)] for r, v in zip(chosen, reddish, strict=True))
    return folder, folder / 'labels.csv'


def _config(folder: Path, labels: Path):
    config = demo.get_config('smoke')
    config.data.path = str(folder)
    config.data.image_size = HR
    config.sde.sigma_max = 1.0  # Noise up to the data's scale: most times still informative.
    config.classifier_training.update(
        classifier='tiny_densenet',
        attribute='reddish',
        labels_csv=str(labels),
        batch_size=16,
        n_iters=100,
        lr=3e-3,
        log_freq=50,
        checkpoint_freq=50,
        eval_times=3,
        eval_images=48,
    )
    return config


def test_training_on_real_faces_beats_chance_and_resumes(red_faces, tmp_path):
    folder, labels = red_faces
    config = _config(folder, labels)
    result = classifier_train.run(config, tmp_path, devices=jax.devices()[:DEVICES])
    out = tmp_path / 'classifier_reddish'
    print('accuracy against t on 48 held-out faces:', result['t'], result['accuracy'])
    assert result['n_images'] == 48
    assert result['accuracy'][0] > 0.75  # balanced labels: chance is 0.5
    saved = json.loads((out / 'accuracy_vs_t.json').read_text())
    assert saved['accuracy'] == result['accuracy'] and (out / 'accuracy_vs_t.png').is_file()
    logged = read_metrics(out / 'tensorboard')
    assert [m['step'] for m in logged] == [50, 100]
    assert any(k.startswith('accuracy/t0.00-') for k in logged[-1])
    # The export is what config.guidance loads, as it is.
    model = classifiers.build_classifier('tiny_densenet')
    exported = classifiers.load_variables(out / 'classifier.msgpack', model, (HR, HR, 3))
    # Resume: a finished run restores its last checkpoint and trains nothing more.
    again = classifier_train.run(config, tmp_path, devices=jax.devices()[:DEVICES])
    assert again['accuracy'] == result['accuracy']
    reloaded = classifiers.load_variables(out / 'classifier.msgpack', model, (HR, HR, 3))
    jax.tree.map(np.testing.assert_array_equal, reloaded, exported)
    assert [m['step'] for m in read_metrics(out / 'tensorboard')] == [50, 100]
