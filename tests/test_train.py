"""The training driver end to end: loss on real faces, kill and resume, multi-host, bad input.

Runs that need a fresh process (SIGKILL, ``jax.distributed``) call ``main.py`` as users do.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import experiment
import runs
import train
from configs import demo
from utils.checkpoint import Checkpointer, CheckpointError, read_arrays, rejected_dir
from utils.paths import REPO_ROOT
from utils.writers import read_metrics


def _smoke_config(data_dir: Path, **training):
    config = demo.get_config('smoke')
    config.data.path = str(data_dir)
    for key, value in training.items():
        config.training[key] = value
    return config


def test_demo_training_lowers_loss_on_real_faces(celeba_id128, tmp_path):
    config = _smoke_config(celeba_id128, n_iters=300, log_freq=10, checkpoint_freq=1000)
    state = train.train(config, tmp_path, devices=jax.devices()[:2])  # One per core.
    assert int(state.step) == 300
    losses = [m['loss'] for m in read_metrics(tmp_path / 'tensorboard')]
    assert len(losses) == 30
    # The DSM loss is noisy (one random t per image); compare 50-step and 100-step windows.
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    assert last < 0.7 * first, (first, last)
    assert list((tmp_path / 'tensorboard').glob('events.out.tfevents*'))
    assert Checkpointer(tmp_path / 'checkpoints', 3).steps() == [300]


def _main_command(workdir: Path, data_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        str(REPO_ROOT / 'main.py'),
        '--config',
        str(REPO_ROOT / 'configs' / 'demo.py') + ':smoke',
        '--workdir',
        str(workdir),
        f'--config.data.path={data_dir}',
        *overrides,
    ]


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    env['JAX_PLATFORMS'] = 'cpu'
    env['FACESR_JAX_CACHE'] = os.environ['FACESR_TEST_JAX_CACHE']
    env['PYTHONPATH'] = str(REPO_ROOT)
    return env


def _final_params(workdir: Path, step: int) -> dict:
    return read_arrays(workdir / 'checkpoints' / str(step))['params']


def _assert_same_tree(a, b):
    flat_a, flat_b = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7, err_msg=str(path))


def _start_main(workdir: Path, data_dir: Path, *overrides: str) -> subprocess.Popen:
    """``main.py`` on the smoke demo in the background (2 devices), stderr kept for checks."""
    return subprocess.Popen(
        _main_command(workdir, data_dir, *overrides),
        env=_env(2),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for_checkpoint(workdir: Path, step: int, proc: subprocess.Popen, timeout=300.0):
    """Returns once checkpoint ``step`` is complete on disk (orbax renames it into place)."""
    path = workdir / 'checkpoints' / str(step)
    deadline = time.time() + timeout
    while not (path / '_CHECKPOINT_METADATA').exists():
        if proc.poll() is not None:
            raise AssertionError(f'training exited early:\n{proc.stderr.read().decode()[-3000:]}')
        if time.time() > deadline:
            raise AssertionError(f'no checkpoint {path} after {timeout} s')
        time.sleep(0.01)


def _wait_until(condition, proc: subprocess.Popen, what: str, timeout=300.0) -> None:
    """Polls ``condition`` every millisecond while ``proc`` runs; fails if it exits first."""
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f'exited before {what}:\n{proc.stderr.read().decode()[-3000:]}')
        if time.time() > deadline:
            raise AssertionError(f'no {what} after {timeout} s')
        time.sleep(0.001)


def _writing_checkpoint(workdir: Path) -> bool:
    """Whether orbax is writing a checkpoint (its temporary folder exists)."""
    folder = workdir / 'checkpoints'
    return folder.is_dir() and any('tmp' in p.name for p in folder.iterdir())


def _last_logged_step(workdir: Path) -> int:
    path = workdir / 'tensorboard' / 'metrics.jsonl'
    lines = path.read_text().splitlines() if path.exists() else []
    return max([json.loads(line)['step'] for line in lines if line.endswith('}')], default=0)


def test_killed_run_resumes_to_same_parameters(celeba_id128, tmp_path):
    """SIGKILL during a checkpoint write, then at a random step of the resumed run: the final
    resume reaches the uninterrupted run's parameters, and each step is logged once."""
    n_iters = 40
    args = (
        f'--config.training.n_iters={n_iters}',
        '--config.training.checkpoint_freq=10',
        '--config.training.log_freq=1',
    )
    reference = subprocess.run(
        _main_command(tmp_path / 'ref', celeba_id128, *args),
        env=_env(2),
        capture_output=True,
        timeout=600,
    )
    assert reference.returncode == 0, reference.stderr.decode()[-3000:]

    workdir = tmp_path / 'killed'
    proc = _start_main(workdir, celeba_id128, *args)
    _wait_until(lambda: _writing_checkpoint(workdir), proc, 'a checkpoint write')
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = _start_main(workdir, celeba_id128, *args)
    kill_step = random.Random(12).randint(15, n_iters - 5)  # Between checkpoints or not.
    _wait_until(lambda: _last_logged_step(workdir) >= kill_step, proc, f'step {kill_step}')
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(Checkpointer(workdir / 'checkpoints', 10).steps())
    assert killed_at < n_iters, 'the run finished before it could be killed'

    resumed = subprocess.run(
        _main_command(workdir, celeba_id128, *args), env=_env(2), capture_output=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert f'from step {killed_at}' in resumed.stderr.decode()
    _assert_same_tree(_final_params(workdir, n_iters), _final_params(tmp_path / 'ref', n_iters))
    logged = [m['step'] for m in read_metrics(workdir / 'tensorboard')]
    assert logged == list(range(1, n_iters + 1))  # Issue 12 #8: no step twice after a resume.


def test_sigterm_during_a_snapshot_checkpoints_and_exits_promptly(celeba_id128, tmp_path):
    """Preemption (issue 12 #4): a SIGTERM while a long snapshot samples (100,000 solver
    steps: minutes) exits 0 within 30 s, with the snapshot step checkpointed and no grid."""
    args = (
        '--config.training.n_iters=100000',
        '--config.training.checkpoint_freq=1000',
        '--config.training.snapshot_freq=5',
        '--config.training.log_freq=1',
        '--config.sampling.num_steps=100000',
    )
    proc = _start_main(tmp_path, celeba_id128, *args)
    _wait_for_checkpoint(tmp_path, 5, proc)  # A snapshot step is checkpointed before it samples.
    time.sleep(1.0)  # The snapshot is sampling now.
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    _, err = proc.communicate(timeout=300)
    seconds = time.monotonic() - signalled
    assert proc.returncode == 0, err.decode()[-3000:]
    assert seconds < 30, f'{seconds:.1f} s from SIGTERM to exit'
    assert Checkpointer(tmp_path / 'checkpoints', 10).steps() == [5]
    assert not list((tmp_path / 'samples').glob('*.png'))
    assert 'snapshot of step 5 abandoned' in err.decode()


def test_sigterm_between_steps_always_checkpoints_the_last_step(
    celeba_id128, tmp_path, monkeypatch
):
    """Preemption while training: the run stops with a checkpoint of its last step. The signal
    is raised while step 3's metrics are flushed, the window in which the flag used to be read
    twice (checkpoint decision, then stop decision), so that the run stopped unsaved."""
    from utils.writers import MetricWriter

    flush = MetricWriter.flush

    def flush_then_signal(self):
        flush(self)
        if _last_logged_step(tmp_path) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # The handler runs in the main thread, inside this window.

    monkeypatch.setattr(MetricWriter, 'flush', flush_then_signal)
    config = _smoke_config(celeba_id128, n_iters=1000, checkpoint_freq=1000, log_freq=1)
    state = train.train(config, tmp_path, devices=DEVICES)
    stopped = int(state.step)
    assert stopped == 3, stopped  # The signal came during step 3: no further step.
    assert Checkpointer(tmp_path / 'checkpoints', 10).steps() == [stopped]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('localhost', 0))
        return sock.getsockname()[1]


def test_two_hosts_agree_with_one(celeba_id128, tmp_path):
    args = ('--config.training.n_iters=6', '--config.training.checkpoint_freq=6')
    single = subprocess.run(
        _main_command(tmp_path / 'single', celeba_id128, *args),
        env=_env(4),
        capture_output=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr.decode()[-3000:]

    address = f'localhost:{_free_port()}'
    multi = tmp_path / 'multi'
    procs = [
        subprocess.Popen(
            _main_command(
                multi,
                celeba_id128,
                *args,
                '--config.training.snapshot_freq=6',
                f'--coordinator_address={address}',
                '--num_processes=2',
                f'--process_id={pid}',
            ),
            env=_env(2),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for pid in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-3000:]
    assert 'on 4 devices (2 hosts)' in err.decode()
    _assert_same_tree(_final_params(multi, 6), _final_params(tmp_path / 'single', 6))
    # The chief writes one LR | SR | HR grid of the whole snapshot batch (8 rows of 32 px).
    grid = np.asarray(Image.open(multi / 'samples' / 'step_00000006.png'))
    assert grid.shape[0] == 8 * (32 + 2) + 2 and grid.shape[1] == 3 * (32 + 2) + 2


def _tiny_state(value: float):
    return {'step': np.int32(value), 'w': np.full((3, 4), value, np.float32)}


def _corrupt(step_dir: Path) -> None:
    """Truncates every data file of a checkpoint."""
    files = [
        p
        for p in step_dir.rglob('*')
        if p.is_file() and p.stat().st_size > 0 and 'METADATA' not in p.name
    ]
    assert files, f'no files to corrupt in {step_dir}'
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def test_corrupt_checkpoint_falls_back_then_fails_loudly(tmp_path, caplog):
    ckpt = Checkpointer(tmp_path, keep=5, async_save=False)
    for step in (10, 20):
        ckpt.save(step, _tiny_state(step))
    ckpt.wait()
    _corrupt(tmp_path / '20')
    restored = ckpt.restore_latest(_tiny_state(0), fall_back=True)  # Readers do not by default.
    assert int(restored['step']) == 10
    assert str(tmp_path / '20') in caplog.text
    _corrupt(tmp_path / '10')
    with pytest.raises(CheckpointError, match=str(tmp_path / '10')):
        ckpt.restore_latest(_tiny_state(0), fall_back=True)
    ckpt.close()


def test_config_typo_fails_with_key_name(tmp_path):
    result = subprocess.run(
        _main_command(tmp_path, tmp_path, '--config.training.batchsize=3'),
        env=_env(1),
        capture_output=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert 'batchsize' in result.stderr.decode()


# ----------------------------------------------------------------------------- resume faults

DEVICES = jax.devices()[:2]  # One per core.


@pytest.fixture(scope='module')
def four_steps(celeba_id128, tmp_path_factory) -> Path:
    """A smoke run of 4 steps: checkpoints 2 and 4, a metric record per step."""
    path = tmp_path_factory.mktemp('four_steps')
    config = _smoke_config(celeba_id128, n_iters=4, checkpoint_freq=2, log_freq=1)
    train.train(config, path, devices=DEVICES)
    return path


@pytest.fixture(scope='module')
def six_steps(celeba_id128, tmp_path_factory) -> dict:
    """Parameters of an uninterrupted 6-step run: what every resumed run must reach."""
    path = tmp_path_factory.mktemp('six_steps')
    config = _smoke_config(celeba_id128, n_iters=6, checkpoint_freq=2, log_freq=1)
    train.train(config, path, devices=DEVICES)
    return _final_params(path, 6)


def _data_files(step_dir: Path) -> list[Path]:
    return [p for p in step_dir.rglob('*') if p.is_file() and 'METADATA' not in p.name]


def _truncate(step_dir: Path) -> None:
    _corrupt(step_dir)


def _delete_manifest(step_dir: Path) -> None:
    (step_dir / 'default' / 'manifest.ocdbt').unlink()  # The index of every array.


def _garbage_metadata(step_dir: Path) -> None:
    (step_dir / 'default' / '_METADATA').write_bytes(b'\x00{garbage')


def _empty_folder(step_dir: Path) -> None:
    shutil.rmtree(step_dir)
    step_dir.mkdir()


CORRUPTIONS = {
    'truncated_files': _truncate,
    'deleted_file': _delete_manifest,
    'garbage_metadata': _garbage_metadata,
    'empty_folder': _empty_folder,
}


def test_every_corruption_falls_back_and_is_set_aside(celeba_id128, four_steps, tmp_path):
    """Each kind of damage to the newest checkpoint: step 2 is restored, step 4 set aside."""
    config = _smoke_config(celeba_id128)
    target = experiment.build(config, DEVICES).abstract_state()
    for kind, corrupt in CORRUPTIONS.items():
        directory = tmp_path / kind / 'checkpoints'
        shutil.copytree(four_steps / 'checkpoints', directory)
        corrupt(directory / '4')
        checkpointer = Checkpointer(directory, 3, set_aside=True)
        assert int(checkpointer.restore_latest(target).step) == 2, kind
        assert (rejected_dir(directory) / '4').is_dir(), kind
        assert not (directory / '4').exists(), kind
        checkpointer.close()


@pytest.mark.parametrize('kind', ['truncated_files', 'empty_folder'])  # Listed or not by orbax.
def test_corrupt_checkpoint_is_set_aside_and_the_run_finishes(
    kind, celeba_id128, four_steps, six_steps, tmp_path
):
    """Issue 12 #2: the newest checkpoint is unreadable; the resume falls back to step 2, sets
    step 4 aside (kept), trains through step 4 again to the end, and equals an unbroken run."""
    workdir = tmp_path / 'run'
    shutil.copytree(four_steps, workdir)
    CORRUPTIONS[kind](workdir / 'checkpoints' / '4')
    config = _smoke_config(celeba_id128, n_iters=6, checkpoint_freq=2, log_freq=1)
    state = train.train(config, workdir, devices=DEVICES)
    assert int(state.step) == 6
    assert Checkpointer(workdir / 'checkpoints', 3).steps() == [2, 4, 6]
    assert (rejected_dir(workdir / 'checkpoints') / '4').is_dir()  # Set aside, not deleted.
    _assert_same_tree(_final_params(workdir, 6), six_steps)
    # Steps 3 and 4 were trained twice but are logged once (issue 12 #8).
    assert [m['step'] for m in read_metrics(workdir / 'tensorboard')] == [1, 2, 3, 4, 5, 6]
    history = (workdir / 'config_history.jsonl').read_text().splitlines()
    assert json.loads(history[-1])['changed'] == {'training.n_iters': [4, 6]}
    assert json.loads((workdir / 'config.json').read_text())['training']['n_iters'] == 6


def test_resume_with_changed_fields_is_refused_naming_each(celeba_id128, four_steps, tmp_path):
    """Issue 12 #3: changing what is trained on resume stops the run before anything changes."""
    workdir = tmp_path / 'run'
    shutil.copytree(four_steps, workdir)
    recorded = (workdir / 'config.json').read_text()
    config = _smoke_config(celeba_id128, n_iters=6, log_freq=3)  # These two may change.
    config.sde.sigma_max, config.model.nf, config.data.downscale = 50.0, 8, 8
    with pytest.raises(ValueError) as err:
        train.train(config, workdir, devices=DEVICES)
    message = str(err.value)
    for field in ('sde.sigma_max: trained 90.0, now 50.0', 'model.nf: trained 16, now 8',
                  'data.downscale: trained 4, now 8'):  # fmt: skip
        assert field in message, message
    assert 'n_iters' not in message.split('fields that may change')[0]
    assert (workdir / 'config.json').read_text() == recorded
    assert Checkpointer(workdir / 'checkpoints', 3).steps() == [2, 4]


def test_conv_grads_may_change_on_resume_compute_dtype_may_not(tmp_path):
    """``compute.conv_grads`` changes only how gradients are computed (same function), so a
    run may resume with another value; the compute dtype changes the function and is refused."""
    config = demo.get_config()
    run = runs.Run.open(tmp_path)
    run.save_config(config)
    config.compute.conv_grads = 'loops'
    assert run.check_resume(config, 4) == {'compute.conv_grads': ('lax', 'loops')}
    config.compute.dtype = 'bfloat16'
    with pytest.raises(ValueError, match="config.compute.dtype: trained 'float32'"):
        run.check_resume(config, 4)


def _train_on(config, workdir: Path, count: int) -> dict:
    train.train(config, workdir, devices=jax.devices()[:count])
    return _final_params(workdir, config.training.n_iters)


def _assert_close_tree(a, b, label: str):
    """Equal to float tolerance: other device counts sum the batch gradient in another order."""
    for (path, x), (_, y) in zip(
        jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b), strict=True
    ):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, err_msg=f'{label} {path}')


def test_three_devices_use_two_and_train_as_two(celeba_id128, four_steps, tmp_path, caplog):
    """Issue 12 #1: batch 8 on 3 devices uses 2 (logged), giving the 2-device run's
    parameters. (Two devices equal one: tests/test_losses.py; all counts: the slow test.)"""
    config = _smoke_config(celeba_id128, n_iters=4, checkpoint_freq=2, log_freq=1)
    _assert_same_tree(_train_on(config, tmp_path, 3), _final_params(four_steps, 4))
    assert 'using 2 of the 3 devices' in caplog.text


@pytest.mark.slow
def test_every_device_count_trains_like_one_device(celeba_id128, tmp_path, caplog):
    """The device matrix of issue 12: 2, 3, 5, 6 and 8 devices against 1."""
    config = _smoke_config(celeba_id128, n_iters=4, checkpoint_freq=2, log_freq=1)
    single = _train_on(config, tmp_path / '1', 1)
    for count in (2, 3, 5, 6, 8):
        _assert_close_tree(_train_on(config, tmp_path / str(count), count), single, str(count))
        used = max(d for d in (1, 2, 4, 8) if d <= count)
        assert (f'using {used} of the {count} devices' in caplog.text) == (used < count)


def test_init_from_starts_a_new_stage_from_the_ema_weights(celeba_id128, four_steps, tmp_path):
    """A fine-tuning stage (training.init_from): step 0, params = EMA = the source's EMA."""
    # Two steps: the warm-up's learning rate is 0 at the first.
    config = _smoke_config(celeba_id128, n_iters=2, log_freq=1, init_from=str(four_steps))
    exp = experiment.build(config, DEVICES, tmp_path)
    source, step = exp.load_ema_params(four_steps)
    state = train.initial_state_from(exp, four_steps)
    assert step == 4 and int(state.step) == 0
    _assert_close_tree(state.params, source, 'params')
    _assert_close_tree(state.ema_params, source, 'ema')
    trained = train.train(config, tmp_path / 'stage2', devices=DEVICES)
    assert int(trained.step) == 2
    moved = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(source), strict=True)
    )
    assert 0 < moved < 0.1  # Small steps away from the source, not a fresh initialisation.


# ----------------------------------------------------------------------------- failing solves


def test_failing_snapshot_is_recorded_and_training_continues(celeba_id128, tmp_path, monkeypatch):
    """Issue 19 #11: a snapshot whose adaptive ODE reaches ``sampling.max_steps`` (the error
    ``sampling.check_finished`` raises) used to end the run; now it is logged with its step,
    recorded in W/samples/snapshot_errors.jsonl, and training reaches n_iters."""
    import sampling

    real_check = sampling.check_finished
    monkeypatch.setattr(sampling, 'check_finished', lambda s, c: real_check({'unfinished': 3}, c))
    config = _smoke_config(celeba_id128, n_iters=4, checkpoint_freq=2, log_freq=2, snapshot_freq=2)
    state = train.train(config, tmp_path, devices=DEVICES)
    assert int(state.step) == 4
    records = [
        json.loads(line)
        for line in (tmp_path / 'samples' / train.SNAPSHOT_ERRORS).read_text().splitlines()
    ]
    assert [r['step'] for r in records] == [2, 4]
    assert all('3 sample(s) reached sampling.max_steps' in r['error'] for r in records), records
    assert [m['step'] for m in read_metrics(tmp_path / 'tensorboard')] == [2, 4]
    assert Checkpointer(tmp_path / 'checkpoints', 3).steps() == [2, 4]


@pytest.mark.parametrize('error', [KeyboardInterrupt, train.Preempted])
def test_interrupted_snapshot_is_not_swallowed(error, tmp_path):
    def snapshot(state, step):
        raise error('stop')

    with pytest.raises(error):
        train._take_snapshot(snapshot, None, 2, train.PreemptionFlag(), tmp_path)
    assert not (tmp_path / 'samples').exists()


def test_unfinished_quality_solves_are_logged_then_stop_the_run(
    celeba_id128, tmp_path, monkeypatch
):
    """Issue 19 #11: quality-loss solves that reach ``quality_max_steps`` (1 here: all of them)
    reach metrics.jsonl (the loss, over no finished solve, is 0); above
    ``training.quality_max_unfinished`` the run stops naming the step. (Features are the
    images, not VGG: the count is what is tested, cheaply; losses.check_quality_solves is
    tested with 1.0, never stopping, in tests/test_losses.py.)"""
    import datasets
    import losses

    def quality(config, sde, predict_model):
        inverse = datasets.get_data_inverse_scaler(config.data.centered)
        image_losses = {'quality': (1.0, losses.feature_l1(lambda x: x))}
        return losses.get_quality_loss_and_metrics_fn(
            sde, predict_model, config.training, image_losses, inverse
        )

    monkeypatch.setattr(losses, '_quality_loss', quality)
    overrides = dict(n_iters=3, log_freq=1, checkpoint_freq=3, diffusion_weight=0.0)
    overrides.update(quality_weight=1.0, quality_max_steps=1, quality_checkpoints=1)
    config = _smoke_config(celeba_id128, quality_max_unfinished=0.5, **overrides)
    with pytest.raises(RuntimeError, match=r'step 1: 8 quality-loss solves \(100%\) reached'):
        train.train(config, tmp_path, devices=DEVICES)
    (logged,) = read_metrics(tmp_path / 'tensorboard')  # Step 1 is logged, then the run stops.
    assert logged['step'] == 1 and logged[losses.QUALITY_UNFINISHED] == 8.0  # The whole batch.
    assert logged[losses.QUALITY_UNFINISHED_FRACTION] == 1.0 and logged['loss'] == 0.0
