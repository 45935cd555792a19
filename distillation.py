"""A one-step student distilled from a trained model's sampler (SinSR-style, issue 21).

The student is the teacher's own network, initialised from its EMA weights and fine-tuned so
that its denoiser at ``t = T`` maps a prior draw ``u_T`` (and the LR condition) to the sample
the teacher's probability-flow ODE makes from the same draw, in one network evaluation
(SinSR, Wang et al. CVPR 2024: the deterministic-mapping distillation)::

    distill = || D_theta(u_T, T) - ODE_teacher(u_T) ||^2

in the SDE's frame (``sde_lib``), pixel mean. The teacher's solve is deterministic
DPM-Solver++(2M) (``sampling.dpm2m_trajectory``, the shipped sampler) on the grid
``training.distill_teacher_steps`` of ``sampling.schedule``, computed online under
``stop_gradient`` from the step's key: a resumed run recomputes the same targets, so a killed
distillation resumes to the same parameters without a cache on disk.

* **Levels** (``training.distill_levels`` = L > 1): the student is also trained at the levels
  of an L-step grid (points of the teacher's grid, which it must contain: uniform schedules
  are nested), from the teacher's state on the same trajectory at one random level per image,
  to the same endpoint (a consistency function on the teacher's trajectories). Its 2- and
  4-step sampling (``sampling.method='student'``) re-noises between levels.
* **Consistency preserving** (``training.distill_gt_weight``, SinSR's ``finetune_use_gt``):
  SinSR learns an inverse map with the student (the network at ``t = 0``) to carry real HR
  faces to a draw. The probability-flow ODE is invertible, so here the draw is the teacher's
  own inversion of the real face (the same solver on the reversed grid); the student must map
  it back to that face, ``|| D_theta(ODE_teacher^-1(u_hr), T) - u_hr ||^2``. It is the only term
  that sees real faces, which is what lets a student move past its teacher.
* **Image losses** on the one-step sample, which cost one forward and backward here (not a
  differentiated solve): VGG (``training.distill_quality_weight``) and the identity loss
  (``training.identity_weight``), on ``[0, 1]`` images against the HR face.
* **Temperature**: each training draw is tempered by ``tau ~ U(training.distill_temperature)``,
  so the one-step student serves the range of ``sampling.temperature`` it was trained on.

The teacher (``training.distill_teacher``, a run or package with the same model, SDE, score
and data) is loaded at its latest step when the student starts; that step is pinned in the
student's folder (``runs.Run.teacher``), so a resumed or exported student names the teacher it
was distilled from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import runs
import sampling
from sde_lib import SDE, ScoreFn

# ``student(params, dropout_key) -> score_fn``: the student network for one set of params.
Student = Callable[[Any, jax.Array], ScoreFn]
LossAndMetrics = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
ImageLosses = Any  # losses.ImageLosses (losses imports this module).
WeightedImageLosses = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def distill_schedule(config: Any) -> str:
    """The schedule a student is distilled on: ``training.distill_schedule``, or
    ``sampling.schedule`` where that is '' (records from before the field)."""
    return config.training.distill_schedule or config.sampling.schedule


def teacher_grid(config: Any, sde: SDE) -> np.ndarray:
    """The teacher's time grid: ``training.distill_teacher_steps`` steps of
    :func:`distill_schedule` from ``T`` to ``sampling.eps``."""
    student = config.sampling.copy_and_resolve_references()
    student.method, student.num_steps = 'dpm2m', config.training.distill_teacher_steps
    student.schedule = distill_schedule(config)
    return sampling.time_steps(student, sde)


def level_indices(config: Any, sde: SDE, levels: int | None = None) -> np.ndarray:
    """Indices into :func:`teacher_grid` of the ``levels`` (default
    ``training.distill_levels``) levels of the student's grid; raises, naming the fields, if
    the teacher's grid does not contain them."""
    levels = levels or config.training.distill_levels
    steps = config.training.distill_teacher_steps
    if levels < 1 or steps % levels:
        raise ValueError(
            f'config.training.distill_levels={levels} must divide '
            f'training.distill_teacher_steps={steps}'
        )
    grid = teacher_grid(config, sde)
    own = config.sampling.copy_and_resolve_references()
    own.method, own.num_steps, own.schedule = 'student', levels, distill_schedule(config)
    wanted = sampling.time_steps(own, sde)[:-1]
    index = np.arange(levels) * (steps // levels)
    if not np.allclose(grid[index], wanted, rtol=1e-4, atol=1e-6):
        raise ValueError(
            f'schedule {distill_schedule(config)!r}: the {levels}-step grid '
            f'{wanted.tolist()} is not a subset of the teacher grid of '
            f'training.distill_teacher_steps={steps}; use a uniform schedule '
            "('logsnr', 'uniform' or 'karras')"
        )
    return index


def check_sampling(config: Any, sampling_config: Any) -> None:
    """Refuses ``sampling.method='student'`` for a model that was not distilled, or at a step
    count whose levels it was not trained at (it must divide ``training.distill_levels``, on
    ``training.distill_schedule``'s grid; one step is at ``T`` on any schedule)."""
    if sampling_config.method != 'student':
        return
    tcfg = config.training
    if tcfg.distill_weight == 0:
        raise ValueError(
            "sampling.method='student' needs a distilled model (training.distill_weight > 0): "
            'this one was not distilled; use its own sampler'
        )
    steps = sampling_config.num_steps or 1
    if tcfg.distill_levels % steps:
        raise ValueError(
            f'sampling.num_steps={steps}: this student was trained at '
            f'training.distill_levels={tcfg.distill_levels} levels; use a divisor of it'
        )
    trained = tcfg.get('distill_schedule', '')
    if steps > 1 and trained and sampling_config.schedule != trained:
        raise ValueError(
            f'sampling.schedule={sampling_config.schedule!r}: this student was trained at the '
            f'levels of training.distill_schedule={trained!r}; its {steps} steps need that one'
        )


def _temper(sde: SDE, key: jax.Array, shape: tuple[int, ...], span: Any) -> jax.Array:
    """Prior draws [B, ...] each scaled by its own ``tau ~ U(span)``."""
    draw_key, tau_key = jax.random.split(key)
    keys = jax.random.split(draw_key, shape[0])
    u_T = jax.vmap(lambda k: sde.prior_sampling(k, shape[1:]))(keys)
    tau = jax.random.uniform(tau_key, (shape[0],), minval=span[0], maxval=span[1])
    return u_T * tau.reshape(-1, *[1] * (len(shape) - 1))


def _mse(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(a - b))


def _level_term(score_fn, sde, states, u_end, grid, index, key, cond):
    """The student at one random level (of ``index[1:]``) per image, against the endpoint."""
    batch = u_end.shape[0]
    pick = jax.random.randint(key, (batch,), 1, len(index))
    rows = jnp.asarray(index)[pick]
    u_level = states[rows, jnp.arange(batch)]
    t = jnp.asarray(grid, u_end.dtype)[rows]
    return _mse(sampling.denoise(score_fn, sde, u_level, t, cond), u_end)


def make_loss_fn(
    sde: SDE,
    student: Student,
    teacher: ScoreFn,
    config: Any,
    image_losses: ImageLosses,
    weighted_image_losses: WeightedImageLosses,
    to_images: Callable[[jax.Array], jax.Array],
) -> LossAndMetrics:
    """``loss_fn(params, batch, key) -> (loss, metrics)`` of the student (module docstring):
    ``distill_weight`` x (the one-step and level terms) + ``distill_gt_weight`` x the
    consistency-preserving term + the weighted ``image_losses`` of the one-step sample.
    ``batch`` is in the model's range; ``to_images`` maps it to ``[0, 1]``."""
    tcfg = config.training
    grid = teacher_grid(config, sde)
    index = level_indices(config, sde)
    noise_removal = config.sampling.noise_removal
    span = tuple(tcfg.distill_temperature)

    def loss_fn(params, batch, key):
        cond = {k: v for k, v in batch.items() if k != 'hr'}
        draw_key, level_key, drop_key = jax.random.split(key, 3)
        u_T = _temper(sde, draw_key, batch['hr'].shape, span)
        u_end, states = jax.lax.stop_gradient(
            sampling.dpm2m_trajectory(teacher, sde, u_T, grid, cond, noise_removal)
        )
        score_fn = student(params, drop_key)
        t_top = jnp.full(u_T.shape[:1], sde.T, u_T.dtype)
        one_step = sampling.denoise(score_fn, sde, u_T, t_top, cond)
        metrics = {'distill_mse': _mse(one_step, u_end)}
        if len(index) > 1:
            metrics['distill_levels_mse'] = _level_term(
                score_fn, sde, states, u_end, grid, index, level_key, cond
            )
        loss = tcfg.distill_weight * sum(metrics.values())
        if tcfg.distill_gt_weight:
            u_hr = sde.to_state(batch['hr'], cond)
            u_inv, _ = jax.lax.stop_gradient(
                sampling.dpm2m_trajectory(teacher, sde, u_hr, grid[::-1].copy(), cond, False)
            )
            back = sampling.denoise(score_fn, sde, u_inv, t_top, cond)
            metrics['distill_gt_mse'] = _mse(back, u_hr)
            loss = loss + tcfg.distill_gt_weight * metrics['distill_gt_mse']
        if image_losses:
            images = to_images(sde.from_state(one_step, cond))
            extra, image_metrics = weighted_image_losses(
                image_losses, images, to_images(batch['hr']), report_one=True
            )
            loss, metrics = loss + extra, {**metrics, **image_metrics}
        return loss, metrics

    return loss_fn


# ----------------------------------------------------------------------------- the teacher


def check_config(config: Any) -> None:
    """What ``--mode distill`` needs of a config, each missing piece named."""
    tcfg = config.training
    if tcfg.distill_weight <= 0 or not tcfg.distill_teacher:
        raise ValueError(
            '--mode distill needs config.training.distill_weight > 0 and '
            'config.training.distill_teacher (a run or package): use configs/student.py:TEACHER'
        )
    if config.sampling.method != 'student':
        raise ValueError(
            f"--mode distill: config.sampling.method={config.sampling.method!r}, not 'student' "
            '(the sampler the student is exported with)'
        )
    lo, hi = tcfg.distill_temperature
    if not 0 <= lo <= hi:
        raise ValueError(
            f'config.training.distill_temperature={(lo, hi)}: not a range 0 <= lo <= hi'
        )


def prepare(config: Any, workdir: str | Path) -> None:
    """Before the student trains: its folder gets the teacher's residual statistics (the
    student works in the teacher's frame) unless it has them; statistics that differ from the
    teacher's are refused, naming both files."""
    check_config(config)
    teacher, student = runs.Run.open(config.training.distill_teacher), runs.Run.open(workdir)
    if config.sde.stats_file or not teacher.stats_path(config).is_file():
        return  # Named by the config itself, or this SDE needs none (experiment.build checks).
    stats = teacher.read_stats(config)
    path = student.stats_path(config)
    if not path.is_file():
        student.write_stats(config, stats)
        return
    mine = student.read_stats(config)
    if mine['residual_var'] != stats['residual_var']:
        raise ValueError(
            f"{path}: residual_var {mine['residual_var']} differs from the teacher's "
            f'{teacher.stats_path(config)} ({stats["residual_var"]}): the student must work in '
            "its teacher's frame; remove the file"
        )


def load_teacher(exp: Any, workdir: str | Path) -> tuple[Any, int]:
    """The teacher's EMA parameters (``exp.load_ema_params``: same model, SDE, score, data)
    at the step pinned in ``workdir`` (the teacher's latest step at the first start, then
    recorded: :meth:`runs.Run.write_teacher`), and that step."""
    folder = exp.config.training.distill_teacher
    student = runs.Run.open(workdir)
    pinned = student.teacher()
    step = None if pinned is None else pinned['step']
    params, step = exp.load_ema_params(folder, step)
    if pinned is None and jax.process_index() == 0:
        path = Path(folder).absolute()
        student.write_teacher({'teacher': str(path), 'name': path.name, 'step': step})
    return params, step
