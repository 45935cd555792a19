"""The one-step student (``distillation.py``, ``sampling.method='student'``).

Gaussian data with a condition-dependent mean, ``x | y ~ N(a lr_up + b, Sigma)``, has an exact
score, so its probability-flow map from ``T`` is affine and known in closed form
(``tests.test_sampling.exact_flow`` per condition). A student that can be affine (the x0 head
``W u + v lr_up + c``) distilled from the exact-score teacher recovers that map: its error
shrinks with training, towards the teacher's own DPM-Solver++(2M) error.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import distillation
import losses
import modes
import runs
import sampling
import sde_lib
from configs import default, student
from configs.ecdp import demo
from evaluation import run as evaluation_run
from models.wrappers import init_params, make_score_fn, score_options
from tests.test_ecdp import ExactConditionalScore, ecdp_sde
from tests.test_sampling import SHAPE, TinyScoreNet, exact_flow
from utils.checkpoint import read_arrays
from utils.parallel import make_mesh
from utils.writers import read_metrics

DIM_SHAPE = (2, 2, 1)  # Four pixels: a 4-d Gaussian per face.
A, B = 0.6, 0.1  # x | y ~ N(A lr_up + B, Sigma)
COV = np.array(
    [[0.04, 0.01, 0.0, 0.0], [0.01, 0.03, 0.005, 0.0], [0.0, 0.005, 0.02, 0.0], [0, 0, 0, 0.01]]
)
EPS = 1e-3


def _config(gt_weight: float, levels: int = 1) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.sampling.update(method='student', num_steps=1, schedule='logsnr', eps=EPS)
    config.sampling.noise_removal = False
    config.training.update(
        distill_weight=1.0,
        distill_teacher_steps=20,
        distill_levels=levels,
        distill_gt_weight=gt_weight,
        distill_temperature=(1.0, 1.0),
    )
    return config


def _sde(name: str) -> sde_lib.SDE:
    return {
        've': lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=200),
        'ecdp': lambda: ecdp_sde(200),
    }[name]()


def _frame(sde: sde_lib.SDE) -> tuple[bool, float]:
    """Whether the state is centred on lr_up (ECDP's frame) and its scale."""
    return isinstance(sde, sde_lib.MeanRevertingSDE), sde.scale


def _teacher(sde: sde_lib.SDE):
    uses_offset, scale = _frame(sde)
    model = ExactConditionalScore(sde, A, B, COV, uses_offset, scale)
    return make_score_fn(model, {'unused': jnp.zeros(())}, sde, score_options('score'))


def _affine_student(sde: sde_lib.SDE):
    """``student(params, key)``: an affine x0 estimate ``W u + v lr_up + c`` (any time), as a
    score ('x0' form, which the denoiser inverts exactly)."""
    return lambda params, key: _affine_score(sde, params)


def _affine_score(sde, params):
    def score_fn(u, t, cond):
        n = u.shape[0]
        x0 = u.reshape(n, -1) @ params['w'] + params['v'] * cond['lr_up'].reshape(n, -1)
        x0 = (x0 + params['c']).reshape(u.shape)
        alpha, std = sampling.alpha_std(sde, t)
        return sde_lib.batch_mul(-1.0 / std**2, u - sde_lib.batch_mul(alpha, x0))

    return score_fn


def _batch(key: jax.Array, n: int) -> dict[str, jax.Array]:
    """Gaussian faces of random conditions (data frame)."""
    k1, k2 = jax.random.split(key)
    lr_up = jax.random.uniform(k1, (n, *DIM_SHAPE), minval=-1.0, maxval=1.0)
    z = jax.random.normal(k2, (n, 4)) @ jnp.asarray(np.linalg.cholesky(COV).T, jnp.float32)
    return {'hr': A * lr_up + B + z.reshape(lr_up.shape), 'lr_up': lr_up}


def _exact_map(sde, u_T, lr_up):
    """The closed-form probability-flow map from T to EPS in the state frame."""
    uses_offset, scale = _frame(sde)
    lr = np.asarray(lr_up, np.float64).reshape(u_T.shape[0], -1)
    mean_u = (A * lr + B - (lr if uses_offset else 0.0)) / scale
    lam, U = np.linalg.eigh(COV / scale**2)
    return exact_flow(sde, np.asarray(u_T), sde.T, EPS, mean_u, U, lam, noise_removal=False)


def _student_error(sde, params, teacher, n: int = 512):
    """RMS of the one-step student against the closed form, and against the teacher's solve."""
    batch = _batch(jax.random.key(99), n)
    u_T = jax.vmap(lambda k: sde.prior_sampling(k, DIM_SHAPE))(
        jax.random.split(jax.random.key(7), n)
    )
    cond = {'lr_up': batch['lr_up']}
    t = jnp.full((n,), sde.T)
    one = np.asarray(sampling.denoise(_affine_score(sde, params), sde, u_T, t, cond)).reshape(n, -1)
    config = _config(0.0)
    solved, _ = sampling.dpm2m_trajectory(
        teacher, sde, u_T, distillation.teacher_grid(config, sde), cond, False
    )
    exact = _exact_map(sde, u_T, batch['lr_up'])
    rms = lambda a, b: float(np.sqrt(np.mean((a - b) ** 2)))
    return (
        rms(one, exact),
        rms(one, np.asarray(solved).reshape(n, -1)),
        rms(np.asarray(solved).reshape(n, -1), exact),
    )


@pytest.mark.parametrize('sde_name,gt_weight', [('ecdp', 0.0), ('ve', 1.0)])
def test_distilling_an_exact_teacher_recovers_the_closed_form_flow_map(sde_name, gt_weight):
    """ECDP's frame (the gt term off) and VE (SinSR's consistency-preserving term on: the
    teacher's inversion of real Gaussian faces maps back to them under the same affine map)."""
    sde = _sde(sde_name)
    teacher = _teacher(sde)
    loss_fn = distillation.make_loss_fn(
        sde,
        _affine_student(sde),
        teacher,
        _config(gt_weight),
        {},
        losses.weighted_image_losses,
        lambda x: x,
    )
    params = {'w': jnp.zeros((4, 4)), 'v': jnp.zeros(()), 'c': jnp.zeros((4,))}
    optimizer = optax.adam(optax.exponential_decay(0.05, 100, 0.5))

    @jax.jit
    def step(params, opt_state, key):
        full = lambda p: loss_fn(p, _batch(key, 256), jax.random.fold_in(key, 1))
        (loss, metrics), grads = jax.value_and_grad(full, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    opt_state, errors = optimizer.init(params), []
    for i in range(600):
        if i in (0, 60, 599):
            errors.append(_student_error(sde, params, teacher))
        params, opt_state, metrics = step(params, opt_state, jax.random.key(i))
    assert ('distill_gt_mse' in metrics) == (gt_weight > 0)
    to_teacher = [e[1] for e in errors]
    assert to_teacher[0] > 2 * to_teacher[1] > 4 * to_teacher[2], errors
    # Trained: the one-step map equals the teacher's 20-step solve within 0.003 RMS (state
    # frame; the data's std there is 0.1-0.2 / scale), so it is as near the closed form as the
    # teacher is (measured: ECDP 7e-4 to the teacher, the teacher 6.8e-3 to the closed form).
    teacher_to_exact = errors[2][2]
    assert to_teacher[2] < 0.003 and errors[2][0] < teacher_to_exact + 0.003, errors


# ----------------------------------------------------------------------------- the sampler


def _student_sampler(steps: int, temperature: float = 1.0, mesh=None):
    cfg = default.sampling_config()
    cfg.update(method='student', num_steps=steps, schedule='logsnr', eps=EPS)
    cfg.temperature = temperature
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=6)
    opts = score_options('scaled_score')
    return sampling.make_sampler(
        cfg, sde, TinyScoreNet(), opts, default.data_config(), SHAPE, mesh=mesh
    )


@pytest.fixture(scope='module')
def tiny_inputs():
    params = jax.jit(lambda k: init_params(TinyScoreNet(), k, SHAPE))(jax.random.key(0))
    lr = jax.random.uniform(jax.random.key(3), (8, 4, 4, 3), minval=-1.0)
    return params, {'lr': lr, 'lr_up': jax.image.resize(lr, (8, *SHAPE), 'nearest')}


@pytest.mark.parametrize('steps', [1, 2, 4])
def test_student_sampler_compiles_once_per_step_count_with_k_evaluations(tiny_inputs, steps):
    params, cond = tiny_inputs
    other = jax.tree.map(lambda p: p + 0.1, params)
    sample_fn = _student_sampler(steps)
    x0, stats = sample_fn(params, jax.random.key(0), cond, jnp.arange(8))
    x1, _ = sample_fn(other, jax.random.key(1), cond, jnp.arange(8, 16))
    assert sample_fn._cache_size() == 1
    assert int(stats['nfe']) == steps and int(stats['unfinished']) == 0
    assert np.all(np.isfinite(np.asarray(x0))) and np.abs(np.asarray(x0 - x1)).max() > 1e-3


def test_student_samples_do_not_depend_on_devices_or_batch(tiny_inputs):
    """4 steps (fresh noise between them): 8 devices against 1, and the first 4 of a batch of
    8 alone, to float rounding (as tests/test_sampling.py's ACROSS_SHAPES tolerance)."""
    params, cond = tiny_inputs
    samples = {}
    for devices in (8, 1):
        fn = _student_sampler(4, mesh=make_mesh(jax.devices()[:devices]))
        samples[devices] = np.asarray(fn(params, jax.random.key(0), cond, jnp.arange(8))[0])
    half = jax.tree.map(lambda v: v[:4], cond)
    first4 = np.asarray(_student_sampler(4)(params, jax.random.key(0), half, jnp.arange(4))[0])
    np.testing.assert_allclose(samples[8], samples[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(first4, samples[8][:4], rtol=1e-5, atol=1e-5)


def test_student_temperature_acts_in_one_step_and_is_refused_with_renoising():
    _student_sampler(1, temperature=0.5)
    with pytest.raises(ValueError, match=r'temperature=0\.5 cannot act.*num_steps=2'):
        _student_sampler(2, temperature=0.5)


def test_student_sampling_is_refused_for_an_undistilled_model_or_untrained_levels():
    config = _config(0.0, levels=2)
    distillation.check_sampling(config, config.sampling)  # 1 step: a divisor of 2.
    config.sampling.num_steps = 4
    with pytest.raises(ValueError, match='distill_levels=2 levels'):
        distillation.check_sampling(config, config.sampling)
    config.sampling.num_steps = 2
    config.training.distill_schedule = config.sampling.schedule
    distillation.check_sampling(config, config.sampling)
    other = config.sampling.copy_and_resolve_references()
    other.schedule = 'uniform' if config.sampling.schedule != 'uniform' else 'logsnr'
    with pytest.raises(ValueError, match=r'trained at the levels of training\.distill_schedule'):
        distillation.check_sampling(config, other)
    other.num_steps = 1  # One step is at T on any schedule.
    distillation.check_sampling(config, other)
    config.training.distill_weight = 0.0
    with pytest.raises(ValueError, match='was not distilled'):
        distillation.check_sampling(config, config.sampling)


def test_student_levels_are_points_of_the_teacher_grid():
    sde, config = ecdp_sde(200), _config(0.0, levels=4)
    grid = distillation.teacher_grid(config, sde)
    index = distillation.level_indices(config, sde)
    assert index.tolist() == [0, 5, 10, 15] and grid[0] == sde.T
    for steps in (1, 2, 4):
        own = config.sampling.copy_and_resolve_references()
        own.num_steps = steps
        np.testing.assert_allclose(sampling.time_steps(own, sde)[:-1], grid[index][:: 4 // steps])
    config.training.distill_levels = 3
    with pytest.raises(ValueError, match='must divide'):
        distillation.level_indices(config, sde)


# ----------------------------------------------------------------------------- on real faces


def _teacher_run(folder, data: str):
    """A smoke ECDP teacher (statistics, 2 steps) on real faces."""
    config = demo.get_config('smoke')
    config.data.path = data
    config.training.update(n_iters=2, log_freq=1, checkpoint_freq=2)
    modes.MODES.get('stats')(config, folder)
    modes.MODES.get('train')(config, folder)
    return folder


def _student_config(teacher, n_iters: int):
    config = student.get_config(f'{teacher},smoke')
    config.training.update(n_iters=n_iters, checkpoint_freq=2, log_freq=1)
    config.eval.update(max_images=4, batch_size=4, face=(), lpips='', methods=('sr', 'hr'))
    return config


@pytest.fixture(scope='module')
def distilled(tmp_path_factory, celeba_id128):
    tmp = tmp_path_factory.mktemp('distill')
    teacher = _teacher_run(tmp / 'teacher', str(celeba_id128))
    modes.MODES.get('distill')(_student_config(teacher, 4), tmp / 'student')
    return teacher, tmp / 'student'


def _params(workdir, step):
    return read_arrays(workdir / 'checkpoints' / str(step))['params']


def test_distillation_on_real_faces_pins_its_teacher_and_logs_every_term(distilled):
    teacher, workdir = distilled
    run = runs.Run.open(workdir)
    assert run.teacher() == {'teacher': str(teacher.absolute()), 'name': 'teacher', 'step': 2}
    assert run.read_stats(run.config()) == runs.Run.open(teacher).read_stats(run.config())
    logged = read_metrics(workdir / 'tensorboard')
    assert len(logged) == 4
    for name in ('distill_mse', 'distill_levels_mse', 'distill_gt_mse'):
        assert all(np.isfinite(m[name]) for m in logged), name


def test_killed_distillation_resumes_to_the_same_parameters(distilled, tmp_path):
    """Stopped after its checkpoint at step 2 and started again: the teacher's targets are
    recomputed from the same step keys, so the parameters equal the uninterrupted run's."""
    teacher, workdir = distilled
    modes.MODES.get('distill')(_student_config(teacher, 2), tmp_path)
    modes.MODES.get('distill')(_student_config(teacher, 4), tmp_path)
    for (path, a), (_, b) in zip(
        jax.tree.leaves_with_path(_params(tmp_path, 4)),
        jax.tree.leaves_with_path(_params(workdir, 4)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=str(path))


def test_a_student_package_records_its_teacher_and_super_resolves_in_one_evaluation(
    distilled, tmp_path
):
    teacher, workdir = distilled
    config = _student_config(teacher, 4)
    config.export.update(output=str(tmp_path / 'pkg'), dtype='float32', check_images=0)
    modes.MODES.get('export')(config, workdir)
    package = runs.Run.open(tmp_path / 'pkg')
    assert package.teacher() == runs.Run.open(workdir).teacher()
    assert package.export_record()['teacher']['step'] == 2
    packaged = package.config()
    packaged.data.path = config.data.path
    packaged.eval.update(max_images=4, batch_size=4, face=(), lpips='', methods=('sr', 'hr'))
    packaged.eval.output = str(tmp_path / 'eval')
    metrics = evaluation_run.run(packaged, tmp_path / 'pkg')
    sr_stats = metrics['methods']['sr']
    assert packaged.sampling.method == 'student' and sr_stats['nfe'] == 1, sr_stats


def test_a_student_folder_with_other_statistics_or_a_bad_temperature_range_is_refused(
    distilled, tmp_path
):
    """Before anything trains: statistics that are not the teacher's are refused naming the
    file (the student must work in its teacher's frame), and so is an inverted range."""
    teacher, _ = distilled
    config = _student_config(teacher, 4)
    stats = runs.Run.open(teacher).read_stats(config)
    runs.Run.open(tmp_path).write_stats(
        config, {**stats, 'residual_var': 2 * stats['residual_var']}
    )
    with pytest.raises(ValueError, match=f"{tmp_path}.*differs from the teacher's"):
        distillation.prepare(config, tmp_path)
    config.training.distill_temperature = (1.0, 0.5)
    with pytest.raises(ValueError, match=r'distill_temperature=\(1\.0, 0\.5\): not a range'):
        distillation.prepare(config, tmp_path / 'other')
