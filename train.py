"""``--mode train``: the data-parallel training driver.

Linear on purpose (see STYLE.md): set-up, resume, loop. The loop fetches metrics from the
devices only every ``log_freq`` steps, so the host prepares the next batches while the devices
work.

Resume: the config must equal the run's record (``W/config.json``) outside
``runs.MAY_CHANGE_ON_RESUME``, else the run stops naming each field; allowed changes are
appended to ``W/config_history.jsonl``. An unreadable checkpoint is set aside into
``W/checkpoints.rejected`` and the previous one is used (``utils.checkpoint``).

Preemption (SIGTERM): the checkpoint of the current step is written first, no snapshot is
taken, and the run returns; a snapshot already running is abandoned (:mod:`utils.preemption`).
A snapshot step is always a checkpoint step, so nothing is lost when it is abandoned. A
snapshot that fails (an undertrained model's adaptive ODE reaching ``sampling.max_steps``)
is logged as a warning, recorded in ``W/samples/snapshot_errors.jsonl``, and training goes on.

Quality loss: the step's unfinished solves are logged with the loss (``quality_unfinished``,
``quality_unfinished_fraction``); above ``training.quality_max_unfinished`` the run stops at
that logged step, naming it.

Devices: the largest device count that divides both ``training.batch_size`` and
``training.snapshot_batch`` is used (:func:`utils.parallel.devices_for_batch`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

import datasets
import distillation
import experiment
import losses
import mean_model
import runs
import sampling
from degradations import resize
from utils import parallel
from utils.checkpoint import Checkpointer
from utils.images import make_grid, save_png
from utils.preemption import Preempted, PreemptionFlag, run_abandonable
from utils.progress import Progress
from utils.writers import MetricWriter

TRAIN_KEYS = ('hr', 'lr_up', 'lr')  # Of a data batch; a learned mean adds its own key.


def initial_state(exp: experiment.Experiment, key: jax.Array) -> losses.TrainState:
    """Initial parameters and optimizer state, built on and replicated over the mesh."""
    optimizer = losses.make_optimizer(exp.config.optim)

    def init(k):
        return losses.init_train_state(exp.new_params(k), optimizer)

    return jax.jit(init, out_shardings=parallel.replicated_sharding(exp.mesh))(key)


def initial_state_from(
    exp: experiment.Experiment, workdir: str | Path, fresh: Any = None, keep_fresh: Any = ()
) -> losses.TrainState:
    """A fresh train state (step 0, new optimizer) whose parameters and EMA are the EMA
    parameters of the latest checkpoint in ``workdir``: a fine-tuning stage's start.

    A package pruned to some parameter scopes (a learned mean's ``mean/``: the encoder and its
    regression head) gives those scopes; the others keep ``fresh`` (initial parameters), which
    suits a stage that trains only what the package kept (e.g. the regression + identity).
    ``keep_fresh`` (``training.init_fresh``) names top-level scopes that keep ``fresh`` too:
    a model of another SR factor whose regression head differs."""
    scopes = runs.Run.open(workdir).scopes
    if keep_fresh:
        if fresh is None:
            raise ValueError('training.init_fresh needs fresh parameters')
        unknown = sorted(set(keep_fresh) - set(fresh))
        if unknown:
            raise ValueError(
                f'training.init_fresh: {unknown} are not parameter scopes of this model '
                f'(it has {sorted(fresh)})'
            )
        scopes = tuple(k for k in (scopes or tuple(fresh)) if k not in keep_fresh)
    params, step = exp.load_ema_params(workdir, must_match=('model',), scopes=scopes)
    if scopes:
        if fresh is None:
            raise ValueError(f'{workdir} holds only the scopes {scopes}: give fresh parameters')
        params = {**fresh, **params}
        logging.info('%s gives only %s: the other parameters start fresh', workdir, scopes)
    logging.info('initialising from the EMA parameters of step %d of %s', step, workdir)
    optimizer = losses.make_optimizer(exp.config.optim)
    init = jax.jit(
        lambda p: losses.init_train_state(p, optimizer),
        out_shardings=parallel.replicated_sharding(exp.mesh),
    )
    return init(params)


def parallel_train_step(exp: experiment.Experiment, teacher_params: Any = None) -> Callable:
    """The configured train step, jitted data-parallel over the experiment's mesh (a
    student's with its frozen ``teacher_params``)."""
    config = exp.config
    loss_fn = losses.make_loss_fn(
        config, exp.sde, exp.model, train=True, with_metrics=True, teacher_params=teacher_params
    )
    step = losses.make_train_step(
        loss_fn,
        losses.make_optimizer(config.optim),
        config.optim.ema_rate,
        losses.learning_rate_schedule(config.optim),
        datasets.get_data_scaler(config.data.centered),
        has_aux=True,  # The loss terms' metrics (the quality loss's unfinished solves).
    )
    return losses.jit_train_step(step, exp.mesh)


def _batch_specs(exp: experiment.Experiment, mean: mean_model.MeanModel) -> dict[str, Any]:
    """Shapes and shardings of a train batch (``TRAIN_KEYS``, and a learned mean's key)."""
    rows, sharding = exp.config.training.batch_size, parallel.batch_sharding(exp.mesh)
    shapes = {'hr': exp.hr_shape, 'lr_up': exp.hr_shape, 'lr': exp.lr_shape}
    shapes.update(dict.fromkeys(mean.keys, exp.hr_shape))
    return {
        k: jax.ShapeDtypeStruct((rows, *shape), np.float32, sharding=sharding)
        for k, shape in shapes.items()
    }


def _snapshot_fn(
    exp: experiment.Experiment,
    workdir: Path,
    writer: MetricWriter,
    state: losses.TrainState,
    mean: mean_model.MeanModel,
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
    cond = parallel.shard_batch(datasets.model_cond(mean(batch), scaler), exp.mesh)
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


SNAPSHOT_ERRORS = 'snapshot_errors.jsonl'  # In W/samples: one record per failed snapshot.


def _take_snapshot(
    snapshot: Callable,
    state: losses.TrainState,
    step: int,
    preemption: PreemptionFlag,
    workdir: Path,
) -> bool:
    """Takes the snapshot of ``step``; False if a preemption abandoned it.

    A snapshot only illustrates training (an undertrained model's adaptive ODE may reach
    ``sampling.max_steps``, say), so its failure must not end the run: it is logged as a
    warning with the step and recorded in ``W/samples/snapshot_errors.jsonl``, and training
    goes on. :class:`Preempted` and KeyboardInterrupt (not an ``Exception``) still propagate.
    """
    try:
        return run_abandonable(lambda: snapshot(state, step), preemption)
    except Preempted:
        raise
    except Exception as err:  # Any failure of the snapshot: recorded, training continues.
        error = f'{type(err).__name__}: {err}'
        logging.warning('snapshot of step %d failed, training continues: %s', step, error)
        if jax.process_index() == 0:
            path = workdir / 'samples' / SNAPSHOT_ERRORS
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, 'a') as f:
                f.write(json.dumps({'step': step, 'time': time.time(), 'error': error}) + '\n')
        return True


def training_devices(config: Any, devices: Any = None) -> list[Any]:
    """The devices training uses: the most that split the train and snapshot batches."""
    tcfg = config.training
    batches = {'training.batch_size': tcfg.batch_size}
    if tcfg.snapshot_freq > 0:
        batches['training.snapshot_batch'] = tcfg.snapshot_batch
    return parallel.devices_for_batch(batches, devices)


def _check_and_record_config(config: Any, workdir: Path, checkpointer: Checkpointer) -> None:
    """Refuses a resume with changed fields (see module doc), then records this start."""
    steps = checkpointer.steps()
    latest = steps[-1] if steps else None
    run = runs.Run.open(workdir)
    changes = run.check_resume(config, latest) if steps else {}
    for key, (old, new) in changes.items():
        logging.info('resuming with config.%s changed: %r -> %r', key, old, new)
    if jax.process_index() == 0:
        run.record_start(config, latest, changes)


def train(config: Any, workdir: str | Path, devices: Any = None) -> losses.TrainState:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint.

    ``devices`` (default: all devices of all hosts) are those the data-parallel mesh may use.
    """
    # ----- Set-up -----
    workdir = Path(workdir)
    tcfg = config.training
    is_chief = jax.process_index() == 0
    checkpointer = Checkpointer(workdir / 'checkpoints', tcfg.checkpoint_keep, set_aside=True)
    try:
        _check_and_record_config(config, workdir, checkpointer)
    except ValueError:
        checkpointer.close()
        raise
    exp = experiment.build(config, training_devices(config, devices), workdir)
    init_key, step_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = initial_state(exp, init_key)

    # ----- Resume -----
    parallel.barrier('initialised')
    restored = checkpointer.restore_latest(state)
    if restored is None and tcfg.init_from:
        restored = initial_state_from(exp, tcfg.init_from, state.params, tcfg.init_fresh)
    state = restored or state
    start = int(state.step)
    if start >= tcfg.n_iters:
        logging.info('checkpoint step %d >= n_iters %d: nothing to train', start, tcfg.n_iters)
        checkpointer.close()
        return state
    writer = MetricWriter(workdir / 'tensorboard', enabled=is_chief, resume_step=start)
    data = datasets.get_dataset(
        config.data,
        'train',
        tcfg.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        start_step=start,
    )
    teacher = distillation.load_teacher(exp, workdir)[0] if tcfg.distill_weight else None
    train_step = parallel_train_step(exp, teacher)
    mean = mean_model.load(config, exp.mesh.devices.flatten(), workdir)
    snapshot = _snapshot_fn(exp, workdir, writer, state, mean) if tcfg.snapshot_freq > 0 else None
    train_step = train_step.lower(state, _batch_specs(exp, mean), step_key).compile()
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
                batch = mean(parallel.shard_batch({k: local[k] for k in TRAIN_KEYS}, exp.mesh))
                state, metrics = train_step(state, batch, step_key)
                last = step == tcfg.n_iters
                if step % tcfg.log_freq == 0 or last:
                    metrics = jax.device_get(metrics)
                    progress.update(step)
                    writer.write_scalars(step, {**metrics, 'steps_per_sec': progress.rate})
                    writer.flush()  # Summaries survive a kill; cheap at log_freq.
                    if is_chief:
                        logging.info(progress.line(f'loss {metrics["loss"]:.4f}'))
                    losses.check_quality_solves(metrics, step, tcfg)  # After they are logged.
                # Read once, after the host waited for this step's metrics (where a signal
                # usually lands, so the run stops at this step, not the next): one value decides
                # both the checkpoint and the stop, so a stop is never unsaved.
                stop = preemption.raised
                snap = snapshot is not None and step % tcfg.snapshot_freq == 0
                if step % tcfg.checkpoint_freq == 0 or last or stop or snap:
                    checkpointer.save(step, state)  # First: a preemption may end the run next.
                if stop:
                    break
                if snap and not _take_snapshot(snapshot, state, step, preemption, workdir):
                    checkpointer.wait()
                    raise Preempted(f'snapshot of step {step} abandoned; checkpoint {step} saved')
    finally:  # Pending asynchronous checkpoint writes complete even if the loop failed.
        checkpointer.close()
        writer.close()
    return state
