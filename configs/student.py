"""A one-step student of a trained model: ``--config configs/student.py:TEACHER[,STAGE...]``.

``TEACHER`` is a shipped model's name (``ecdp_x4``) or the folder of a run or package. The
config is the teacher's own (its model, SDE, score, data and mean: the student is its network,
fine-tuned) with the distillation recipe below (``distillation.py``)::

    python main.py --config configs/student.py:ecdp_x4 --workdir S --mode distill
    python main.py --config configs/student.py:ecdp_x4 --workdir S --mode export \\
        --config.export.output=pretrained/ecdp_x4_student

Recipe (SinSR's, Wang et al. 2024, scaled to two CPU cores): the teacher's DPM-Solver++(2M)
of its own step count and schedule (20 logSNR steps for the shipped models; a teacher with
another sampler is distilled from 20 logSNR steps), the student's squared error to it at
``T`` and at the levels of a 4-step grid, SinSR's consistency-preserving term on real faces
(weight 1, as ``finetune_use_gt``), Adam at 1e-4 (SinSR: 5e-5 over 500k steps; here 300),
prior temperatures drawn from [0.5, 1] (the shipped models sample at 0.7). Stages, joined with
commas:

* ``identity``: also ECDP's VGG loss (weight 0.25) and the identity loss (0.1, as
  configs/ecdp/demo.py) on the one-step sample ("beyond the teacher"), 150 steps from a
  distilled student: ``--config.training.init_from=S``.
* ``one``: one level only (the one-step student, no 2- or 4-step sampling), cheaper.
* ``smoke``: a few steps of batch 2 (tests).
"""

from pathlib import Path

import pretrained
import runs
from configs.ecdp import demo

STAGES = ('identity', 'one', 'smoke')
TEACHER_STEPS = 20  # A teacher sampling otherwise is distilled from this many dpm2m steps.
LEVELS = 4  # The 1-, 2- and 4-step students.
QUALITY_WEIGHT = 0.25  # VGG on the one-step sample in the 'identity' stage (see there).


def teacher_folder(name: str) -> Path:
    """A shipped model's package, or the folder itself."""
    if name in pretrained.available():
        return pretrained.package_dir(name)
    if not runs.Run.open(name).has_config():
        raise ValueError(
            f'configs/student.py:{name}: neither a shipped model {pretrained.available()} nor '
            'a run or package folder'
        )
    return Path(name)


def get_config(arg: str = ''):
    name, *stages = arg.split(',')
    if not name or set(stages) - set(STAGES):
        raise ValueError(
            f'configs/student.py:{arg!r}: give TEACHER[,STAGE...], STAGE one of {STAGES}'
        )
    folder = teacher_folder(name)
    config = runs.Run.open(folder).config()
    sampling = config.sampling
    steps = sampling.num_steps if sampling.method == 'dpm2m' else TEACHER_STEPS
    if sampling.method != 'dpm2m':
        sampling.schedule = 'logsnr'
    config.training.update(
        diffusion_weight=0.0,
        quality_weight=0.0,
        regression_weight=0.0,
        identity_weight=0.0,
        distill_weight=1.0,
        distill_teacher=str(folder.absolute()),
        distill_teacher_steps=steps,
        distill_schedule=sampling.schedule,
        distill_levels=1 if 'one' in stages else LEVELS,
        distill_temperature=(0.5, 1.0),
        distill_gt_weight=1.0,
        distill_quality_weight=0.0,
        init_from=str(folder.absolute()),
        batch_size=8,
        n_iters=300,
        log_freq=10,
        checkpoint_freq=50,
        snapshot_freq=200,
    )
    # SinSR: 5e-5 over 500k steps; twice that here, where the budget is a few hundred steps.
    config.optim.update(lr=1e-4, warmup=20, ema_rate=0.99)
    sampling.update(method='student', num_steps=1, eta=0.0, projection='none')
    if 'identity' in stages:
        # Measured at the start from the distilled ecdp_x4 student: distill terms 0.012 (T),
        # 0.005 (levels), 0.03 (real faces); VGG 0.12, 1 - cos 0.55. These weights make the
        # image terms (0.03 VGG, 0.055 identity) about the size of the distillation's.
        config.training.update(
            distill_quality_weight=QUALITY_WEIGHT,
            identity_weight=demo.IDENTITY_WEIGHT,
            n_iters=150,
        )
    if 'smoke' in stages:
        config.training.update(
            batch_size=2, n_iters=4, log_freq=2, checkpoint_freq=2, snapshot_freq=0
        )
    return config
