"""``--mode train_classifier``: a noise-aware attribute classifier for guidance (SRDG).

    python main.py --config C --workdir W --mode train_classifier \
        --config.classifier_training.attribute=male

trains ``C(attribute | x_t, sigma)`` (``classifier_training.classifier``, e.g.
``small_densenet``) on the training split of ``config.data`` perturbed by **the SR model's own
SDE** (``config.sde``, t uniform on ``[t_eps, T]``), seen as the classifiers see every state:
its VE equivalent ``x0 + sigma z`` in [0, 1] units (``SDE.ve_equivalent``, ``guidance.py``).
Cross-entropy, AdamW; BatchNorm statistics live in the train state. Everything goes under
``W/classifier_<attribute>/``: orbax checkpoints (a run resumes from the latest), TensorBoard
and ``metrics.jsonl`` (loss, accuracy, and accuracy per noise-level bin of t), progress lines,
and at the end ``classifier.msgpack`` (``{params, batch_stats}``: what
``config.guidance.checkpoints`` loads) and ``accuracy_vs_t.json`` / ``.png``: accuracy on the
eval split at fixed t (SRDG Fig. 3).

Labels come from a CSV (``classifier_training.labels_csv``, default ``<data.path>/
attributes.csv``) with columns ``file,<attribute>...`` (0/1), matched to image files by the end
of their path. Images without a row are left out of the loss and the accuracy (never given a
label); an attribute without any label is an error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

import datasets
import experiment
import guidance as guidance_lib
import mean_model
from models import classifiers
from sde_lib import SDE
from utils import parallel
from utils.checkpoint import Checkpointer
from utils.progress import Progress
from utils.writers import MetricWriter

EXPORT, ACCURACY = 'classifier.msgpack', 'accuracy_vs_t'
# The batch keys the SDE's frame may read (``SDE.to_state``): bicubic and a learned mean.
COND_KEYS = ('lr_up', mean_model.MEAN_KEY)


def condition(batch: dict[str, Any]) -> dict[str, Any]:
    """The SDE's condition from a batch: every key of :data:`COND_KEYS` it holds."""
    return {k: batch[k] for k in COND_KEYS if k in batch}


@flax.struct.dataclass
class ClassifierState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


# ----------------------------------------------------------------------------- labels


def split_labels(config: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, labelled)`` per image of ``split`` (dataset order) for the trained attribute."""
    tcfg = config.classifier_training
    csv_path = tcfg.labels_csv or str(Path(config.data.path) / 'attributes.csv')
    source = datasets.open_source(config.data, split).source
    files = getattr(source, 'files', None)
    if files is None:
        raise ValueError(f'data.source={config.data.source!r} has no image files to label')
    table = guidance_lib.read_attribute_csv(csv_path, (tcfg.attribute,))
    rows = [guidance_lib.lookup(table, str(f)) for f in files]
    labelled = np.asarray([r is not None for r in rows])
    if not labelled.any():
        raise ValueError(f'{csv_path}: no {split} image has a {tcfg.attribute!r} label')
    labels = np.asarray([0 if r is None else int(r[0]) for r in rows], np.int32)
    return labels, labelled


# ----------------------------------------------------------------------------- train step


def noisy_inputs(
    sde: SDE, x0: jax.Array, cond: Any, t: jax.Array, z: jax.Array, centered: bool
) -> tuple[jax.Array, jax.Array]:
    """``x0`` perturbed by the SDE at times ``t`` with noise ``z``, as the classifier sees it:
    the VE-equivalent image and its sigma, in [0, 1] units."""
    mean, std = sde.marginal_prob(sde.to_state(x0, cond), t)
    u = mean + std.reshape(std.shape + (1,) * (x0.ndim - 1)) * z
    x_ve, sigma = sde.ve_equivalent(u, t, cond)
    return guidance_lib.to_unit_range(x_ve, sigma, centered)


def bin_counts(t: jax.Array, hit: jax.Array, weight: jax.Array, bins: int, T: float):
    """Per equal-width bin of ``t`` in ``[0, T]``: (weighted) examples and correct ones."""
    index = jnp.clip((t / T * bins).astype(jnp.int32), 0, bins - 1)
    counts = jax.ops.segment_sum(weight, index, bins)
    return counts, jax.ops.segment_sum(weight * hit, index, bins)


def make_train_step(classifier, sde: SDE, optimizer, tcfg: Any, centered: bool) -> Callable:
    """``step(state, batch, key) -> (state, metrics)``, pure; ``batch``: 'hr' and the
    condition (:data:`COND_KEYS`) in the model's value range, 'label', 'weight' (1: labelled)."""

    def step(state: ClassifierState, batch: dict, key: jax.Array):
        t_key, z_key = jax.random.split(jax.random.fold_in(key, state.step))
        x0, labels, weight = batch['hr'], batch['label'], batch['weight']
        t = jax.random.uniform(t_key, x0.shape[:1], minval=tcfg.t_eps, maxval=sde.T)
        z = jax.random.normal(z_key, x0.shape)
        x01, sigma01 = noisy_inputs(sde, x0, condition(batch), t, z, centered)

        def loss_fn(params):
            variables = {'params': params, 'batch_stats': state.batch_stats}
            logits, updates = classifier.apply(
                variables, x01, sigma01, train=True, mutable=['batch_stats']
            )
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            loss = jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)
            return loss, (logits, updates['batch_stats'])

        (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        counts, correct = bin_counts(t, hit, weight, tcfg.accuracy_bins, sde.T)
        metrics = {'loss': loss, 'bin_counts': counts, 'bin_correct': correct}
        return ClassifierState(state.step + 1, params, stats, opt_state), metrics

    return step


def make_optimizer(tcfg: Any) -> optax.GradientTransformation:
    return optax.adamw(tcfg.lr, weight_decay=tcfg.weight_decay)


def initial_state(classifier, optimizer, image_shape, key, mesh) -> ClassifierState:
    """Fresh variables and optimizer state, replicated over ``mesh``."""

    def init(k):
        variables = classifiers.init_variables(classifier, k, image_shape)
        params = variables['params']
        return ClassifierState(
            jnp.zeros((), jnp.int32), params, variables['batch_stats'], optimizer.init(params)
        )

    return jax.jit(init, out_shardings=parallel.replicated_sharding(mesh))(key)


# ----------------------------------------------------------------------------- evaluation


def accuracy_vs_t(
    classifier, variables, sde: SDE, images: np.ndarray, cond: dict, labels, ts, key,
    centered: bool,
) -> list[float]:  # fmt: skip
    """Accuracy of ``classifier`` on ``images`` (model value range, condition ``cond``)
    perturbed at each ``t``."""
    apply = jax.jit(lambda v, x, s: jnp.argmax(classifier.apply(v, x, s), -1))
    accuracy = []
    for i, t in enumerate(ts):
        z = jax.random.normal(jax.random.fold_in(key, i), images.shape)
        tt = jnp.full(images.shape[:1], t, jnp.float32)
        x01, sigma01 = noisy_inputs(sde, jnp.asarray(images), cond, tt, z, centered)
        accuracy.append(float(np.mean(np.asarray(apply(variables, x01, sigma01)) == labels)))
    return accuracy


def plot_accuracy(path: Path, ts, accuracy: dict[str, list[float]]) -> None:
    """Accuracy against diffusion time, one line per attribute (SRDG Fig. 3)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for name, values in accuracy.items():
        ax.plot(ts, values, marker='o', label=name)
    ax.set(xlabel='diffusion time t', ylabel='accuracy', ylim=(0, 1))
    ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


# ----------------------------------------------------------------------------- driver


def _labelled_batches(
    config: Any, labels: np.ndarray, labelled: np.ndarray, start: int, mean: mean_model.MeanModel
):
    """Training batches (model value range, the learned mean added) with 'label' and 'weight'
    from the label table."""
    scaler = datasets.get_data_scaler(config.data.centered)
    data = datasets.get_dataset(
        config.data,
        'train',
        config.classifier_training.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        start_step=start,
    )
    for batch in map(mean, data):
        index = np.maximum(batch['index'], 0)
        yield {
            'hr': scaler(batch['hr']),
            **{k: scaler(np.asarray(v)) for k, v in condition(batch).items()},
            'label': labels[index],
            'weight': (labelled[index] & batch['mask']).astype(np.float32),
        }


def _bin_names(tcfg: Any, T: float) -> list[str]:
    edges = np.linspace(0.0, T, tcfg.accuracy_bins + 1)
    return [f'accuracy/t{lo:.2f}-{hi:.2f}' for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def _log(writer, step: int, losses: list[float], counts, correct, names, progress) -> None:
    """Mean loss, accuracy and accuracy per t bin since the last log line."""
    scalars = {'loss': float(np.mean(losses)), 'accuracy': correct.sum() / max(counts.sum(), 1)}
    scalars.update({n: c / k for n, c, k in zip(names, correct, counts, strict=True) if k > 0})
    writer.write_scalars(step, scalars)
    writer.flush()
    logging.info(progress.line(f'loss {scalars["loss"]:.4f}, accuracy {scalars["accuracy"]:.3f}'))


def _train_loop(config, exp, classifier, state, checkpointer, writer, mean):
    """Trains from ``state.step`` to ``n_iters``, logging and checkpointing; the final state."""
    tcfg = config.classifier_training
    optimizer = make_optimizer(tcfg)
    step_fn = make_train_step(classifier, exp.sde, optimizer, tcfg, config.data.centered)
    replicated, split = parallel.replicated_sharding(exp.mesh), parallel.batch_sharding(exp.mesh)
    step_fn = jax.jit(
        step_fn,
        in_shardings=(replicated, split, replicated),
        out_shardings=(replicated, replicated),
    )
    labels, labelled = split_labels(config, 'train')
    start, key = int(state.step), jax.random.PRNGKey(config.seed)
    progress, names = Progress(tcfg.n_iters, start), _bin_names(tcfg, exp.sde.T)
    losses, counts, correct = [], np.zeros(tcfg.accuracy_bins), np.zeros(tcfg.accuracy_bins)
    batches = _labelled_batches(config, labels, labelled, start, mean)
    for step, batch in zip(range(start + 1, tcfg.n_iters + 1), batches, strict=False):
        state, metrics = step_fn(state, parallel.shard_batch(batch, exp.mesh), key)
        metrics = jax.device_get(metrics)
        losses.append(float(metrics['loss']))
        counts, correct = counts + metrics['bin_counts'], correct + metrics['bin_correct']
        progress.update(step)
        if step % tcfg.log_freq == 0 or step == tcfg.n_iters:
            _log(writer, step, losses, counts, correct, names, progress)
            losses, counts, correct = [], counts * 0, correct * 0
        if step % tcfg.checkpoint_freq == 0 or step == tcfg.n_iters:
            checkpointer.save(step, state)
    checkpointer.wait()
    return state


def _evaluate(config, exp, classifier, variables, out: Path, mean) -> dict[str, Any]:
    """Accuracy against t on the labelled eval images: ``accuracy_vs_t.json`` and ``.png``."""
    tcfg = config.classifier_training
    labels, labelled = split_labels(config, 'eval')
    keep = np.flatnonzero(labelled)[: tcfg.eval_images]
    data = datasets.get_dataset(config.data, 'eval', len(labelled), seed=config.seed)
    batch = mean(next(iter(data)))
    scaler = datasets.get_data_scaler(config.data.centered)
    cond = {k: scaler(np.asarray(v)[keep]) for k, v in condition(batch).items()}
    ts = np.linspace(tcfg.t_eps, exp.sde.T, tcfg.eval_times)
    accuracy = accuracy_vs_t(
        classifier, variables, exp.sde, scaler(batch['hr'][keep]), cond,
        labels[keep], ts, jax.random.PRNGKey(config.seed + 1), config.data.centered,
    )  # fmt: skip
    result = {'attribute': tcfg.attribute, 't': ts.tolist(), 'accuracy': accuracy}
    result['n_images'] = len(keep)
    (out / f'{ACCURACY}.json').write_text(json.dumps(result, indent=2))
    plot_accuracy(out / f'{ACCURACY}.png', ts, {tcfg.attribute: accuracy})
    logging.info('accuracy against t on %d eval images: %s', len(keep), accuracy)
    return result


def run(config: Any, workdir: str | Path, devices: Any = None) -> dict[str, Any]:
    """Trains (or resumes) the classifier of ``config.classifier_training`` in
    ``W/classifier_<attribute>``; exports it and returns its accuracy against t."""
    tcfg = config.classifier_training
    out = Path(workdir) / f'classifier_{tcfg.attribute}'
    exp = experiment.build(config, devices, workdir)
    mean = mean_model.load(config, exp.mesh.devices.flatten(), workdir)
    classifier = classifiers.build_classifier(tcfg.classifier)
    checkpointer = Checkpointer(out / 'checkpoints', tcfg.checkpoint_keep, set_aside=True)
    state = initial_state(
        classifier, make_optimizer(tcfg), exp.hr_shape, jax.random.PRNGKey(config.seed), exp.mesh
    )
    state = checkpointer.restore_latest(state) or state
    chief = jax.process_index() == 0
    writer = MetricWriter(out / 'tensorboard', chief, resume_step=int(state.step) or None)
    try:
        state = _train_loop(config, exp, classifier, state, checkpointer, writer, mean)
    finally:
        writer.close()
        checkpointer.close()
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    host = jax.tree.map(np.asarray, jax.device_get(variables))
    if chief:
        (out / EXPORT).write_bytes(flax.serialization.msgpack_serialize(host))
    return _evaluate(config, exp, classifier, variables, out, mean)
