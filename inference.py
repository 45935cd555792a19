"""Loading a trained model for inference: the EMA parameters of a checkpoint in a workdir."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax

import experiment
import losses
from models.wrappers import init_params
from utils import parallel
from utils.checkpoint import Checkpointer, CheckpointError


def abstract_train_state(exp: experiment.Experiment) -> losses.TrainState:
    """Shapes, dtypes and (replicated) shardings of the training state: nothing is computed."""
    optimizer = losses.make_optimizer(exp.config.optim)
    shapes = jax.eval_shape(
        lambda k: losses.init_train_state(init_params(exp.model, k, exp.hr_shape), optimizer),
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
CONFIG_FILE = 'config.json'


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


def check_config_matches(config: Any, workdir: str | Path) -> None:
    """Fails, naming every field, if ``config`` differs from the training config in ``workdir``
    on a field that changes the model's meaning (a missing record is not checked)."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return
    trained = _flatten(json.loads(path.read_text()))
    current = _flatten(json.loads(config.to_json_best_effort()))
    wrong = [
        f'config.{k}: trained {trained[k]!r}, now {current.get(k)!r}'
        for k in sorted(trained)
        if k.startswith(MUST_MATCH) and trained[k] != current.get(k)
    ]
    if wrong:
        raise ValueError(
            f'the config does not match the one {path} was trained with:\n  ' + '\n  '.join(wrong)
        )


def load_ema_params(
    exp: experiment.Experiment, workdir: str | Path, step: int | None = None
) -> tuple[Any, int]:
    """The EMA parameters of checkpoint ``step`` (default: the latest readable) in ``workdir``.

    Raises :class:`CheckpointError` naming the folder when there is no checkpoint, or when the
    checkpoint does not fit the configured model (shapes differ: wrong config for this workdir).
    """
    check_config_matches(exp.config, workdir)
    directory = Path(workdir) / 'checkpoints'
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
    return state.ema_params, int(state.step)
