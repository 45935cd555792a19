"""Loading a trained model for inference: the EMA parameters of a checkpoint in a workdir."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

import experiment
import losses
from utils import package, parallel
from utils.checkpoint import Checkpointer, CheckpointError


def abstract_train_state(exp: experiment.Experiment) -> losses.TrainState:
    """Shapes, dtypes and (replicated) shardings of the training state: nothing is computed."""
    optimizer = losses.make_optimizer(exp.config.optim)
    shapes = jax.eval_shape(
        lambda k: losses.init_train_state(exp.new_params(k), optimizer),
        jax.random.PRNGKey(0),
    )
    replicated = parallel.replicated_sharding(exp.mesh)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes
    )


# Fields that must match between training and inference: they change what the network means.
MUST_MATCH = (
    'model',
    'sde',
    'score',
    'data.image_size',
    'data.downscale',
    'data.centered',
    'data.down_kernel',
    'data.up_kernel',
    'data.num_channels',
)
CONFIG_FILE = package.CONFIG_FILE
# Fields that may differ when a run resumes: its length, how often it logs, checkpoints and
# snapshots, how snapshots, sr and eval sample, and machine settings. Any other field (model,
# SDE, score, data, optimizer, seed, batch) must equal the run's record: changing one would
# silently continue training another setup, and erase the record sr and eval check against.
MAY_CHANGE_ON_RESUME = (
    'training.n_iters',
    'training.log_freq',
    'training.checkpoint_freq',
    'training.checkpoint_keep',
    'training.snapshot_freq',
    'training.snapshot_batch',
    'training.init_from',  # (read only when a run starts without a checkpoint)
    'sampling',
    'sr',
    'export',
    'eval',
    'guidance',
    'classifier_training',
    'compute.cpu_devices',
    'compute.conv_grads',  # Only how gradients are computed, not the function.
    'data.cache_mb',
    'data.allow_split_overlap',
)
HISTORY_FILE = 'config_history.jsonl'


def save_config(config: Any, workdir: str | Path) -> None:
    """Records the training config in ``workdir`` (JSON), so inference can check it."""
    path = Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(config.to_json_best_effort(indent=2))
    os.replace(tmp, path)


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: list(tree) if isinstance(tree, tuple) else tree}
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f'{prefix}.{key}' if prefix else key))
    return out


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + '.') for p in prefixes)


def config_changes(config: Any, workdir: str | Path) -> dict[str, tuple[Any, Any]]:
    """Fields whose value differs from the record in ``workdir``: ``{key: (recorded, now)}``.

    Fields missing on either side (a record from older code) are not compared; no record: {}.
    """
    if not (Path(workdir) / CONFIG_FILE).exists():
        return {}
    recorded = _flatten(package.read_config(workdir))
    current = _flatten(json.loads(config.to_json_best_effort()))
    return {
        k: (recorded[k], current[k])
        for k in sorted(recorded.keys() & current.keys())
        if recorded[k] != current[k]
    }


def check_resume(config: Any, workdir: str | Path, step: int) -> dict[str, tuple[Any, Any]]:
    """Refuses, naming every field, to resume ``workdir`` at ``step`` with a config that differs
    from its record outside :data:`MAY_CHANGE_ON_RESUME`; returns the allowed changes."""
    changes = config_changes(config, workdir)
    refused = [k for k in changes if not _matches(k, MAY_CHANGE_ON_RESUME)]
    if refused:
        lines = [f'config.{k}: trained {changes[k][0]!r}, now {changes[k][1]!r}' for k in refused]
        raise ValueError(
            f'{Path(workdir) / CONFIG_FILE}: cannot resume from checkpoint {step} with a config '
            'that changes what is trained:\n  ' + '\n  '.join(lines) + '\nRestore these '
            f'values or train in a new --workdir (fields that may change: {MAY_CHANGE_ON_RESUME})'
        )
    return changes


def record_start(config: Any, workdir: str | Path, step: int | None, changes: dict) -> None:
    """Appends this start (resumed ``step`` or None, changed fields) to ``config_history.jsonl``
    and records ``config`` as the run's config."""
    entry = {
        'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
        'resumed_from': step,
        'changed': {k: list(v) for k, v in changes.items()},
    }
    path = Path(workdir) / HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a') as f:
        f.write(json.dumps(entry, default=str) + '\n')
    save_config(config, workdir)


def check_config_matches(
    config: Any, workdir: str | Path, must_match: tuple[str, ...] = MUST_MATCH
) -> None:
    """Fails, naming every field, if ``config`` differs from the training config in ``workdir``
    on a field of ``must_match`` (default: those that change the model's meaning; a missing
    record is not checked)."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return
    trained = _flatten(package.read_config(workdir))
    current = _flatten(json.loads(config.to_json_best_effort()))
    wrong = [
        f'config.{k}: trained {trained[k]!r}, now {current.get(k)!r}'
        for k in sorted(trained)
        if k.startswith(must_match) and trained[k] != current.get(k)
    ]
    if wrong:
        raise ValueError(
            f'the config does not match the one {path} was trained with:\n  ' + '\n  '.join(wrong)
        )


def load_ema_params(
    exp: experiment.Experiment,
    workdir: str | Path,
    step: int | None = None,
    must_match: tuple[str, ...] = MUST_MATCH,
    scopes: tuple[str, ...] = (),
) -> tuple[Any, int]:
    """The EMA parameters of checkpoint ``step`` (default: the latest readable) in ``workdir``,
    a run folder or a model package (``utils.package``; it has one step, the exported one).

    ``exp.config`` must equal the run's record on ``must_match`` (a warm start of a new stage
    checks only ``('model',)``: its SDE, mean or data may change). ``scopes``: only these
    top-level parameter collections (e.g. a mean model's regression branch), all if empty.
    Raises :class:`CheckpointError` naming the folder or file when there is no checkpoint, or
    when it does not fit the configured model (shapes differ: wrong config for this workdir).
    """
    check_config_matches(exp.config, workdir, must_match)
    target = abstract_train_state(exp).ema_params
    if scopes:
        target = {k: target[k] for k in scopes}
    if package.is_package(workdir):
        return _read_package(workdir, target, step)
    state, step = _restore_checkpoint(exp, Path(workdir) / 'checkpoints', step)
    params = state.ema_params
    return ({k: params[k] for k in scopes} if scopes else params), step


def _restore_checkpoint(exp: experiment.Experiment, directory: Path, step: int | None) -> tuple:
    """The train state of checkpoint ``step`` (latest readable if None) in ``directory``."""
    if not directory.is_dir():
        raise CheckpointError(f'no checkpoints in {directory}: train first (--mode train)')
    checkpointer = Checkpointer(directory, keep=None, async_save=False)
    try:
        target = abstract_train_state(exp)
        if step is None:
            state = checkpointer.restore_latest(target)
            if state is None:
                raise CheckpointError(f'no checkpoints in {directory}: train first (--mode train)')
        else:
            if step not in checkpointer.steps():
                raise CheckpointError(
                    f'no checkpoint {step} in {directory}; available: {checkpointer.steps()}'
                )
            state = checkpointer.restore(step, target)
    finally:
        checkpointer.close()
    return state, int(state.step)


def _read_package(folder: str | Path, target: Any, step: int | None) -> tuple[Any, int]:
    """The exported EMA weights of a package, checked against ``target`` (shapes, tree) and
    cast to its dtypes, replicated like ``target``."""
    path = Path(folder) / package.WEIGHTS_FILE
    exported = package.read_export(folder)['step']
    if step is not None and step != exported:
        raise CheckpointError(f'{path} holds step {exported} only, not {step}')
    try:
        stored = flax.serialization.msgpack_restore(path.read_bytes())
    except (OSError, ValueError) as err:
        raise CheckpointError(f'{path}: unreadable weights ({err})') from err
    want = dict(flatten_dict(target, sep='/'))
    got = dict(flatten_dict(stored, sep='/'))
    wrong = [f'{k}: missing' for k in sorted(want.keys() - got.keys())]
    wrong += [f'{k}: not in this model' for k in sorted(got.keys() - want.keys())]
    wrong += [
        f'{k}: shape {tuple(got[k].shape)}, the model has {tuple(want[k].shape)}'
        for k in sorted(want.keys() & got.keys())
        if tuple(got[k].shape) != tuple(want[k].shape)
    ]
    if wrong:
        raise CheckpointError(
            f'{path} does not fit the configured model ({len(wrong)} arrays differ):\n  '
            + '\n  '.join(wrong[:10])
        )
    params = jax.tree.map(
        lambda a, s: jax.device_put(np.asarray(a, s.dtype), s.sharding),
        unflatten_dict({tuple(k.split('/')): v for k, v in got.items()}),
        target,
    )
    return params, exported
