"""A learned ``mu(y)``: the regression estimate of a trained LR encoder (``config.sde.mean_model``).

ECDP approximates the per-pixel mean of ``p(x | y)`` by bicubic upsampling only because it must;
the L1 stage of its LR encoder (``models.rrdb``) is a regression estimate of that mean. With
``config.sde.mean_model = W`` (a run whose network has ``model.lr_encoder_nf > 0``), the EMA
regression of W's latest checkpoint, frozen, is the SDE's mean: every data batch gains
``batch['lr_mu']`` next to ``batch['lr_up']``, in the same [0, 1] range, before anything else
sees it (train steps, snapshots, sr, eval, ``--mode stats``). It is a deterministic function of
the LR image, like bicubic upsampling, so the SDE's frame stays fixed while the score network
trains. The residual statistics record W and its checkpoint step (``--mode stats``); every
later use of the mean loads exactly that step (:func:`load` with the run's folder), so a W that
trains on is never picked up: its recorded step is used, or, if that checkpoint is gone, the
run stops naming it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections

import datasets
import experiment
import runs
from models.wrappers import make_regress_fn

MEAN_KEY = 'lr_mu'


@dataclasses.dataclass(frozen=True)
class MeanModel:
    """``batch -> batch`` adding ``MEAN_KEY`` (identity without a mean model)."""

    apply: Callable[[Any, Any, Any], jax.Array] | None = None
    params: Any = None
    workdir: str = ''
    step: int = -1

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.apply is None:
            return batch
        return {**batch, MEAN_KEY: self.apply(self.params, batch['lr'], batch['lr_up'])}

    @property
    def keys(self) -> tuple[str, ...]:
        """The batch keys this adds."""
        return () if self.apply is None else (MEAN_KEY,)

    def record(self) -> dict[str, Any]:
        """What the residual statistics record about the mean (compared by ``check``)."""
        return {'mean_model': self.workdir, 'mean_model_step': self.step}


def read_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The complete config a run (or model package) in ``workdir`` was trained with
    (``runs.Run.config``); a folder without one is refused naming the file."""
    run = runs.Run.open(workdir)
    if not run.has_config():
        raise FileNotFoundError(
            f'{run.config_path}: no run config; config.sde.mean_model must be a run'
        )
    return run.config()


def pinned_step(config: Any, workdir: str | Path | None) -> int | None:
    """The step of the mean that the residual statistics of ``workdir`` were made around;
    None (the mean's latest step) only where there are no statistics to pin it: ``--mode
    stats`` itself (``workdir`` None)."""
    if workdir is None:
        return None
    run = runs.Run.open(workdir)
    path = run.stats_path(config)
    if not path.is_file():
        raise FileNotFoundError(
            f'{path}: no residual statistics, which pin the step of config.sde.mean_model '
            'that this run uses: make them with `--mode stats`'
        )
    step = run.read_stats(config).get('mean_model_step')
    if not isinstance(step, int) or step < 0:
        raise ValueError(f'{path} records no mean_model_step: remake it with --mode stats')
    return step


def load(config: Any, devices: Any = None, workdir: str | Path | None = None) -> MeanModel:
    """The mean model of ``config.sde.mean_model`` on ``devices`` (identity when it is ''),
    at the step the residual statistics of the run in ``workdir`` record (see
    :func:`pinned_step`)."""
    folder = config.sde.get('mean_model', '')
    if not folder:
        return MeanModel()
    step = pinned_step(config, workdir)
    run_config = read_run_config(folder)
    if run_config.model.get('lr_encoder_nf', 0) <= 0:
        raise ValueError(
            f'config.sde.mean_model={folder!r}: its network has no LR encoder '
            '(model.lr_encoder_nf = 0), so it has no regression estimate to use as mu(y)'
        )
    for key in ('image_size', 'downscale', 'num_channels', 'centered', 'down_kernel'):
        if run_config.data[key] != config.data[key]:
            raise ValueError(
                f'config.sde.mean_model={folder!r} was trained with data.{key}='
                f'{run_config.data[key]!r}, this run has {config.data[key]!r}'
            )
    exp = experiment.build(run_config, devices, folder)
    params, step = exp.load_ema_params(folder, step, scopes=exp.model.regress_scopes)
    logging.info('mu(y): the LR regression of %s at step %d', folder, step)
    scaler = datasets.get_data_scaler(config.data.centered)
    inverse = datasets.get_data_inverse_scaler(config.data.centered)

    def apply(p, lr, lr_up):
        cond = {'lr': scaler(lr), 'lr_up': scaler(lr_up)}
        return inverse(make_regress_fn(exp.model, p)(cond))

    return MeanModel(jax.jit(apply), params, str(folder), step)
