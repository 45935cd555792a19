"""``--mode train``: the data-parallel training driver.

Linear on purpose (see STYLE.md): set-up, resume, loop. The loop fetches metrics from the
devices only every ``log_freq`` steps, so the host prepares the next batches while the devices
work. A SIGTERM (preemption) writes a checkpoint at the next step and returns.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

import datasets
import experiment
import inference
import losses
import sampling
from degradations import resize
from models.wrappers import init_params
from utils import parallel
from utils.checkpoint import Checkpointer
from utils.images import make_grid, save_png
from utils.progress import Progress
from utils.writers import MetricWriter

TRAIN_KEYS = ('hr', 'lr_up')


class PreemptionFlag:
    """Set by SIGTERM; the loop checkpoints and stops at the next step."""

    def __init__(self):
        self.raised = False

    def _handler(self, signum, frame):
        del frame
        logging.warning('received signal %d: checkpointing and stopping', signum)
        self.raised = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[PreemptionFlag]:
        previous = signal.signal(signal.SIGTERM, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)


def initial_state(exp: experiment.Experiment, key: jax.Array) -> losses.TrainState:
    """Initial parameters and optimizer state, built on and replicated over the mesh."""
    optimizer = losses.make_optimizer(exp.config.optim)

    def init(k):
        return losses.init_train_state(init_params(exp.model, k, exp.hr_shape), optimizer)

    return jax.jit(init, out_shardings=parallel.replicated_sharding(exp.mesh))(key)


def initial_state_from(exp: experiment.Experiment, workdir: str | Path) -> losses.TrainState:
    """A fresh train state (step 0, new optimizer) whose parameters and EMA are the EMA
    parameters of the latest checkpoint in ``workdir``: a fine-tuning stage's start."""
    params, step = inference.load_ema_params(exp, workdir)
    logging.info('initialising from the EMA parameters of step %d of %s', step, workdir)
    optimizer = losses.make_optimizer(exp.config.optim)
    init = jax.jit(
        lambda p: losses.init_train_state(p, optimizer),
        out_shardings=parallel.replicated_sharding(exp.mesh),
    )
    return init(params)


def parallel_train_step(exp: experiment.Experiment) -> Callable:
    """The configured train step, jitted data-parallel over the experiment's mesh."""
    config = exp.config
    step = losses.make_train_step(
        losses.make_loss_fn(config, exp.sde, exp.model, train=True),
        losses.make_optimizer(config.optim),
        config.optim.ema_rate,
        losses.learning_rate_schedule(config.optim),
        datasets.get_data_scaler(config.data.centered),
    )
    return losses.jit_train_step(step, exp.mesh)


def _snapshot_fn(
    exp: experiment.Experiment, workdir: Path, writer: MetricWriter, state: losses.TrainState
):
    """A function ``(state, step)`` writing an LR | SR | HR grid of fixed eval faces.

    The sampler is compiled here, ahead of time, so that hosts enter its collectives together.
    """
    config = exp.config
    batch = next(
        datasets.get_dataset(
            config.data,
            'test',
            config.training.snapshot_batch,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            train=False,
        )
    )
    scaler = datasets.get_data_scaler(config.data.centered)
    inverse = datasets.get_data_inverse_scaler(config.data.centered)
    cond = parallel.shard_batch(
        {'lr_up': scaler(batch['lr_up']), 'lr': scaler(batch['lr'])}, exp.mesh
    )
    ids = parallel.shard_batch({'ids': np.asarray(batch['index'], np.int32)}, exp.mesh)['ids']
    # Every host holds a slice of the snapshot batch; the grid shows all of it.
    lr_all, hr_all = (multihost_utils.process_allgather(batch[k], tiled=True) for k in ('lr', 'hr'))
    sample_fn = exp.make_sampler(config.sampling)
    key = jax.random.PRNGKey(config.seed + 1)
    sample_fn = sample_fn.lower(state.ema_params, key, cond, ids).compile()

    def snapshot(state: losses.TrainState, step: int) -> None:
        samples, stats = sample_fn(state.ema_params, key, cond, ids)
        sampling.check_finished(jax.device_get(stats), config.sampling)
        sr = np.asarray(inverse(multihost_utils.process_allgather(samples, tiled=True)))
        if jax.process_index() == 0:
            lr_big = np.asarray(resize(lr_all, exp.hr_shape[:2], 'nearest'))
            grid = make_grid([lr_big, sr, hr_all])
            save_png(grid, workdir / 'samples' / f'step_{step:08d}.png')
            writer.write_images(step, {'samples/lr_sr_hr': grid})

    return snapshot


def train(config: Any, workdir: str | Path, devices: Any = None) -> losses.TrainState:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint.

    ``devices`` (default: all devices of all hosts) is the data-parallel mesh.
    """
    # ----- Set-up -----
    workdir = Path(workdir)
    exp = experiment.build(config, devices, workdir)
    tcfg = config.training
    parallel.check_divisible(tcfg.batch_size, exp.mesh)
    init_key, step_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = initial_state(exp, init_key)
    is_chief = jax.process_index() == 0
    writer = MetricWriter(workdir / 'tensorboard', enabled=is_chief)
    if is_chief:
        inference.save_config(config, workdir)

    # ----- Resume -----
    parallel.barrier('initialised')  # Orbax's set-up starts with a cross-host collective.
    checkpointer = Checkpointer(workdir / 'checkpoints', tcfg.checkpoint_keep)
    restored = checkpointer.restore_latest(state)
    if restored is None and tcfg.init_from:
        restored = initial_state_from(exp, tcfg.init_from)
    state = restored or state
    start = int(state.step)
    if start >= tcfg.n_iters:
        logging.info('checkpoint step %d >= n_iters %d: nothing to train', start, tcfg.n_iters)
        checkpointer.close()
        return state
    data = datasets.get_dataset(
        config.data,
        'train',
        tcfg.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        start_step=start,
    )
    train_step = parallel_train_step(exp)
    snapshot = _snapshot_fn(exp, workdir, writer, state) if tcfg.snapshot_freq > 0 else None
    batch_spec = jax.ShapeDtypeStruct(
        (tcfg.batch_size, *exp.hr_shape), np.float32, sharding=parallel.batch_sharding(exp.mesh)
    )
    train_step = train_step.lower(state, dict.fromkeys(TRAIN_KEYS, batch_spec), step_key).compile()
    parallel.barrier('compiled')  # Hosts compile at different speeds; collectives come next.
    progress = Progress(tcfg.n_iters, start)
    logging.info(
        'training %s from step %d on %d devices (%d hosts)',
        config.model.name,
        start,
        exp.mesh.devices.size,
        jax.process_count(),
    )

    # ----- Loop -----
    try:
        with PreemptionFlag().installed() as preemption:
            for step in range(start + 1, tcfg.n_iters + 1):
                local = next(data)
                batch = parallel.shard_batch({k: local[k] for k in TRAIN_KEYS}, exp.mesh)
                state, metrics = train_step(state, batch, step_key)
                last = step == tcfg.n_iters or preemption.raised
                if step % tcfg.log_freq == 0 or last:
                    metrics = jax.device_get(metrics)
                    progress.update(step)
                    writer.write_scalars(step, {**metrics, 'steps_per_sec': progress.rate})
                    writer.flush()  # Summaries survive a kill; cheap at log_freq.
                    if is_chief:
                        logging.info(progress.line(f'loss {metrics["loss"]:.4f}'))
                if step % tcfg.checkpoint_freq == 0 or last:
                    checkpointer.save(step, state)
                if snapshot is not None and (step % tcfg.snapshot_freq == 0 or last):
                    snapshot(state, step)
                if preemption.raised:
                    break
    finally:  # Pending asynchronous checkpoint writes complete even if the loop failed.
        checkpointer.close()
        writer.close()
    return state
